#!/usr/bin/env bash
# Starts the auth examples: an echo backend, portico-authd as a demo identity provider
# (JWKS, tokens, introspection, external auth) and Portico in standalone mode serving this
# directory. Usage: run.sh BIN_DIR (where portico, portico-echo and portico-authd were built).
set -euo pipefail
bin=${1:-target/debug}
here=$(cd "$(dirname "$0")" && pwd)

pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

"$bin/portico-echo" --listen 127.0.0.1:9011 --name echo >/dev/null & pids+=($!)
"$bin/portico-authd" --listen 127.0.0.1:9100 >/dev/null & pids+=($!)
"$bin/portico" standalone --config "$here" --bind-address 127.0.0.1 --admin-address 127.0.0.1:9902 & pids+=($!)

ready=
for _ in $(seq 100); do
  for pid in "${pids[@]}"; do
    kill -0 "$pid" 2>/dev/null || { echo "run.sh: a process exited at start-up (its error is above)" >&2; exit 1; }
  done
  curl -fsS -o /dev/null http://127.0.0.1:9902/readyz 2>/dev/null && { ready=1; break; }
  sleep 0.1
done
[ -n "$ready" ] || { echo "run.sh: portico is not ready after 10 s (is a port in use?)" >&2; exit 1; }

cat <<MSG

  Portico is serving $here on http://127.0.0.1:8081 (one route per mechanism).
  Try:
    token=\$(curl -s 'http://127.0.0.1:9100/token?sub=alice')
    curl -i -H "Authorization: Bearer \$token" http://127.0.0.1:8081/jwt
    curl -i -H 'x-api-key: demo-key-for-alice' http://127.0.0.1:8081/keys
    curl -i -u ann:portico-demo http://127.0.0.1:8081/basic
    curl -i -H 'x-ext-token: good' http://127.0.0.1:8081/external
    curl -i -H 'Authorization: Bearer active-carol' http://127.0.0.1:8081/introspect
    curl -i -X POST http://127.0.0.1:8081/orders        # 401: rules need a token
  Each YAML file says what it shows. Ctrl-C stops everything.

MSG
wait "${pids[2]}"
