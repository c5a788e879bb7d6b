#!/usr/bin/env bash
# make conformance: the upstream Gateway API conformance suite against Portico.
#
# Builds the suite, its echo backend, the test control plane and the test kubelet; starts the
# control plane (kube-apiserver, etcd, kube-controller-manager) and the test kubelet (pods as
# processes in network namespaces); then the suite installs the Gateway API CRDs
# (experimental channel) and Portico's chart with helm, as a user does, and runs the profiles
# below. Portico's controller and the dataplanes it provisions run as pods of the chart's
# Deployments, with the chart's ServiceAccounts and RBAC.
#
# Writes docs/conformance/<version>/portico-report.yaml (the upstream report format) and
# SUMMARY.md beside it; fails when a test that passed in the committed report fails now, or
# when the test binary fails (a failed test, or the harness's own checks in kubelet_test.go).
# Needs root and iproute2 (network namespaces), as `make test` does.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
gwapi_version="$(sed -n 's/^\tsigs.k8s.io\/gateway-api v//p' tests/conformance/go.mod)"
profiles="${CONFORMANCE_PROFILES:-GATEWAY-HTTP,GATEWAY-GRPC,GATEWAY-TCP,GATEWAY-TLS,GATEWAY-UDP}"
out="$root/target/conformance"
report_dir="$root/docs/conformance/v$gwapi_version"
mkdir -p "$out" "$report_dir"

step() { printf '\n== %s (%ss)\n' "$1" "$SECONDS"; }

step "build"
make -s controlplane helm > /dev/null
(cd tests/controlplane && CGO_ENABLED=0 go build -o "$out/kubelet" ./kubelet)
(cd tests/conformance && CGO_ENABLED=0 go build -o "$out/echo-basic" sigs.k8s.io/gateway-api/conformance/echo-basic \
  && go test -c -o "$out/suite" .)
${CARGO:-cargo} build -q -p portico-dataplane --bin portico -p portico-controller --bin portico-controller
crds="$(cd tests/conformance && go mod download -json "sigs.k8s.io/gateway-api@v$gwapi_version" | sed -n 's/^\t"Dir": "\(.*\)",$/\1/p')/config/crd/experimental"

work="$(mktemp -d)"
pids=()
cleanup() {
  # Closing their stdin stops the control plane and the kubelet (which stops its pods and
  # removes its network); wait for them, then remove what is left.
  exec 7>&- 8>&- 2> /dev/null || true
  for p in "${pids[@]}"; do wait "$p" 2> /dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Starts "$@" with its stdin on a pipe this script holds (fd $1), output in $work/$2.*.
start() {
  local fd="$1" name="$2"
  shift 2
  mkfifo "$work/$name.in"
  "$@" < "$work/$name.in" > "$work/$name.out" 2> "$work/$name.log" &
  pids+=("$!")
  eval "exec $fd> \"$work/$name.in\""
}
await() { # await NAME PATTERN SECONDS
  local deadline=$((SECONDS + $3))
  until grep -q "$2" "$work/$1.out" 2> /dev/null; do
    if [ $SECONDS -ge $deadline ] || ! kill -0 "${pids[-1]}" 2> /dev/null; then
      echo "$1 did not start:"; tail -50 "$work/$1.log"; exit 1
    fi
    sleep 0.2
  done
}

step "control plane"
start 7 controlplane target/controlplane/controlplane -dir "$work/cp" -remove-dir
await controlplane READY 300
kubeconfig="$(awk '/^READY/ {print $3}' "$work/controlplane.out")"

step "test kubelet"
printf '#!/bin/sh\nexec %s -dns-pod\n' "$out/kubelet" > "$work/dns-pod"
chmod +x "$work/dns-pod"
start 8 kubelet "$out/kubelet" -kubeconfig "$kubeconfig" -dir "$work/node" \
  -image "registry.k8s.io/gateway-api/echo-basic=$out/echo-basic" \
  -image "registry.k8s.io/coredns/coredns=$work/dns-pod" \
  -image "ghcr.io/portico-gateway/controller=$root/target/debug/portico-controller" \
  -image "ghcr.io/portico-gateway/dataplane=$root/target/debug/portico" \
  -tls-cert-file "$work/cp/pki/kubelet.crt" -tls-private-key-file "$work/cp/pki/kubelet.key" \
  -client-ca-file "$work/cp/pki/ca.crt"
await kubelet READY 60

step "suite ($profiles)"
# GatewayStaticAddresses: the test kubelet grants a LoadBalancer Service the address it
# requests from its pool (198.19.255.0/24) and never one outside it, such as 192.0.2.1
# (TEST-NET-1: only ever written into a spec, never connected to).
# The Gateways of gateway-conformance-infra (most of the suite's) get their dataplanes beside
# them (dataplane.gatewayNamespaces), those of the other namespaces in portico-system: both
# placements serve the suite, and GatewayInfrastructure finds the objects next to
# its Gateway.
set +e
KUBECONFIG="$kubeconfig" "$out/suite" -test.v -test.timeout 50m \
  -portico.crds "$crds" -portico.helm "$root/target/tools/bin/helm" -portico.chart "$root/charts/portico" \
  -portico.helm-set "rbac.secretsClusterWide=true,controller.logLevel=info" \
  -portico.gateway-namespaces gateway-conformance-infra \
  -portico.version "$(sed -n 's/^version: *//p' charts/portico/Chart.yaml)" \
  --gateway-class=portico --conformance-profiles="$profiles" \
  --usable-address=198.19.255.250 --unusable-address=192.0.2.1 \
  --report-output="$out/report.yaml" ${CONFORMANCE_ARGS:-} 2>&1 | tee "$out/suite.log"
status=${PIPESTATUS[0]}
set -e
cp "$work/kubelet.log" "$out/kubelet.log" 2> /dev/null || true
step "report"
go -C tests/conformance run ./summary -log "$out/suite.log" -report "$out/report.yaml" \
  -committed "$report_dir/portico-report.yaml" -out "$report_dir"
echo "suite exit status $status; report and summary in $report_dir"
# Our own checks of the harness (kubelet_test.go) fail the run too, as does any test the
# suite reports failed.
exit "$status"
