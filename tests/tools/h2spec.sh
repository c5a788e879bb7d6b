#!/usr/bin/env bash
# Builds h2spec (HTTP/2 conformance tests) from its Go module, at the version pinned in
# tests/tools/h2spec/go.mod, into target/tools/bin: the edge suite runs it against the h2c and
# TLS listeners. Go's build cache makes later runs instant.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin="$root/target/tools/bin"
mkdir -p "$bin"
cd "$root/tests/tools/h2spec"
CGO_ENABLED=0 go build -o "$bin/h2spec" github.com/summerwind/h2spec/cmd/h2spec
