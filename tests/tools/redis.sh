#!/usr/bin/env bash
# Installs a real redis-server for the tests and benchmarks into target/tools/redis, from
# Debian's own package (downloaded with apt, unpacked with dpkg: no root, nothing installed
# system-wide), and writes target/tools/redis/redis-server, a launcher the tests run.
# A redis-server already on PATH (6.2 or newer, for Lua scripts with TIME) is used as is.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
dest="$root/target/tools/redis"
launcher="$dest/redis-server"

if [ -x "$launcher" ] && "$launcher" --version > /dev/null 2>&1; then
  exit 0
fi
mkdir -p "$dest"

if system="$(command -v redis-server)"; then
  printf '#!/bin/sh\nexec %s "$@"\n' "$system" > "$launcher"
  chmod +x "$launcher"
  "$launcher" --version
  exit 0
fi

# Debian 12 (bookworm) packages: redis-server is a symlink to the binary in redis-tools,
# which needs liblzf and jemalloc (the other libraries are in every base system).
packages="redis-tools redis-server liblzf1 libjemalloc2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download $packages > apt.log 2>&1; then
  # A fresh machine may not have package lists yet.
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq > /dev/null
  else
    sudo -n apt-get update -qq > /dev/null
  fi
  apt-get download $packages > apt.log 2>&1 || { cat apt.log; exit 1; }
fi
for deb in ./*.deb; do
  dpkg -x "$deb" "$dest/root"
done
lib="$dest/root/usr/lib/x86_64-linux-gnu"
printf '#!/bin/sh\nLD_LIBRARY_PATH="%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" exec "%s" "$@"\n' \
  "$lib" "$dest/root/usr/bin/redis-server" > "$launcher"
chmod +x "$launcher"
"$launcher" --version
