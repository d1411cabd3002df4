#!/usr/bin/env bash
# tests/vm/pair_smoke_guest.sh - the scenario of tests/vm/pair_smoke.sh; runs
# in guest A of tests/vm/pair.sh (with pair_smoke_setup.sh as --setup).
#
# A domain without an OS (TCG, 64 MiB, one raw disk: the shared disk,
# cache='none') is started on A, live-migrated peer-to-peer to B, back to
# A, then refused by B's hook. Results in /vmout/smoke/ (results.txt:
# timings and states, virsh outputs), the hook calls in /vmout/hooks/
# (scenarios: "NAME A_FIRST A_LAST B_FIRST B_LAST" call numbers).
# Prints "pair_smoke: FAIL: ..." and exits 1 on the first failed check.
set -uo pipefail

# shellcheck source=tests/vm/pair_lib.sh
source "$(dirname -- "${BASH_SOURCE[0]}")/pair_lib.sh"

DOM=pairsmoke
DISK=$VCRYPT_PAIR_DISK
A_URI=qemu+tcp://10.77.0.1/system
B_URI=qemu+tcp://10.77.0.2/system
OUT=/vmout/smoke
HOOKS=/vmout/hooks
mkdir -p "$OUT"
: >"$OUT/results.txt"
: >"$HOOKS/scenarios"

fail() { echo "pair_smoke: FAIL: $*"; exit 1; }
note() { echo "pair_smoke: $*"; printf '%s\n' "$*" >>"$OUT/results.txt"; }
lv() { virsh -q -c qemu:///system "$@"; }
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v s="$1" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }'; }
expect_eq() {  # WANT GOT WHAT
	[[ $1 == "$2" ]] || fail "$3: expected '$1', got '$2'"
}

# --- the scenario bookkeeping: which hook calls belong to which step --------
hook_count() {
	local c=0
	[[ -s $HOOKS/$1/count ]] && c=$(<"$HOOKS/$1/count")
	echo "$c"
}
# Waits until neither side's hook count changed for 2 s (hooks such as the
# source's "release end" may run just after virsh returns); at most 30 s.
hooks_settle() {
	local a b last='' same=0 _
	for _ in $(seq 1 60); do
		a=$(hook_count a)
		b=$(hook_count b)
		if [[ "$a $b" == "$last" ]]; then
			same=$((same + 1))
			((same >= 4)) && return 0
		else
			same=0
			last="$a $b"
		fi
		_pair_nap 0.5
	done
}
scenario_begin() { S_NAME=$1; S_A=$(($(hook_count a) + 1)); S_B=$(($(hook_count b) + 1)); }
scenario_end() {
	hooks_settle
	printf '%s %s %s %s %s\n' "$S_NAME" "$S_A" "$(hook_count a)" "$S_B" "$(hook_count b)" >>"$HOOKS/scenarios"
}
# The "OP SUBOP EXTRA" of side $1's calls in the last scenario, one line.
scenario_ops() {
	local side=$1 from to
	read -r _ a1 a2 b1 b2 < <(tail -n1 "$HOOKS/scenarios")
	if [[ $side == a ]]; then from=$a1 to=$a2; else from=$b1 to=$b2; fi
	awk -v f="$from" -v t="$to" '$1 + 0 >= f && $1 + 0 <= t { printf "%s%s %s %s", sep, $5, $6, $7; sep = ", " }' "$HOOKS/$side/log"
}

rt=
t_boot=$(now)
pair_wait_boot 600 || fail "the pair did not boot cleanly"
read -r up _ </proc/uptime
note "boot: both guests booted; A's uptime ${up} s (pair_wait_boot waited $(since "$t_boot") s of it)"

# --- the two hosts see each other ------------------------------------------------
expect_eq vcrypt-a "$(hostname)" "A's hostname"
expect_eq vcrypt-b "$(on_b hostname)" "B's hostname"
for _ in 1 2 3 4 5; do
	t=$(now)
	on_b : || fail "on_b : failed"
	rt+=" $(awk -v s="$t" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.2f", e - s }')"
done
note "on_b round trip (builtin ':', s):$rt"
rt=
for _ in 1 2 3; do
	t=$(now)
	on_b /bin/true || fail "on_b /bin/true failed"
	rt+=" $(awk -v s="$t" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.2f", e - s }')"
done
note "on_b round trip (/bin/true, s):$rt"
# How soon each guest sees a file the other created on the share (9p,
# cache=none): ping-pong with busy-waiting on both sides; half a round trip
# is one way.
pp=/vmout/smoke/pingpong
mkdir -p "$pp"
on_b -t 60 bash -c "for i in {1..10}; do until [[ -e $pp/a\$i ]]; do :; done; : >$pp/b\$i; done" &
pp_pid=$!
rt=
for i in {1..10}; do
	t=$(now)
	: >"$pp/a$i"
	until [[ -e $pp/b$i ]]; do :; done
	rt+=" $(awk -v s="$t" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.0f", (e - s) * 1000 }')"
done
wait "$pp_pid" || fail "the ping-pong on B failed"
note "9p ping-pong between the guests, round trips (ms):$rt"

# The shared disk: a marker written by A (O_DIRECT) is read by B, and back.
marker_a="vcrypt-pair-smoke A $(date +%s%N)"
printf '%s\n' "$marker_a" | dd of="$DISK" bs=4096 count=1 oflag=direct conv=sync status=none ||
	fail "cannot write the marker to $DISK"
got=$(on_b bash -c "dd if=$DISK bs=4096 count=1 iflag=direct status=none | head -n1")
expect_eq "$marker_a" "$got" "B reads A's marker on the shared disk"
marker_b="vcrypt-pair-smoke B $(date +%s%N)"
on_b bash -c "printf '%s\n' '$marker_b' | dd of=$DISK bs=4096 seek=1 count=1 oflag=direct conv=sync status=none" ||
	fail "B cannot write its marker"
got=$(dd if="$DISK" bs=4096 skip=1 count=1 iflag=direct status=none | head -n1)
expect_eq "$marker_b" "$got" "A reads B's marker on the shared disk"
note "shared disk: markers written with O_DIRECT by each side read back by the other"

# libvirtd of each side answers the other over TCP.
expect_eq vcrypt-b "$(virsh -c "$B_URI" hostname 2>&1)" "virsh -c $B_URI hostname (from A)"
expect_eq vcrypt-a "$(on_b virsh -c "$A_URI" hostname 2>&1)" "virsh -c $A_URI hostname (from B)"
note "libvirt: A and B answer each other on qemu+tcp (no auth)"

# --- the domain -------------------------------------------------------------------
cat >"$OUT/$DOM.xml" <<EOF
<domain type='qemu'>
  <name>$DOM</name>
  <uuid>7663c000-0000-4000-8000-00000000c0de</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='$DISK'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
lv define "$OUT/$DOM.xml" >/dev/null || fail "virsh define failed"
scenario_begin start
t=$(now)
lv start "$DOM" >/dev/null || fail "virsh start failed"
note "start on A: $(since "$t") s"
scenario_end
note "hooks, start on A: A: $(scenario_ops a)"
expect_eq "running (booted)" "$(lv domstate --reason "$DOM")" "domstate on A after start"

# migrate SRC_SIDE DEST_URI NAME: virsh migrate on the source side, timed.
migrate() {
	local side=$1 uri=$2 name=$3 t rc=0
	local cmd=(virsh -c qemu:///system migrate --live --p2p --persistent "$DOM" "$uri")
	t=$(now)
	if [[ $side == a ]]; then
		"${cmd[@]}" >"$OUT/$name.virsh.out" 2>"$OUT/$name.virsh.err" || rc=$?
	else
		on_b "${cmd[@]}" >"$OUT/$name.virsh.out" 2>"$OUT/$name.virsh.err" || rc=$?
	fi
	M_TIME=$(since "$t")
	M_RC=$rc
	printf '%s\n' "${cmd[*]}" >"$OUT/$name.virsh.cmd"
	printf '%s\n' "$rc" >"$OUT/$name.virsh.rc"
}
# jobinfo SIDE NAME: the completed migration job's statistics on SIDE.
jobinfo() {
	if [[ $1 == a ]]; then
		lv domjobinfo --completed "$DOM" >"$OUT/$2.jobinfo.$1" 2>&1
	else
		on_b virsh -q -c qemu:///system domjobinfo --completed "$DOM" >"$OUT/$2.jobinfo.$1" 2>&1
	fi
	local d
	d=$(awk -F: '/^Total downtime/ { gsub(/^ +/, "", $2); print $2 }' "$OUT/$2.jobinfo.$1")
	note "$2: domjobinfo --completed on $1: total time $(awk -F: '/^Time elapsed:/ { gsub(/^ +/, "", $2); print $2; exit }' "$OUT/$2.jobinfo.$1"), downtime ${d:-n/a}"
}

# --- A -> B ---------------------------------------------------------------------------
scenario_begin migrate_ok
migrate a "$B_URI" migrate_ok
((M_RC == 0)) || fail "virsh migrate A -> B failed ($M_RC): $(cat "$OUT/migrate_ok.virsh.err")"
note "migrate A -> B: virsh migrate --live --p2p --persistent: $M_TIME s"
scenario_end
expect_eq "running (migrated)" "$(on_b virsh -q -c qemu:///system domstate --reason "$DOM")" "domstate on B after A -> B"
expect_eq "shut off (migrated)" "$(lv domstate --reason "$DOM")" "domstate on A after A -> B"
note "hooks, A -> B: source A: $(scenario_ops a)"
note "hooks, A -> B: destination B: $(scenario_ops b)"
jobinfo a migrate_ok
jobinfo b migrate_ok

# --- B -> A ---------------------------------------------------------------------------
scenario_begin migrate_back
migrate b "$A_URI" migrate_back
((M_RC == 0)) || fail "virsh migrate B -> A failed ($M_RC): $(cat "$OUT/migrate_back.virsh.err")"
note "migrate B -> A: $M_TIME s"
scenario_end
expect_eq "running (migrated)" "$(lv domstate --reason "$DOM")" "domstate on A after B -> A"
expect_eq "shut off (migrated)" "$(on_b virsh -q -c qemu:///system domstate --reason "$DOM")" "domstate on B after B -> A"
note "hooks, B -> A: source B: $(scenario_ops b)"
note "hooks, B -> A: destination A: $(scenario_ops a)"
jobinfo b migrate_back
jobinfo a migrate_back

# --- A -> B refused by B's hook ----------------------------------------------------
on_b touch /run/vcrypt-smoke-refuse-migrate || fail "cannot arm B's refusing hook"
scenario_begin migrate_refused
migrate a "$B_URI" migrate_refused
on_b rm -f /run/vcrypt-smoke-refuse-migrate
((M_RC != 0)) || fail "virsh migrate A -> B succeeded although B's hook refused it"
note "migrate A -> B refused by B's hook: virsh exit status $M_RC after $M_TIME s"
note "  virsh stdout: $(cat "$OUT/migrate_refused.virsh.out")"
note "  virsh stderr: $(cat "$OUT/migrate_refused.virsh.err")"
scenario_end
expect_eq "running (migrated)" "$(lv domstate --reason "$DOM")" "domstate on A after the refused migration"
state_b=$(on_b virsh -q -c qemu:///system domstate --reason "$DOM" 2>&1)
note "after the refusal: A: $(lv domstate --reason "$DOM"); B: $state_b"
note "hooks, refused: source A: $(scenario_ops a)"
note "hooks, refused: destination B: $(scenario_ops b)"

# QEMU's logs of the domain, for the record (start-up and migration lines).
cp /var/log/libvirt/qemu/$DOM.log "$OUT/qemu-a.log" 2>/dev/null
on_b cp "/var/log/libvirt/qemu/$DOM.log" "$OUT/qemu-b.log" 2>/dev/null

# --- the end: destroy on A ------------------------------------------------------------
scenario_begin destroy
lv destroy "$DOM" >/dev/null || fail "virsh destroy failed"
scenario_end
note "hooks, destroy on A: A: $(scenario_ops a)"
lv undefine "$DOM" >/dev/null || fail "virsh undefine on A failed"
on_b virsh -q -c qemu:///system undefine "$DOM" >/dev/null || fail "virsh undefine on B failed"
echo PASS >>"$OUT/results.txt"
echo "pair_smoke: all checks passed in guest A"
