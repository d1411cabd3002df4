#!/bin/bash
# Benchmark: latency of opening vcrypt volumes (issue: foundation).
#
#  1. median latency of `vcryptctl open` with the KEK cached, against
#     `cryptsetup open --volume-key-file` of the SAME volume, alternating,
#     same run -> ratio (goal <= 1.1)
#  2. opening 32 volumes (4 VMs x 8 disks) sequentially vs concurrently
#     (KEK cache cold each time) -> times and ratio
#
# Needs root and device-mapper; re-runs itself in the VM harness otherwise.
# Absolute times under QEMU TCG mean nothing; compare the ratios.
#   bench/open_latency.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
ROUNDS=${2:-21}
if [[ $(id -u) -ne 0 ]] || ! dmsetup version >/dev/null 2>&1; then
  "$ROOT/tests/vm/prepare.sh" >/dev/null
  exec "$ROOT/tests/vm/run.sh" -- "$0" "$BUILD" "$ROUNDS"
fi
D=$(mktemp -d /tmp/vcrypt-bench.XXXXXX)
vc() { "$BUILD/cli/vcryptctl" --socket "$D/sock" "$@"; }
"$BUILD/daemon/vcryptd" --state-dir "$D/state" --socket "$D/sock" 2>"$D/log" &
PID=$!
cleanup() {
  for m in $(dmsetup ls | awk '/^(vcrypt-|bench-)/ {print $1}'); do dmsetup remove "$m" || true; done
  kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$D"
}
trap cleanup EXIT
for _ in $(seq 100); do [[ -S $D/sock ]] && break; sleep 0.05; done

now() { date +%s%N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }
ms() { awk -v n="$1" 'BEGIN {printf "%.2f", n/1e6}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", a/b}'; }

vc provider add native bench >/dev/null
vc vm create lat >/dev/null
vc volume create lat d0 --file "$D/lat.img" --size 32M >/dev/null
"$BUILD/tests/vcrypt_dek_export" "$D/state" "$D/lat.img" "$D/dek"
vc open lat/d0 >/dev/null && vc close lat/d0 >/dev/null   # warm: KEK cached

: >"$D/vc.ns"; : >"$D/cs.ns"
for i in $(seq "$ROUNDS"); do
  t0=$(now); vc open lat/d0 >/dev/null; t1=$(now)
  echo $((t1 - t0)) >>"$D/vc.ns"; vc close lat/d0 >/dev/null
  t0=$(now)
  cryptsetup open --type luks2 --key-size 512 --volume-key-file "$D/dek" "$D/lat.img" bench-lat
  t1=$(now)
  echo $((t1 - t0)) >>"$D/cs.ns"; cryptsetup close bench-lat
done
vc_med=$(median <"$D/vc.ns"); cs_med=$(median <"$D/cs.ns")
echo "open latency, $ROUNDS rounds alternating, KEK cached:"
echo "  vcryptctl open                    median $(ms "$vc_med") ms"
echo "  cryptsetup open --volume-key-file median $(ms "$cs_med") ms"
echo "  ratio vcryptctl/cryptsetup        $(ratio "$vc_med" "$cs_med")   (goal <= 1.1)"

for v in 1 2 3 4; do
  vc vm create "vm$v" >/dev/null
  for d in 0 1 2 3 4 5 6 7; do
    vc volume create "vm$v" "d$d" --file "$D/vm$v-d$d.img" --size 20M >/dev/null
  done
done
close_all() { for v in 1 2 3 4; do for d in 0 1 2 3 4 5 6 7; do vc close "vm$v/d$d" >/dev/null; done; done; }
vc cache evict >/dev/null
t0=$(now)
for v in 1 2 3 4; do for d in 0 1 2 3 4 5 6 7; do vc open "vm$v/d$d" >/dev/null; done; done
t1=$(now); seq_ns=$((t1 - t0))
close_all
vc cache evict >/dev/null
t0=$(now)
pids=()
for v in 1 2 3 4; do for d in 0 1 2 3 4 5 6 7; do vc open "vm$v/d$d" >/dev/null & pids+=($!); done; done
for p in "${pids[@]}"; do wait "$p"; done
t1=$(now); par_ns=$((t1 - t0))
[[ $(dmsetup ls | grep -c '^vcrypt-vm') -eq 32 ]] || { echo "not all 32 mapped" >&2; exit 1; }
close_all
echo "32 volumes (4 VMs x 8 disks), KEK cache cold:"
echo "  sequential  $(ms "$seq_ns") ms"
echo "  concurrent  $(ms "$par_ns") ms"
echo "  ratio concurrent/sequential  $(ratio "$par_ns" "$seq_ns")"
