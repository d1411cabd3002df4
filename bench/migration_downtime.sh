#!/bin/bash
# Benchmark: what vcrypt adds to a live migration (issue 15, docs/cluster.md).
#
#  1. downtime of `virsh migrate --live --p2p --persistent` (QEMU's own
#     figure: `virsh domjobinfo --completed`, "Total downtime") of a domain
#     with two vcrypt disks (one native, one standard) against the same
#     domain with two plain raw disks, on the same shared disks' image
#     files, same run, alternating, both directions -> medians and the
#     ratio (goal <= 1.05). Also the wall time of each virsh migrate.
#  2. the destination's `migrate begin` check (the hook, as libvirtd runs
#     it, with the domain's XML on stdin) with the KEK not cached
#     (`vcryptctl cache evict` before each run) -> min/median/max, and a
#     hook call that does nothing (`start begin`) as the floor of a
#     process start.
#
# Runs the two-host harness (tests/vm/pair.sh, four shared disks) with
# vcrypt installed on both guests as `cmake --install` lays it out
# (tests/vm/pair_migration_setup.sh). Absolute times under QEMU TCG (no
# KVM; QEMU inside QEMU) mean little; compare the ratios. Run it on an idle
# machine.
#   bench/migration_downtime.sh [BUILD_DIR] [ROUNDS]   (default 4 rounds:
#   each round migrates each domain there and back)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$(cd "${1:-$ROOT/build}" && pwd)
ROUNDS=${2:-4}
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 ]] || { echo "ROUNDS: a positive number" >&2; exit 2; }
W=$(mktemp -d /tmp/vcrypt-mig-bench.XXXXXX)
trap 'rm -rf "$W"' EXIT
DESTDIR=$W/stage cmake --install "$BUILD" >"$W/install.log" 2>&1 ||
  { echo "cmake --install failed: $(tail -3 "$W/install.log")" >&2; exit 1; }
VCRYPT_MIG_W=$W VCRYPT_MIG_ROUNDS=$ROUNDS "$ROOT/tests/vm/pair.sh" --outdir "$W" \
  --disks 4 --disk-size 64 --timeout 3000 \
  --setup "$ROOT/tests/vm/pair_migration_setup.sh" -- \
  bash "$ROOT/bench/migration_downtime_guest.sh" >"$W/a.out" 2>&1 || {
  tail -40 "$W/a.out"
  echo "the benchmark failed (guest A's output above)" >&2
  exit 1
}
grep '^bench:' "$W/a.out"
