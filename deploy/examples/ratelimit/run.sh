#!/usr/bin/env bash
# Starts the rate-limit examples: an echo backend, a Redis on 127.0.0.1:6390 (the one
# `make redis` installs into target/tools/redis, or redis-server from PATH) and Portico in
# standalone mode serving this directory. Usage: run.sh BIN_DIR (where portico and
# portico-echo were built).
set -euo pipefail
bin=${1:-target/debug}
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
redis="$root/target/tools/redis/redis-server"
[ -x "$redis" ] || redis=$(command -v redis-server) || { echo "no redis-server: run make redis" >&2; exit 1; }

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$redis" --bind 127.0.0.1 --port 6390 --save '' --appendonly no >/dev/null & pids+=($!)
"$bin/portico-echo" --listen 127.0.0.1:9012 --name echo >/dev/null & pids+=($!)
"$bin/portico" standalone --config "$here" --bind-address 127.0.0.1 --admin-address 127.0.0.1:9903 \
  --redis-url redis://127.0.0.1:6390 & pids+=($!)

ready=
for _ in $(seq 100); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run.sh: a process exited at start-up (its error is above)" >&2; exit 1; }
  done
  curl -fsS -o /dev/null http://127.0.0.1:9903/readyz 2>/dev/null && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] || { echo "run.sh: portico is not ready after 10 s (is a port in use?)" >&2; exit 1; }

cat <<'MSG'

  Portico is serving the rate-limit examples on http://127.0.0.1:8082.
  Try:
    for i in $(seq 7); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8082/api; done; echo
    curl -i http://127.0.0.1:8082/api
    for i in $(seq 12); do curl -s -o /dev/null -w '%{http_code} ' -H 'x-tenant: acme' http://127.0.0.1:8082/shared; done; echo
    curl -s http://127.0.0.1:9903/metrics | grep ratelimit
  Each YAML file says what it shows. Ctrl-C stops everything.

MSG
wait "${pids[2]}"
