#!/usr/bin/env bash
# Builds helm from its Go module (helm.sh/helm/v3, pinned below) into target/tools/bin: the
# chart's lint, render and install tests and `make chart` use it. Go's build cache makes
# later runs instant.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
version=v3.22.0
bin="$root/target/tools/bin"
if [ -x "$bin/helm" ] && "$bin/helm" version --short 2>/dev/null | grep -q "^${version%.0}"; then
  exit 0
fi
mkdir -p "$bin"
GOBIN="$bin" CGO_ENABLED=0 go install "helm.sh/helm/v3/cmd/helm@$version"
"$bin/helm" version --short
