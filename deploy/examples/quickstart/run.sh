#!/usr/bin/env bash
# Starts the quickstart: two echo backends and Portico in standalone mode serving this
# directory. Usage: run.sh BIN_DIR (where portico and portico-echo were built).
set -euo pipefail
bin=${1:-target/debug}
here=$(cd "$(dirname "$0")" && pwd)

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/portico-echo" --listen 127.0.0.1:9001 --name echo-a >/dev/null & pids+=($!)
"$bin/portico-echo" --listen 127.0.0.1:9002 --name echo-b >/dev/null & pids+=($!)
"$bin/portico" standalone --config "$here" --bind-address 127.0.0.1 --admin-address 127.0.0.1:9901 & pids+=($!)

ready=
for _ in $(seq 100); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run.sh: a process exited at start-up (its error is above)" >&2; exit 1; }
  done
  curl -fsS -o /dev/null http://127.0.0.1:9901/readyz 2>/dev/null && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] || { echo "run.sh: portico is not ready after 10 s (is a port in use?)" >&2; exit 1; }

cat <<MSG

  Portico is serving $here on http://127.0.0.1:8080
  Try:
    curl -i http://127.0.0.1:8080/hello           # echo-a answers (see "name")
    curl -s http://127.0.0.1:8080/canary          # 90% echo-a, 10% echo-b
    curl -i http://127.0.0.1:8080/old             # 301 redirect
    curl -s http://127.0.0.1:9901/metrics         # Prometheus metrics
  Edit the YAML files in $here and Portico reloads them.
  Ctrl-C stops everything.

MSG
wait "${pids[2]}"
