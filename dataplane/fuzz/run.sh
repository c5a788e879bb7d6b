#!/usr/bin/env bash
# `make fuzz`: builds the fuzz targets with libFuzzer's coverage instrumentation and runs each
# for a bounded time (FUZZ_SECONDS, default 60), starting from the seeds in seeds/<target> and
# keeping the corpus under target/fuzz/corpus. A crash stops the run, leaves its input in
# target/fuzz/artifacts/<target>/ and exits non-zero.
#
# Engine: libFuzzer through the libfuzzer-sys crate (crates.io), with the instrumentation
# flags cargo-fuzz passes (SanitizerCoverage: inline 8-bit counters, PC table, comparison
# tracing), which stable rustc accepts as plain -C options. No sanitizer is needed for our
# code (no unsafe: what we look for are panics, overflows and broken invariants, and the
# profile keeps debug assertions and overflow checks on), so neither a nightly toolchain nor
# cargo-fuzz itself has to be installed.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
seconds="${1:-${FUZZ_SECONDS:-60}}"
targets="${FUZZ_TARGETS:-path sanitize router jwt manifests frame upstream_response}"
export CARGO_TARGET_DIR="$root/target/fuzz"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
cd "$root/dataplane/fuzz"
# With an explicit --target, RUSTFLAGS reach only the target's code, not build scripts and
# proc macros (which cannot link against the coverage runtime), as with cargo-fuzz.
host="$(rustc -vV | sed -n 's/^host: //p')"
cargo build --release --bins --target "$host"
for t in $targets; do
  corpus="$CARGO_TARGET_DIR/corpus/$t"
  artifacts="$CARGO_TARGET_DIR/artifacts/$t/"
  mkdir -p "$corpus" "$artifacts"
  echo "== $t: ${seconds}s"
  start=$(date +%s)
  log="$CARGO_TARGET_DIR/$t.log"
  status=0
  "$CARGO_TARGET_DIR/$host/release/$t" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
    -artifact_prefix="$artifacts" -print_final_stats=1 "$corpus" "seeds/$t" > "$log" 2>&1 || status=$?
  grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|SUMMARY)|panicked at' "$log" || true
  echo "   $(( $(date +%s) - start ))s wall, corpus $(ls "$corpus" | wc -l) inputs, log $log"
  if [ "$status" -ne 0 ]; then
    echo "fuzz target $t failed (exit $status); the input is in $artifacts"
    exit 1
  fi
done
