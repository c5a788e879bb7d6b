#!/usr/bin/env bash
# Builds Portico's two container images, `controller` and `dataplane`, as OCI image layouts,
# without a container daemon or root: the layers are tar files written here, the manifests
# JSON written here. `make images` runs it on the release binaries.
#
#   deploy/images/build.sh [--bin-dir DIR] [--out DIR] [--tag TAG]
#
# Each image is two layers:
#   1. a base of Debian 12 runtime files, from Debian's own packages (libc6 and libgcc-s1 at
#      the versions this machine's binaries were linked against, ca-certificates for
#      rustls-native-certs), plus /etc/passwd and /etc/group with the non-root user 65532
#      the chart runs as. The same base as distroless's `cc` image, built from the packages.
#   2. the binary, at /usr/local/bin.
# The binaries are the glibc builds `cargo build` makes on this machine: no musl target or
# cross toolchain is needed, and the dataplane keeps glibc's allocator (musl's is several
# times slower under a multi-threaded proxy's load).
#
# Reproducible: the same binaries and packages give the same digests. Every file's time is
# SOURCE_DATE_EPOCH (default: the last commit's time), owners are 0, entries are sorted and
# gzip writes no name or time.
#
# Output, for each image NAME (controller, dataplane):
#   OUT/NAME/            an OCI image layout (skopeo copy oci:OUT/NAME:TAG docker://…)
#   OUT/NAME.tar         the same layout as one tar archive (skopeo's oci-archive: transport)
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
bin_dir="$root/target/release"
out="$root/target/images"
tag="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "$root/charts/portico/Chart.yaml")"
while [ $# -gt 0 ]; do
  case "$1" in
    --bin-dir) bin_dir="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --tag) tag="$2"; shift 2 ;;
    *) echo "usage: $0 [--bin-dir DIR] [--out DIR] [--tag TAG]" >&2; exit 2 ;;
  esac
done
for tool in apt-get dpkg-query dpkg-deb tar gzip sha256sum; do
  command -v "$tool" > /dev/null || {
    echo "$0: needs $tool (a Debian or Ubuntu machine); deploy/docker/ has Dockerfiles for a container daemon" >&2
    exit 2
  }
done
for b in portico portico-controller; do
  [ -x "$bin_dir/$b" ] || { echo "$0: $bin_dir/$b is missing: cargo build --release first (make images does)" >&2; exit 2; }
done
epoch="${SOURCE_DATE_EPOCH:-$(git -C "$root" log -1 --format=%ct 2> /dev/null || echo 0)}"
created="$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)"
umask 022

# The packages, downloaded once into a cache beside the other test tools.
debs="$root/target/tools/image-debs"
mkdir -p "$debs"
packages=""
for p in libc6 libgcc-s1 ca-certificates; do
  version="$(dpkg-query -W -f='${Version}' "$p" 2> /dev/null || true)"
  packages="$packages $p${version:+=$version}"
done
fetch() {
  (cd "$debs" && apt-get download $packages > apt.log 2>&1)
}
have_all() {
  for spec in $packages; do
    name="${spec%%=*}"
    version="${spec#*=}"
    [ "$version" = "$spec" ] && version=""
    ls "$debs/${name}_${version//:/%3a}"*_*.deb > /dev/null 2>&1 || return 1
  done
}
if ! have_all; then
  if ! fetch; then
    if [ "$(id -u)" = 0 ]; then apt-get update -qq > /dev/null; else sudo -n apt-get update -qq > /dev/null; fi
    fetch || { cat "$debs/apt.log" >&2; exit 1; }
  fi
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# A tar with nothing of this machine in it: sorted names, one time, owner 0.
det_tar() { # det_tar DIR OUT.tar
  tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=posix \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$1" -cf "$2" .
}
digest() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# Layer 1: the base.
base="$work/base"
mkdir -p "$base"
for spec in $packages; do
  name="${spec%%=*}"
  version="${spec#*=}"
  [ "$version" = "$spec" ] && version=""
  deb="$(ls "$debs/${name}_${version//:/%3a}"*_*.deb | sort | tail -1)"
  dpkg-deb -x "$deb" "$base"
done
# Documentation and manuals go; each package's copyright file stays (its licence).
find "$base/usr/share/doc" -mindepth 2 ! -name copyright -delete 2> /dev/null || true
rm -rf "$base/usr/share/man" "$base/usr/share/lintian" "$base/usr/share/info" \
  "$base/usr/lib/x86_64-linux-gnu/gconv" "$base/usr/share/locale"
# update-ca-certificates is a maintainer script that never runs here: write its bundle.
mkdir -p "$base/etc/ssl/certs"
find "$base/usr/share/ca-certificates" -name '*.crt' | LC_ALL=C sort | xargs cat \
  > "$base/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/:/sbin/nologin\n' \
  > "$base/etc/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$base/etc/group"
printf 'hosts: files dns\n' > "$base/etc/nsswitch.conf"
mkdir -p "$base/tmp"
chmod 1777 "$base/tmp"
det_tar "$base" "$work/base.tar"
gzip -n -6 -c "$work/base.tar" > "$work/base.tar.gz"

image() { # image NAME BINARY PORTS...
  local name="$1" binary="$2"
  shift 2
  local layout="$out/$name"
  rm -rf "$layout" "$out/$name.tar"
  mkdir -p "$layout/blobs/sha256" "$work/$name/usr/local/bin"
  install -m 0755 "$bin_dir/$binary" "$work/$name/usr/local/bin/$binary"
  det_tar "$work/$name" "$work/$name.tar"
  gzip -n -6 -c "$work/$name.tar" > "$work/$name.tar.gz"

  local layers="" diff_ids=""
  for l in "$work/base" "$work/$name"; do
    local d
    d="$(digest "$l.tar.gz")"
    cp "$l.tar.gz" "$layout/blobs/sha256/$d"
    layers="$layers${layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar+gzip\",\"digest\":\"sha256:$d\",\"size\":$(size "$l.tar.gz")}"
    diff_ids="$diff_ids${diff_ids:+,}\"sha256:$(digest "$l.tar")\""
  done
  local ports=""
  for p in "$@"; do ports="$ports${ports:+,}\"$p/tcp\":{}"; done
  local labels="\"org.opencontainers.image.title\":\"portico-$name\",\"org.opencontainers.image.version\":\"$tag\",\"org.opencontainers.image.created\":\"$created\",\"org.opencontainers.image.licenses\":\"Apache-2.0\""
  printf '{"architecture":"amd64","os":"linux","created":"%s","config":{"User":"65532:65532","Entrypoint":["/usr/local/bin/%s"],"Env":["PATH=/usr/local/bin:/usr/bin:/bin","SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],"WorkingDir":"/","ExposedPorts":{%s},"Labels":{%s}},"rootfs":{"type":"layers","diff_ids":[%s]}}' \
    "$created" "$binary" "$ports" "$labels" "$diff_ids" > "$work/$name.config.json"
  local config
  config="$(digest "$work/$name.config.json")"
  cp "$work/$name.config.json" "$layout/blobs/sha256/$config"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[%s],"annotations":{%s}}' \
    "$config" "$(size "$work/$name.config.json")" "$layers" "$labels" > "$work/$name.manifest.json"
  local manifest
  manifest="$(digest "$work/$name.manifest.json")"
  cp "$work/$name.manifest.json" "$layout/blobs/sha256/$manifest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"%s"}}]}' \
    "$manifest" "$(size "$work/$name.manifest.json")" "$tag" > "$layout/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$layout/oci-layout"
  det_tar "$layout" "$out/$name.tar"
  echo "$name: $layout (sha256:$manifest, tag $tag) and $out/$name.tar"
}

mkdir -p "$out"
image controller portico-controller 9443 9902
image dataplane portico 8080 9901
