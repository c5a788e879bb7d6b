#!/usr/bin/env bash
# Profiles the release `portico` binary in front of `portico-echo` under wrk load, as the
# dataplane-core work measured it. Not part of `make bench`; run `cargo build --release -p
# portico-dataplane --bins` first.
#
#   tests/bench/profile.sh callgrind [keepalive|close]   instructions per request, by function
#   tests/bench/profile.sh perf [keepalive|close]        CPU share by crate (perf record)
#
# callgrind counts are deterministic per request, so they compare two builds on a noisy
# machine where wall-clock numbers cannot; perf shows where the time goes, kernel included.
# Portico runs on CPU 1, wrk and the backend on CPU 0. Output goes to target/profile/.
set -euo pipefail
cd "$(dirname "$0")/../.."
MODE=${1:-callgrind}
CONN=${2:-keepalive}
BIN=target/release/portico
ECHO=target/release/portico-echo
OUT=target/profile
mkdir -p "$OUT"
for b in "$BIN" "$ECHO"; do
  [ -x "$b" ] || { echo "missing $b: cargo build --release -p portico-dataplane --bins" >&2; exit 1; }
done
WRK_ARGS=(-t1 -c32)
[ "$CONN" = close ] && WRK_ARGS+=(-H "Connection: close")

BACKEND=127.0.0.1:18090
LISTEN_PORT=18080
cat > "$OUT/config.yaml" <<EOF
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: portico}
spec: {controllerName: portico.dev/gateway-controller}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bench, namespace: default}
spec:
  gatewayClassName: portico
  listeners: [{name: l, port: $LISTEN_PORT, protocol: HTTP}]
---
apiVersion: v1
kind: Service
metadata: {name: backend, namespace: default, annotations: {portico.dev/endpoints: "$BACKEND"}}
spec: {ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bench, namespace: default}
spec:
  parentRefs: [{name: bench}]
  rules: [{backendRefs: [{name: backend, port: 80}]}]
EOF

PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

taskset -c 0 "$ECHO" --fixed --workers 1 --listen "$BACKEND" > /dev/null 2>&1 &
PIDS+=($!)
PORTICO_ARGS=(standalone --config "$OUT/config.yaml" --bind-address 127.0.0.1
  --admin-address 127.0.0.1:19901 --access-log false --workers 1)
URL=http://127.0.0.1:$LISTEN_PORT/

wait_up() {
  for _ in $(seq 120); do
    curl -s -o /dev/null "$URL" && return 0
    sleep 0.5
  done
  echo "portico did not come up; see $OUT/portico.log" >&2
  exit 1
}

case "$MODE" in
  callgrind)
    command -v valgrind > /dev/null || { echo "needs valgrind (apt install valgrind)" >&2; exit 1; }
    taskset -c 1 valgrind --tool=callgrind --callgrind-out-file="$OUT/callgrind.out" \
      --instr-atstart=no "$BIN" "${PORTICO_ARGS[@]}" > "$OUT/portico.log" 2>&1 &
    VP=$!
    PIDS+=($VP)
    wait_up
    taskset -c 0 wrk "${WRK_ARGS[@]}" -d3s "$URL" > /dev/null
    callgrind_control -i on "$VP" > /dev/null 2>&1
    N=$(taskset -c 0 wrk "${WRK_ARGS[@]}" -d10s "$URL" | awk '/requests in/{print $1}')
    callgrind_control -i off "$VP" > /dev/null 2>&1
    callgrind_control -d "$VP" > /dev/null 2>&1
    F=$(ls -t "$OUT"/callgrind.out* | head -1)
    echo "$N requests profiled; instructions per request, by function ($F):"
    callgrind_annotate --auto=no --threshold=100 "$F" 2>/dev/null | awk 'NR>20' | tr -d ',' |
      sed -E 's/\( *[0-9.]+%\) +//; s/ \[.*\]$//' |
      awk -v R="$N" '$1 ~ /^[0-9]+$/ && NF>=2 {n=$1; $1=""; f=$0; sub(/^ [^:]*:/,"",f); s[f]+=n}
        END {for (k in s) printf "%8.0f %s\n", s[k]/R, k}' | sort -rn | head -40 | cut -c1-160
    ;;
  perf)
    command -v perf > /dev/null || { echo "needs perf (apt install linux-perf)" >&2; exit 1; }
    taskset -c 1 "$BIN" "${PORTICO_ARGS[@]}" > "$OUT/portico.log" 2>&1 &
    PP=$!
    PIDS+=($PP)
    wait_up
    taskset -c 0 wrk "${WRK_ARGS[@]}" -d12s "$URL" > "$OUT/wrk.out" &
    WP=$!
    sleep 2
    perf record -F 2000 -g -p "$PP" -o "$OUT/perf.data" -- sleep 5 2> /dev/null
    wait "$WP"
    grep Requests/sec "$OUT/wrk.out"
    echo "CPU share by crate ($OUT/perf.data):"
    perf report -i "$OUT/perf.data" --no-children --sort dso,sym -g none --stdio 2> /dev/null |
      python3 -c '
import collections, re, sys
agg = collections.Counter()
for line in sys.stdin:
    m = re.match(r"\s+([0-9.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if not m:
        continue
    pct, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
    if dso.startswith("[kernel"):
        key = "kernel"
    elif dso == "[vdso]":
        key = "vdso (clock_gettime)"
    elif dso.startswith("libc"):
        key = "libc memcpy/memmove" if re.search(r"mem(cpy|move)", sym) else "libc other"
    elif sym.startswith(("mi_", "_mi_")):
        key = "mimalloc"
    else:
        key = re.split(r"::|<| ", sym.lstrip("<&"))[0]
    agg[key] += pct
for k, v in agg.most_common(16):
    print(f"{v:6.2f}% {k}")
'
    ;;
  *)
    echo "usage: $0 callgrind|perf [keepalive|close]" >&2
    exit 2
    ;;
esac
