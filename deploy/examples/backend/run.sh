#!/usr/bin/env bash
# Starts the BackendPolicy example: two echo backends (a third endpoint is left dead on
# purpose) and Portico in standalone mode serving this directory. Usage: run.sh BIN_DIR
# (where portico and portico-echo were built).
set -euo pipefail
bin=${1:-target/debug}
here=$(cd "$(dirname "$0")" && pwd)

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/portico-echo" --listen 127.0.0.1:9031 --name api-1 >/dev/null & pids+=($!)
"$bin/portico-echo" --listen 127.0.0.1:9032 --name api-2 >/dev/null & pids+=($!)
"$bin/portico" standalone --config "$here" --bind-address 127.0.0.1 --admin-address 127.0.0.1:9906 & pids+=($!)

ready=
for _ in $(seq 100); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run.sh: a process exited at start-up (its error is above)" >&2; exit 1; }
  done
  curl -fsS -o /dev/null http://127.0.0.1:9906/readyz 2>/dev/null && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] || { echo "run.sh: portico is not ready after 10 s (is a port in use?)" >&2; exit 1; }

cat <<'MSG'

  Portico is serving the BackendPolicy example on http://127.0.0.1:8086.
  Try:
    for i in $(seq 20); do curl -s -o /dev/null -w '%{http_code} ' http://127.0.0.1:8086/; done; echo
    curl -s http://127.0.0.1:9906/metrics | grep -E 'upstream_(retries|endpoint_ejections|endpoints_ejected|overloaded)'
  policy.yaml says what each setting does. Ctrl-C stops everything.

MSG
wait "${pids[2]}"
