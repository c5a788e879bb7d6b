#!/usr/bin/env bash
# Starts the cache example: an echo backend and Portico in standalone mode serving this
# directory. Usage: run.sh BIN_DIR (where portico and portico-echo were built).
set -euo pipefail
bin=${1:-target/debug}
here=$(cd "$(dirname "$0")" && pwd)

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/portico-echo" --listen 127.0.0.1:9014 --name echo >/dev/null & pids+=($!)
"$bin/portico" standalone --config "$here" --bind-address 127.0.0.1 --admin-address 127.0.0.1:9904 & pids+=($!)

ready=
for _ in $(seq 100); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run.sh: a process exited at start-up (its error is above)" >&2; exit 1; }
  done
  curl -fsS -o /dev/null http://127.0.0.1:9904/readyz 2>/dev/null && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] || { echo "run.sh: portico is not ready after 10 s (is a port in use?)" >&2; exit 1; }

cat <<'MSG'

  Portico is serving the cache example on http://127.0.0.1:8084.
  Try:
    curl -si 'http://127.0.0.1:8084/catalog/items?cc=max-age%3D30' | grep -i -e cache-status -e '^age'
    curl -si 'http://127.0.0.1:8084/catalog/items?cc=max-age%3D30' | grep -i -e cache-status -e '^age'
    curl -si -X POST 'http://127.0.0.1:9904/cache/purge?prefix=http%3A%2F%2F127.0.0.1%3A8084%2Fcatalog%2F'
    curl -s http://127.0.0.1:9904/metrics | grep portico_cache
  cache.yaml says what each route shows. Ctrl-C stops everything.
MSG
wait
