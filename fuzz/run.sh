#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), on the stable toolchain.
#
#   fuzz/run.sh [SECONDS] [TARGET...]
#
# cargo-fuzz (libFuzzer) needs nightly-only compiler flags; RUSTC_BOOTSTRAP=1 lets the stable
# compiler accept them, and `-s none` leaves out AddressSanitizer (which needs a nightly
# standard library). Safe Rust needs no ASan to find what these targets look for: panics,
# overflows (debug assertions are on), unbounded recursion and allocation.
# Install once: cargo install cargo-fuzz --locked
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(definition expressions requests tokens)
export RUSTC_BOOTSTRAP=1
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  echo "== $t: ${secs}s"
  # New inputs go to corpus/$t (committed); seeds/$t are the hand-made starting points.
  cargo fuzz run -s none --debug-assertions "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -max_len=65536 -timeout=10 -print_final_stats=1
done
