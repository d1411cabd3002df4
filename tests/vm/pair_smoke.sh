#!/usr/bin/env bash
# tests/vm/pair_smoke.sh - smoke test of the two-host harness (tests/vm/pair.sh):
# live peer-to-peer migration of a domain on a plain shared disk, A -> B,
# B -> A, and A -> B refused by B's libvirt hook, recording every call of
# libvirt's qemu hook on both sides. See tests/vm/README.md, "Two hosts".
#
# usage: pair_smoke.sh [--outdir DIR] [--record DIR]
#   --outdir DIR   keep everything there (default: a temporary directory,
#                  deleted on success, kept and named on failure)
#   --record DIR   also write the hook calls as test vectors into DIR
#                  (tests/unit/testdata/libvirt_hooks/: see its README.md)
# Exit status: 0 on success; else non-zero after a line
# "pair_smoke: FAIL: ..." (from the guest) or "pair_smoke: error: ...".
# Cost: ~3-5 min of wall time and ~2 CPU cores (two TCG guests at once).
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
die() { printf 'pair_smoke: error: %s\n' "$*" >&2; exit 1; }

outdir=
record=
while (($#)); do
	case $1 in
		--outdir) (($# >= 2)) || die "--outdir needs a value"; outdir=$2; shift 2 ;;
		--record) (($# >= 2)) || die "--record needs a value"; record=$2; shift 2 ;;
		-h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
		*) die "unknown argument: $1 (usage: pair_smoke.sh [--outdir DIR] [--record DIR])" ;;
	esac
done

own=0
if [[ -z $outdir ]]; then
	outdir=$(mktemp -d "${TMPDIR:-/tmp}/vcrypt-pair-smoke.XXXXXX")
	own=1
fi
mkdir -p -- "$outdir"
outdir=$(cd -- "$outdir" && pwd -P)
rm -rf -- "$outdir/hooks" "$outdir/smoke"

start=$SECONDS
rc=0
"$SCRIPT_DIR/pair.sh" --outdir "$outdir" --setup "$SCRIPT_DIR/pair_smoke_setup.sh" \
	-- bash "$SCRIPT_DIR/pair_smoke_guest.sh" || rc=$?
wall=$((SECONDS - start))
if ((rc != 0)); then
	printf 'pair_smoke: error: the scenario failed (exit status %s after %s s); guest A: %s, guest B: %s\n' \
		"$rc" "$wall" "$outdir/a.log" "$outdir/b.log" >&2
	exit "$rc"
fi
grep -qx PASS "$outdir/smoke/results.txt" 2>/dev/null ||
	die "the scenario exited 0 without reporting PASS (see $outdir/a.log)"
echo "pair_smoke: wall time ${wall} s (boot of the pair, checks, three migrations, power-off)"

# --- test vectors ------------------------------------------------------------------
# Writes the calls FROM..TO of side SIDE (a|b) to FILE, with a header.
# FULL_CALL: the number of the call whose stdin is kept whole (others are
# trimmed to the domain's opening line, name, uuid and disks).
write_calls() {
	local side=$1 from=$2 to=$3 file=$4 full=$5 title=$6 n f bytes sum kind
	{
		printf '# libvirt qemu hook calls recorded by tests/vm/pair_smoke.sh on %s\n' "$(date -u +%F)"
		printf '# (libvirt %s, %s; Debian 12 guests vcrypt-a and vcrypt-b).\n' \
			"$(dpkg-query -W -f='${Version}' libvirt-daemon 2>/dev/null)" \
			"$(qemu-system-x86_64 --version | head -n1)"
		printf '# %s\n' "$title"
		echo '# Format: README.md in this directory.'
		for ((n = from; n <= to; n++)); do
			f=$(printf '%s/hooks/%s/%03d' "$outdir" "$side" "$n")
			bytes=$(wc -c <"$f.stdin")
			sum=$(sha256sum <"$f.stdin" | cut -c1-64)
			kind=trimmed
			[[ $n == "$full" ]] && kind=full
			echo
			echo "call $((n - from + 1))"
			echo "argv $(paste -sd' ' "$f.args")"
			echo "exit $(awk -v n="$(printf '%03d' "$n")" '$1 == n { print $3 }' "$outdir/hooks/$side/log")"
			echo "stdin $bytes $sum $kind"
			if [[ $kind == full ]]; then
				cat "$f.stdin"
			else
				# libvirt indents by two spaces per level.
				awk 'NR == 1 || /^  <(name|uuid)>/ || /^  <\/?devices>/ || /^<\/domain>/ { print; next }
					/^    <disk / { d = 1 } d { print } /^    <\/disk>/ { d = 0 }' "$f.stdin"
			fi
			echo "end"
		done
	} >"$file"
}

if [[ -n $record ]]; then
	mkdir -p -- "$record"
	src_full=
	while read -r name a1 a2 b1 b2; do
		case $name in
			start)
				write_calls a "$a1" "$a2" "$record/start.txt" '' \
					"scenario start: virsh start pairsmoke on vcrypt-a; side vcrypt-a" ;;
			destroy)
				write_calls a "$a1" "$a2" "$record/destroy.txt" '' \
					"scenario destroy: virsh destroy pairsmoke on vcrypt-a; side vcrypt-a" ;;
			migrate_ok)
				src_full=$b1  # B's first call: migrate begin
				write_calls a "$a1" "$a2" "$record/migrate_ok_source.txt" '' \
					"scenario migrate_ok: $(cat "$outdir/smoke/migrate_ok.virsh.cmd") on vcrypt-a; side: source vcrypt-a"
				write_calls b "$b1" "$b2" "$record/migrate_ok_dest.txt" "$src_full" \
					"scenario migrate_ok: $(cat "$outdir/smoke/migrate_ok.virsh.cmd") on vcrypt-a; side: destination vcrypt-b" ;;
			migrate_back)
				write_calls b "$b1" "$b2" "$record/migrate_back_source.txt" '' \
					"scenario migrate_back: $(cat "$outdir/smoke/migrate_back.virsh.cmd") on vcrypt-b; side: source vcrypt-b"
				write_calls a "$a1" "$a2" "$record/migrate_back_dest.txt" '' \
					"scenario migrate_back: $(cat "$outdir/smoke/migrate_back.virsh.cmd") on vcrypt-b; side: destination vcrypt-a" ;;
			migrate_refused)
				write_calls a "$a1" "$a2" "$record/migrate_refused_source.txt" '' \
					"scenario migrate_refused: $(cat "$outdir/smoke/migrate_refused.virsh.cmd") on vcrypt-a, B's hook exits 1 on migrate begin; side: source vcrypt-a"
				write_calls b "$b1" "$b2" "$record/migrate_refused_dest.txt" '' \
					"scenario migrate_refused: $(cat "$outdir/smoke/migrate_refused.virsh.cmd") on vcrypt-a, B's hook exits 1 on migrate begin; side: destination vcrypt-b"
				{
					echo "# What virsh printed when the destination's hook refused the migration"
					echo "# (tests/vm/pair_smoke.sh, scenario migrate_refused). The refusing hook wrote"
					echo "# one line on stderr and exited 1 on 'migrate begin'. Format: README.md."
					echo "command $(cat "$outdir/smoke/migrate_refused.virsh.cmd")"
					echo "exit $(cat "$outdir/smoke/migrate_refused.virsh.rc")"
					echo "stdout"
					cat "$outdir/smoke/migrate_refused.virsh.out"
					echo "stderr"
					cat "$outdir/smoke/migrate_refused.virsh.err"
					echo "end"
				} >"$record/migrate_refused_virsh.txt" ;;
		esac
	done <"$outdir/hooks/scenarios"
	echo "pair_smoke: test vectors written to $record"
fi
((own == 0)) || rm -rf -- "$outdir"
echo "pair_smoke: PASS"
