#!/usr/bin/env bash
# tests/vm/pair_migration_guest.sh - the scenario of tests/vm/pair_migration.sh;
# runs in guest A of tests/vm/pair.sh (two shared disks, vcrypt installed by
# pair_migration_setup.sh on both hosts). docs/cluster.md is what it checks.
#
# Host A runs a pykmip-server reachable from B. A domain (TCG, 64 MiB, no
# OS) gets two vcrypt disks through `vcryptctl attach`: one native
# (primary key streamed to B with provider backup --out - / restore -), one
# standard (the KMS on A; B has its own provider against it). A writes
# data through the mappings; then:
#   1. virsh migrate --live --p2p --persistent A -> B: B runs it and reads
#      A's data through its own mappings; A has no mapping and no cached
#      KEK of those VMs, an audit record reason=migrated, and an
#      `open --all` there opens nothing of them;
#   2. back B -> A, the same the other way;
#   3. B without the native provider: the migration fails at migrate
#      begin with the line naming the primary key ID; the domain keeps
#      running on A with its volumes open and KEKs cached; B has no
#      mapping and no VM.
# Prints "pair_migration: PASS ..." per check, "pair_migration: FAIL: ..."
# and exits 1 at the first failed one; timings go to /vmout/mig/results.txt.
set -uo pipefail

HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
SRC=$(cd -- "$HERE/../.." && pwd -P)
# shellcheck source=tests/vm/pair_lib.sh
source "$HERE/pair_lib.sh"

DOM=vcmig
A_URI=qemu+tcp://10.77.0.1/system
B_URI=qemu+tcp://10.77.0.2/system
OUT=/vmout/mig
KMS=/var/tmp/vcmig-kms
KMS_PORT=5696
mkdir -p "$OUT"
: >"$OUT/results.txt"
read -r DISK1 DISK2 _ <<<"$VCRYPT_PAIR_DISKS"

fail() { echo "pair_migration: FAIL: $*"; exit 1; }
pass() { echo "pair_migration: PASS $*"; }
note() { echo "pair_migration: $*"; printf '%s\n' "$*" >>"$OUT/results.txt"; }
lv() { virsh -q -c qemu:///system "$@"; }
now() { printf '%s' "$EPOCHREALTIME"; }
since() { awk -v s="$1" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.1f", e - s }'; }
expect_eq() {  # WANT GOT WHAT
	[[ $1 == "$2" ]] || fail "$3: expected '$1', got '$2'"
}
expect_has() {  # HAYSTACK NEEDLE WHAT
	[[ $1 == *"$2"* ]] || fail "$3: '$2' not in: $1"
}
CTL=$(command -v vcryptctl) || fail "vcryptctl is not installed"
vc() { "$CTL" "$@"; }
bvc() { on_b "$CTL" "$@"; }

# vcrypt mappings of the migrating VMs on this side (a|b), sorted.
mappings() {
	local cmd="dmsetup ls --target crypt 2>/dev/null | awk '{print \$1}' | grep '^vcrypt-mig' | sort || true"
	if [[ $1 == a ]]; then bash -c "$cmd"; else on_b bash -c "$cmd"; fi
}
# Cached KEKs of the migrating VMs on side $1, as "vm" lines.
cached() {
	local st
	if [[ $1 == a ]]; then st=$(vc --json status); else st=$(bvc --json status); fi
	python3 -c 'import json,sys; [print(e["vm"]) for e in json.load(sys.stdin)["kek_cache"] if e["vm"].startswith("mig")]' <<<"$st" | sort
}
# away_since of VM $2 on side $1 ("" when here).
away() {
	local j
	if [[ $1 == a ]]; then j=$(vc --json vm show "$2"); else j=$(bvc --json vm show "$2"); fi
	python3 -c 'import json,sys; print(json.load(sys.stdin).get("away_since",""))' <<<"$j"
}
# SHA-256 of the first 4 MiB of volume $2 read through side $1's mapping.
data_hash() {
	local cmd="dd if=/dev/mapper/vcrypt-$2 bs=1M count=4 iflag=direct status=none | sha256sum | cut -c1-64"
	if [[ $1 == a ]]; then bash -c "$cmd"; else on_b bash -c "$cmd"; fi
}
# Waits up to $2 s for `$1` (a command) to print $3.
wait_for() {
	local i got
	for ((i = 0; i < $2 * 2; i++)); do
		got=$($1)
		[[ $got == "$3" ]] && return 0
		_pair_nap 0.5
	done
	fail "after $2 s, '$1' printed '$got', expected '$3'"
}
migrate() {  # SIDE DEST_URI NAME: virsh migrate on SIDE; M_RC, M_TIME, M_ERR
	local cmd=(virsh -c qemu:///system migrate --live --p2p --persistent "$DOM" "$2") t
	t=$(now)
	M_RC=0
	if [[ $1 == a ]]; then
		"${cmd[@]}" >"$OUT/$3.out" 2>"$OUT/$3.err" || M_RC=$?
	else
		on_b "${cmd[@]}" >"$OUT/$3.out" 2>"$OUT/$3.err" || M_RC=$?
	fi
	M_TIME=$(since "$t")
	M_ERR=$(cat "$OUT/$3.err")
}
state() {  # SIDE: domstate --reason of the domain there
	if [[ $1 == a ]]; then lv domstate --reason "$DOM" 2>&1; else on_b virsh -q -c qemu:///system domstate --reason "$DOM" 2>&1; fi
}

t0=$(now)
pair_wait_boot 600 || fail "the pair did not boot cleanly"
note "boot: both hosts up after $(since "$t0") s of waiting"
vc status >/dev/null || fail "vcryptd does not answer on A"
bvc status >/dev/null || fail "vcryptd does not answer on B"
[[ -e /etc/libvirt/hooks/qemu.d/vcrypt ]] || fail "the hook is not installed on A"

# --- keys on both hosts (docs/cluster.md, "Keys on every host") ------------------
t=$(now)
MAKE_CERTS_EXTRA_SAN=IP:10.77.0.1 "$SRC/tests/kmip/make-certs.sh" "$KMS/certs" ||
	fail "make-certs.sh"
PYKMIP_ADDRESS=10.77.0.1 "$SRC/tests/kmip/pykmip-server.sh" start "$KMS" "$KMS_PORT" >"$OUT/kms.out" 2>&1 ||
	fail "pykmip-server did not start: $(tail -3 "$OUT/kms.out")"
note "KMS on A (10.77.0.1:$KMS_PORT) started in $(since "$t") s"
mkdir -p /vmout/certs && cp "$KMS/certs/"{ca,client,client-key}.pem /vmout/certs/
kms_args=(--kms "10.77.0.1:$KMS_PORT" --ca /vmout/certs/ca.pem --cert /vmout/certs/client.pem
	--key /vmout/certs/client-key.pem)
vc provider add native local >/dev/null || fail "provider add native on A"
vc provider add standard kms "${kms_args[@]}" >/dev/null || fail "provider add standard on A"
bvc provider add standard kms "${kms_args[@]}" >/dev/null || fail "provider add standard on B"
# The native primary key, streamed: what `| ssh host2 ...` does; here the
# 9p share stands for the pipe (on_b has no stdin).
umask 077
printf 'migration-test-password\n' >/vmout/pw
vc provider backup local --out - --password-file /vmout/pw >/vmout/local.p12 2>"$OUT/backup.err" ||
	fail "provider backup --out -: $(cat "$OUT/backup.err")"
on_b bash -c "$CTL provider restore - --name local --password-file /vmout/pw </vmout/local.p12" >/dev/null ||
	fail "provider restore - on B"
rm -f /vmout/local.p12
pk_a=$(vc --json provider list | python3 -c 'import json,sys; print([p["primary_key_id"] for p in json.load(sys.stdin)["providers"] if p["name"]=="local"][0])')
pk_b=$(bvc --json provider list | python3 -c 'import json,sys; print([p["primary_key_id"] for p in json.load(sys.stdin)["providers"] if p["name"]=="local"][0])')
expect_eq "$pk_a" "$pk_b" "primary key ID on B after restore -"
pass "native primary key streamed to B (primary key $pk_a on both); both hosts on the KMS"

# --- volumes, domain, data ------------------------------------------------------
vc vm create mignat --provider local >/dev/null || fail "vm create mignat"
vc vm create migkms --provider kms >/dev/null || fail "vm create migkms"
vc volume create mignat d0 --device "$DISK1" >/dev/null || fail "volume create on $DISK1"
vc volume create migkms d0 --device "$DISK2" >/dev/null || fail "volume create on $DISK2"
# B's udev learns the new LUKS headers (a real host rescans or sees them at
# its boot).
on_b bash -c "for d in $DISK1 $DISK2; do blockdev --flushbufs \$d; udevadm trigger --action=change --settle \$(readlink -f \$d); done" ||
	fail "udev rescan on B"
for d in mignat migkms; do
	uuid=$(vc --json volume list "$d" | python3 -c 'import json,sys; print(json.load(sys.stdin)["volumes"][0]["uuid"])')
	on_b test -e "/dev/disk/by-uuid/$uuid" || fail "B has no by-uuid link for $d/d0 ($uuid)"
done
vc open mignat/d0 >/dev/null || fail "open mignat/d0"
vc open migkms/d0 >/dev/null || fail "open migkms/d0"
head -c 4M /dev/urandom >/var/tmp/data
want=$(sha256sum </var/tmp/data | cut -c1-64)
for v in mignat-d0 migkms-d0; do
	dd if=/var/tmp/data of="/dev/mapper/vcrypt-$v" bs=1M oflag=direct status=none || fail "write through $v"
done
cat >"$OUT/$DOM.xml" <<EOF
<domain type='qemu'>
  <name>$DOM</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>
EOF
lv define "$OUT/$DOM.xml" >/dev/null || fail "virsh define"
vc attach mignat/d0 --domain "$DOM" >/dev/null || fail "attach mignat/d0"
vc attach migkms/d0 --domain "$DOM" >/dev/null || fail "attach migkms/d0"
md=$(lv metadata "$DOM" urn:vcrypt:libvirt:volumes:1 --config)
expect_has "$md" "primary-key-id=\"$pk_a\"" "the domain's vcrypt metadata"
expect_has "$md" 'provider-type="standard"' "the domain's vcrypt metadata"
lv start "$DOM" >/dev/null || fail "virsh start"
expect_eq "running (booted)" "$(state a)" "domstate on A"
expect_eq "vcrypt-migkms-d0
vcrypt-mignat-d0" "$(mappings a)" "A's mappings while the domain runs"
pass "domain $DOM runs on A with two vcrypt disks (native, standard) and their metadata"

# --- 1. A -> B ------------------------------------------------------------------
migrate a "$B_URI" a_to_b
((M_RC == 0)) || fail "virsh migrate A -> B exited $M_RC: $M_ERR"
note "migrate A -> B: $M_TIME s"
expect_eq "running (migrated)" "$(state b)" "domstate on B"
expect_eq "shut off (migrated)" "$(state a)" "domstate on A"
expect_eq "vcrypt-migkms-d0
vcrypt-mignat-d0" "$(mappings b)" "B's mappings"
expect_eq "$want" "$(data_hash b mignat-d0)" "A's data read through B's native mapping"
expect_eq "$want" "$(data_hash b migkms-d0)" "A's data read through B's standard mapping"
expect_eq "" "$(mappings a)" "A's mappings after the migration"
wait_for "cached a" 60 ""
expect_eq "" "$(away b mignat)" "mignat on B"
[[ -n $(away a mignat) && -n $(away a migkms) ]] || fail "A did not mark the VMs away"
audit=$(journalctl -q -o cat -t vcryptd --no-pager | grep 'op=kek.evict request=vm.depart' || true)
expect_has "$audit" "vm=mignat" "A's audit of the eviction"
expect_has "$audit" "reason=migrated" "A's audit of the eviction"
vc open --all >/dev/null 2>"$OUT/open-all.err" || fail "open --all on A: $(cat "$OUT/open-all.err")"
expect_eq "" "$(mappings a)" "A's mappings after open --all"
expect_eq "" "$(cached a)" "A's cached KEKs after open --all"
pass "A -> B: B runs it and reads A's data; A closed, evicted (audited reason=migrated), marked away, and open --all leaves it alone"

# --- 2. B -> A ------------------------------------------------------------------
migrate b "$A_URI" b_to_a
((M_RC == 0)) || fail "virsh migrate B -> A exited $M_RC: $M_ERR"
note "migrate B -> A: $M_TIME s"
expect_eq "running (migrated)" "$(state a)" "domstate on A"
expect_eq "shut off (migrated)" "$(state b)" "domstate on B"
expect_eq "$want" "$(data_hash a mignat-d0)" "data through A's native mapping"
expect_eq "$want" "$(data_hash a migkms-d0)" "data through A's standard mapping"
expect_eq "" "$(mappings b)" "B's mappings after it left"
wait_for "cached b" 60 ""
expect_eq "" "$(away a mignat)" "mignat on A after it came back"
[[ -n $(away b mignat) ]] || fail "B did not mark mignat away"
pass "B -> A: back on A with its data; B closed, evicted and marked away"

# --- 3. a destination without the native provider -------------------------------
bvc vm unregister mignat >/dev/null || fail "vm unregister mignat on B"
bvc vm unregister migkms >/dev/null || fail "vm unregister migkms on B"
bvc provider remove local --force >/dev/null || fail "provider remove local on B"
cached_before=$(cached a)
migrate a "$B_URI" refused
((M_RC != 0)) || fail "the migration to a host without the native provider succeeded"
note "refused migration: virsh exited $M_RC after $M_TIME s"
expect_has "$M_ERR" "native provider 'local' with primary key $pk_a is not configured on this host" \
	"virsh migrate's error"
expect_has "$M_ERR" "mignat/d0" "virsh migrate's error"
expect_eq "running (migrated)" "$(state a)" "domstate on A after the refused migration"
expect_eq "vcrypt-migkms-d0
vcrypt-mignat-d0" "$(mappings a)" "A's mappings after the refused migration"
expect_eq "$cached_before" "$(cached a)" "A's cached KEKs after the refused migration"
expect_eq "" "$(mappings b)" "B's mappings after the refused migration"
expect_eq "" "$(cached b)" "B's cached KEKs after the refused migration"
bvc vm show mignat >/dev/null 2>&1 && fail "B registered mignat for a refused migration"
note "refusal line: $(grep -o 'vcrypt: cannot take domain.*' "$OUT/refused.err" | head -n1)"
pass "refused: one line naming the volume, the provider and its primary key; A unchanged; nothing on B"

lv destroy "$DOM" >/dev/null 2>&1 || true
"$SRC/tests/kmip/pykmip-server.sh" kill "$KMS" >/dev/null 2>&1 || true
echo "pair_migration: all checks passed"
