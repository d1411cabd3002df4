#!/bin/bash
# Builds the KMIP/TTLV fuzz target (tests/fuzz/ttlv_fuzz.cc) with clang and
# libFuzzer + ASan + UBSan, and runs it for a bounded time.
#
#   scripts/fuzz.sh [SECONDS]        default 60
#
# Environment:
#   VCRYPT_FUZZ_DIR    build/work dir (default build-fuzz/ in the repo);
#                      its corpus/ persists and grows between runs
#   VCRYPT_FUZZ_JOBS   parallel fuzzing processes (default 1)
#   CXX                the compiler (default clang++; needs
#                      libclang-rt-<version>-dev for libFuzzer)
#
# Seeds: every golden vector in tests/kmip/golden/ (spec test cases and the
# captured pykmip-server traces). A crash, leak, UB report or broken
# invariant stops the run; libFuzzer writes the input to artifacts/ and the
# script exits 1. Reproduce with: build-fuzz/ttlv_fuzz build-fuzz/artifacts/FILE
#
# Prints at the end: how long it ran, how many executions, and findings.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
secs=${1:-60}
[[ $secs =~ ^[0-9]+$ && $secs -gt 0 ]] || {
  echo "usage: $0 [SECONDS]" >&2
  exit 2
}
dir=${VCRYPT_FUZZ_DIR:-$ROOT/build-fuzz}
jobs=${VCRYPT_FUZZ_JOBS:-1}
CXX=${CXX:-clang++}
command -v "$CXX" >/dev/null || {
  echo "fuzz.sh: $CXX not found (apt-get install clang libclang-rt-14-dev)" >&2
  exit 1
}
mkdir -p "$dir/corpus" "$dir/artifacts"
dir=$(cd "$dir" && pwd)
rm -rf "$dir/seeds"
mkdir -p "$dir/seeds"

# --- build ------------------------------------------------------------------
srcs=(
  tests/fuzz/ttlv_fuzz.cc
  keyproviders/standard/ttlv.cc
  keyproviders/standard/kmip.cc
  common/result.cc
  common/secure_buffer.cc
)
stale=0
[[ -x $dir/ttlv_fuzz ]] || stale=1
for f in "${srcs[@]}" keyproviders/standard/ttlv.h keyproviders/standard/kmip.h \
  common/result.h common/secure_buffer.h; do
  [[ $ROOT/$f -nt $dir/ttlv_fuzz ]] && stale=1
done
if ((stale)); then
  echo "fuzz.sh: building $dir/ttlv_fuzz with $CXX"
  (cd "$ROOT" && "$CXX" -std=c++20 -g -O1 -fno-omit-frame-pointer \
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined \
    -I"$ROOT" "${srcs[@]}" -lcrypto -o "$dir/ttlv_fuzz")
fi

# --- seeds: the golden vectors, as binary -----------------------------------
n=0
while IFS= read -r -d '' f; do
  name=$(basename "$(dirname "$f")")_$(basename "$f" .hex)
  grep -v '^#' "$f" | tr -d ' \n' | xxd -r -p >"$dir/seeds/$name"
  n=$((n + 1))
done < <(find "$ROOT/tests/kmip/golden" -name '*.hex' -print0)
echo "fuzz.sh: $n seeds from tests/kmip/golden"

# --- run ----------------------------------------------------------------------
log=$dir/fuzz.log
before=$(find "$dir/artifacts" -type f | wc -l)
start=$(date +%s)
set +e
rm -f "$dir"/fuzz-*.log
cd "$dir"  # -jobs writes fuzz-N.log into the current directory
# detect_leaks: a leak is a finding too. -max_len: KMIP replies vcrypt reads
# are well under 4 KiB; larger inputs only slow the search down.
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  "$dir/ttlv_fuzz" -max_total_time="$secs" -max_len=4096 -timeout=10 \
  -rss_limit_mb=2048 -dict="$ROOT/tests/fuzz/kmip.dict" \
  -artifact_prefix="$dir/artifacts/" -print_final_stats=1 \
  $([[ $jobs -gt 1 ]] && echo "-jobs=$jobs -workers=$jobs") \
  "$dir/corpus" "$dir/seeds" >"$log" 2>&1
rc=$?
set -e
end=$(date +%s)

# With -jobs the workers' stats are in $dir/fuzz-N.log.
execs=$({ cat "$log"; cat "$dir"/fuzz-*.log 2>/dev/null || true; } |
  awk '/stat::number_of_executed_units/ {s += $2} END {print s + 0}')
after=$(find "$dir/artifacts" -type f | wc -l)
tail -n 5 "$log"
echo
echo "fuzz.sh: ran $((end - start)) s, $execs executions," \
  "corpus $(find "$dir/corpus" -type f | wc -l) inputs"
if [[ $rc -ne 0 || $after -gt $before ]]; then
  echo "fuzz.sh: FOUND a problem (exit $rc); new artifacts:"
  find "$dir/artifacts" -type f -newer "$dir/ttlv_fuzz" -printf '  %p\n'
  grep -E 'ERROR|SUMMARY|ttlv_fuzz:' "$log" | head -n 10
  echo "fuzz.sh: full log in $log"
  exit 1
fi
echo "fuzz.sh: no findings"
