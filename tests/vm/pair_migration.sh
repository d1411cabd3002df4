#!/usr/bin/env bash
# tests/vm/pair_migration.sh - live migration of a domain with vcrypt disks
# between two hosts (issue 15; docs/cluster.md): the two-host harness
# (tests/vm/pair.sh, two shared disks) with vcrypt installed on both as
# `cmake --install` lays it out, and the scenario in
# tests/vm/pair_migration_guest.sh (A -> B, B -> A, and a refused
# migration to a host without the native provider).
#
# usage: pair_migration.sh BUILD_DIR [--outdir DIR]
#   --outdir DIR   keep everything there (default: a temporary directory,
#                  deleted on success, kept and named on failure)
# Output: "pair_migration: PASS ..." per check; the last line is
# "migration: N passed, M failed" (scripts/test.sh counts it).
# Exit status: 0 when every check passed.
# Cost: ~4-6 min of wall time and both cores (two TCG guests at once).
set -euo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
die() { printf 'pair_migration: error: %s\n' "$*" >&2; echo "migration: 0 passed, 1 failed"; exit 1; }

(($# >= 1)) || die "usage: pair_migration.sh BUILD_DIR [--outdir DIR]"
build=$(cd -- "$1" && pwd -P) || die "no build directory $1"
shift
outdir=
while (($#)); do
	case $1 in
		--outdir) (($# >= 2)) || die "--outdir needs a value"; outdir=$2; shift 2 ;;
		*) die "unknown argument: $1" ;;
	esac
done
own=0
if [[ -z $outdir ]]; then
	outdir=$(mktemp -d "${TMPDIR:-/tmp}/vcrypt-pair-mig.XXXXXX")
	own=1
fi
mkdir -p -- "$outdir"
outdir=$(cd -- "$outdir" && pwd -P)
rm -rf -- "$outdir/stage" "$outdir/mig" "$outdir/certs"

# Installed exactly as a packager would: into a staging root that each
# guest copies over its (overlay) root before systemd starts.
DESTDIR=$outdir/stage cmake --install "$build" >"$outdir/install.log" 2>&1 ||
	die "cmake --install failed: $(tail -3 "$outdir/install.log")"

start=$SECONDS
rc=0
VCRYPT_MIG_W=$outdir "$HERE/pair.sh" --outdir "$outdir" --disks 2 --disk-size 64 --timeout 1500 \
	--setup "$HERE/pair_migration_setup.sh" -- bash "$HERE/pair_migration_guest.sh" || rc=$?
wall=$((SECONDS - start))
p=$(grep -c '^pair_migration: PASS ' "$outdir/a.log" || true)
f=$(grep -c '^pair_migration: FAIL' "$outdir/a.log" || true)
if ((rc != 0 && f == 0)); then f=1; fi
if ((rc == 0)) && ! grep -q '^pair_migration: all checks passed' "$outdir/a.log"; then f=$((f + 1)); fi
echo "pair_migration: wall time ${wall} s"
if ((f > 0)); then
	echo "pair_migration: kept $outdir (a.log, b.log, mig/)"
	# What vcrypt and libvirt said on each host.
	for side in a b; do
		[[ -f $outdir/$side.log ]] && { echo "# --- guest $side (tail) ---"; tail -n 40 "$outdir/$side.log"; }
	done
elif ((own)); then
	rm -rf -- "$outdir"
else
	rm -rf -- "$outdir/stage"
fi
echo "migration: $p passed, $f failed"
((f == 0))
