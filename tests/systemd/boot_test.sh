#!/bin/bash
# The boot test: a guest that boots systemd as PID 1 (tests/vm/run.sh
# --systemd) with vcrypt installed the way `cmake --install` installs it, and
# five virtio disks that are vcrypt volumes. Nothing is opened by hand:
#
#   alpha/root  native provider                 → mapped at boot, data intact
#   beta/root   KMS that is down at boot        → locked with the reason in
#                                                 `vcryptctl status`; unlocks by
#                                                 itself once the KMS starts
#   gamma/root  KMS that stays down             → its unit gives up at its
#                                                 deadline, boot completes
#                                                 (degraded), then the KMS is
#                                                 started and `systemctl restart`
#                                                 opens it
#   delta/root  native, vm create --no-auto-unlock → stays closed
#   epsilon/root native; inside it the guest built LVM (PV, VG guestvg, LV
#                guestlv with ext4): the host must leave that content alone
#                (docs/boot.md, "Guest content stays the guest's"), when the
#                boot path opens it and when vcryptctl reopens it: no
#                guestvg-* device, no /dev/disk/by-uuid link to the guest's
#                ext4, no PV in `pvs`, and `close` succeeds. Checked with
#                vcrypt's udev rule and LVM filter, with each alone, and
#                without both (the control: the host then activates the
#                guest's LV, so the checks can fail). lvm2 (Debian's, event
#                activation on) is installed in both guests, never on the
#                host (tests/systemd/lvm2_debs.sh fetches it).
#
# Two guest boots: "prep" (the plain harness) creates the providers, VMs and
# volumes on the disks, with both KMSs running; "job" (under systemd) checks
# the boot. The work directory is the --outdir share, so the guests see it at
# the same path and the KMS databases and vcryptd's state survive between
# the boots.
#
# usage: boot_test.sh BUILD_DIR        (host; prints "boot: N passed, M failed")
#        boot_test.sh prep|setup|job W (inside the guests; internal)
set -uo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
KMIP=$ROOT/tests/kmip

# ---------------------------------------------------------------- host side
host() {
  local build
  build=$(cd "$1" && pwd) || { echo "boot: no build dir $1" >&2; exit 2; }
  # VCRYPT_BOOT_KEEP=1 keeps the work directory; VCRYPT_BOOT_REUSE=DIR
  # reuses a kept one and boots systemd only (for working on the checks).
  local reuse=${VCRYPT_BOOT_REUSE:-}
  if [[ -n $reuse ]]; then
    W=$reuse
  else
    W=$(mktemp -d /tmp/vcrypt-boot.XXXXXX)
  fi
  [[ ${VCRYPT_BOOT_KEEP:-0} == 1 || -n $reuse ]] || trap 'rm -rf "$W"' EXIT
  rm -rf "$W/stage"
  # Installed exactly as a packager would: cmake --install into a staging
  # root, which the guest copies over its (overlay) root before systemd.
  DESTDIR=$W/stage cmake --install "$build" >"$W/install.log" 2>&1 ||
    { cat "$W/install.log"; echo "boot: 0 passed, 1 failed"; exit 1; }
  export VCRYPT_BOOT_W=$W VCRYPT_BOOT_SRC=$ROOT
  if [[ -z $reuse ]]; then
    echo "VCRYPT_BUILD=$build" >"$W/env"
    echo "P1=$((20000 + RANDOM % 20000))" >>"$W/env"
    echo "P2=$((40001 + RANDOM % 20000))" >>"$W/env"
    echo "GUEST_FS_UUID=5e1ec7ed-0000-4000-8000-0000000e951d" >>"$W/env"
  fi
  local debs
  debs=$("$HERE/lvm2_debs.sh") || { echo "boot: 0 passed, 1 failed"; exit 1; }
  grep -q '^LVM_DEBS=' "$W/env" || echo "LVM_DEBS=$debs" >>"$W/env"
  local disks=()
  for d in alpha beta gamma delta epsilon; do
    [[ -n $reuse ]] || truncate -s 40M "$W/$d.img"
    disks+=(--disk "$W/$d.img")
  done
  echo "# boot test: preparing volumes (plain guest)"
  if [[ -z $reuse ]] && ! "$ROOT/tests/vm/run.sh" --timeout 600 --outdir "$W" "${disks[@]}" -- \
      bash "$HERE/boot_test.sh" prep "$W"; then
    echo "FAIL prep: the preparation guest failed"
    echo "boot: 0 passed, 1 failed"
    return 1
  fi
  echo "# boot test: booting systemd"
  local rc=0
  "$ROOT/tests/vm/run.sh" --systemd --timeout 1800 --outdir "$W" "${disks[@]}" \
    --setup "$HERE/boot_setup.sh" -- \
    bash "$HERE/boot_test.sh" job "$W" | tee "$W/job.out" || rc=$?
  local p f
  p=$(grep -c '^PASS ' "$W/job.out")
  f=$(grep -c '^FAIL ' "$W/job.out")
  if ((rc != 0 && f == 0)); then
    f=1
    echo "FAIL the systemd guest exited $rc"
  fi
  [[ -f $W/journal.txt ]] && ((f > 0)) && {
    echo "# --- journal of the failed boot (vcrypt units) ---"
    grep -E 'vcrypt|systemd\[1\]: .*(vcrypt|libvirt|Failed)' "$W/journal.txt" | tail -150
  }
  echo "boot: $p passed, $f failed"
  ((f == 0))
}

# ------------------------------------------------------- guest 1: prepare
kms_start() {  # name port
  mkdir -p "$W/$1"
  [[ -d $W/kms1/certs && ! -d $W/$1/certs ]] && cp -a "$W/kms1/certs" "$W/$1/certs"
  PYKMIP_KEEP_DB=${KEEP_DB:-0} "$KMIP/pykmip-server.sh" start "$W/$1" "$2" >/dev/null
}
kms_kill() { "$KMIP/pykmip-server.sh" kill "$W/$1" >/dev/null 2>&1 || true; }

prep() {
  set -e
  source "$W/env"
  mkdir -p /dev/shm && mount -t tmpfs shm /dev/shm 2>/dev/null || true
  local T=/tmp/prep
  mkdir -p $T
  local ctl=("$VCRYPT_BUILD/cli/vcryptctl" --socket $T/sock)
  local t0=$SECONDS
  "$KMIP/make-certs.sh" "$W/kms1/certs" >/dev/null   # kms2 shares them
  kms_start kms1 "$P1" &
  kms_start kms2 "$P2" &
  wait %1 && wait %2
  echo "# both KMSs up after $((SECONDS - t0)) s"
  trap 'kms_kill kms1; kms_kill kms2; kill $dpid 2>/dev/null' EXIT
  "$VCRYPT_BUILD/daemon/vcryptd" --state-dir "$W/state" --socket $T/sock >$T/d.log 2>&1 &
  dpid=$!
  for _ in $(seq 100); do [[ -S $T/sock ]] && break; sleep 0.1; done
  local c=$W/kms1/certs
  "${ctl[@]}" provider add native host >/dev/null
  "${ctl[@]}" provider add standard kms --kms 127.0.0.1:$P1 --ca $c/ca.pem \
    --cert $c/client.pem --key $c/client-key.pem >/dev/null
  "${ctl[@]}" provider add standard kmsdown --kms 127.0.0.1:$P2 --ca $c/ca.pem \
    --cert $c/client.pem --key $c/client-key.pem >/dev/null
  "${ctl[@]}" vm create alpha --provider host >/dev/null
  "${ctl[@]}" vm create beta --provider kms >/dev/null
  "${ctl[@]}" vm create gamma --provider kmsdown >/dev/null
  "${ctl[@]}" vm create delta --provider host --no-auto-unlock >/dev/null
  local vm dev=(vda vdb vdc vdd) i=0 path
  for vm in alpha beta gamma delta; do
    "${ctl[@]}" volume create $vm root --device /dev/${dev[$i]} >/dev/null
    path=$("${ctl[@]}" open $vm/root)
    head -c $((4 << 20)) /dev/urandom >$T/p
    dd if=$T/p of="$path" bs=1M oflag=direct conv=fsync status=none
    sha256sum <$T/p | cut -d' ' -f1 >"$W/$vm.sha"
    "${ctl[@]}" close $vm/root >/dev/null
    i=$((i + 1))
  done
  # epsilon: this guest plays the VM and builds LVM inside the volume.
  # Host-side LVM event activation stays off here (Debian's rule hidden).
  local t1=$SECONDS
  lvm2_install
  echo "# lvm2 installed in $((SECONDS - t1)) s"
  : >/etc/udev/rules.d/69-lvm.rules
  udevadm control --reload
  "${ctl[@]}" vm create epsilon --provider host >/dev/null
  "${ctl[@]}" volume create epsilon root --device /dev/vde >/dev/null
  path=$("${ctl[@]}" open epsilon/root)
  pvcreate -q -y "$path" >/dev/null
  vgcreate -q guestvg "$path" >/dev/null
  lvcreate -q -y -Zy -l 100%FREE -n guestlv guestvg >/dev/null
  mkfs.ext4 -q -U "$GUEST_FS_UUID" /dev/guestvg/guestlv
  vgchange -q -an guestvg >/dev/null
  "${ctl[@]}" close epsilon/root >/dev/null
  echo "# epsilon's guest LVM built in $((SECONDS - t1)) s"
  echo "# prepared in $((SECONDS - t0)) s"
}

# Debian's lvm2 into this guest's overlay root (tests/systemd/lvm2_debs.sh).
lvm2_install() {
  "$HERE/lvm2_debs.sh" install "$LVM_DEBS"
  lvm version >/dev/null
}

# ----------------------------------------------- guest 2: systemd checks
pass=0
PASS() { echo "PASS $*"; }
FAIL() { echo "FAIL $*"; }
check() {  # name command...
  local name=$1; shift
  local out
  if out=$("$@" 2>&1); then PASS "$name"; else FAIL "$name: ${out:-failed}"; fi
}
wait_for() {  # seconds command...
  local t=$1; shift
  local end=$((SECONDS + t))
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < end)) || return 1
    sleep 1
  done
}
up() { cut -d' ' -f1 /proc/uptime; }
CTL=/usr/local/sbin/vcryptctl
mapped() { [[ -b /dev/mapper/vcrypt-$1-root ]]; }
unit_state() { systemctl show -P ActiveState "$1"; }
unit_is() { [[ $(unit_state "$1") == "$2" ]]; }
data_intact() {  # vm
  local got
  got=$(dd if=/dev/mapper/vcrypt-$1-root bs=1M count=4 iflag=direct status=none | sha256sum | cut -d' ' -f1)
  [[ $got == "$(cat "$W/$1.sha")" ]] || { echo "sha $got != $(cat "$W/$1.sha")"; return 1; }
}
# "STATE|REASON MESSAGE" of VM/root in `vcryptctl --json status`.
vol_state() {
  $CTL --json status | python3 -c '
import json, sys
st = json.load(sys.stdin)
for vm in st["vms"]:
    for d in vm["disks"]:
        if vm["vm"] == sys.argv[1] and d["disk"] == "root":
            r = d.get("reason") or {}
            print(d["state"] + "|" + str(r.get("message", "")))
' "$1"
}
locked_with() {  # vm text
  local s
  s=$(vol_state "$1")
  [[ $s == locked\|*"$2"* ]] || { echo "status of $1/root: $s (want locked, reason naming $2)"; return 1; }
}
only_failed_unit() {
  local failed
  failed=$(systemctl list-units --failed --plain --no-legend | awk '{print $1}' | tr '\n' ' ')
  [[ $failed == "$1 " ]] || { echo "failed units: '$failed', want '$1'"; return 1; }
}
after_contains() { [[ " $(systemctl show -P After "$1") " == *" $2 "* ]]; }
after_lacks() { [[ " $(systemctl show -P After "$1") " != *" $2 "* ]]; }
ts() { systemctl show -P "$2" "$1" | xargs -r -I{} date -d "{}" +%s%N; }
before() {  # unit1 prop1 unit2 prop2: unit1's timestamp <= unit2's
  local a b
  a=$(systemctl show -P "$2" "$1" --timestamp=unix | tr -d @)
  b=$(systemctl show -P "$4" "$3" --timestamp=unix | tr -d @)
  [[ -n $a && -n $b && $a -le $b ]] || { echo "$1 $2=$a, $3 $4=$b"; return 1; }
}

libvirtd_waited_for() {  # vm check-name property-marking-the-end
  local u=vcrypt-unlock-net@$1-root.service
  if before "$u" InactiveExitTimestamp libvirtd.service InactiveExitTimestamp >/dev/null; then
    check "$2" before "$u" "$3" libvirtd.service ActiveEnterTimestamp
  else
    echo "# $u started after libvirtd: no ordering to check"
  fi
}

# ---- epsilon: the guest's LVM inside a vcrypt volume stays the guest's
EPS=/dev/mapper/vcrypt-epsilon-root
VCRYPT_DM_RULE=12-vcrypt-dm.rules
# Until udev has handled every event and no LVM autoactivation (the
# lvm-activate-VG units that 69-lvm.rules starts) is running.
quiet_down() {
  udevadm settle --timeout=60
  wait_for 60 bash -c '! systemctl list-units --plain --no-legend "lvm-activate-*" | grep -q activating' || true
}
guest_lv_active() { dmsetup ls | grep -q '^guestvg-'; }
no_guest_lv() {
  local lv
  lv=$(dmsetup ls | awk '$1 ~ /^guestvg-/ {print $1}')
  [[ -z $lv ]] || { echo "the host activated the guest's LV: $lv"; return 1; }
}
no_guest_fs_link() {
  local l=/dev/disk/by-uuid/$GUEST_FS_UUID
  [[ ! -e $l ]] || { echo "$l -> $(readlink -f "$l")"; return 1; }
}
content_not_probed() {
  local p
  p=$(udevadm info -q property -n "$EPS" | grep -E '^(ID_FS_|DM_UDEV_DISABLE_)')
  ! grep -q '^ID_FS_TYPE=' <<<"$p" || { echo "udev probed the content: $(tr '\n' ' ' <<<"$p")"; return 1; }
}
pv_not_listed() {
  local out
  out=$(pvs --noheadings -o pv_name,vg_name 2>&1)
  ! grep -q guestvg <<<"$out" || { echo "pvs: $out"; return 1; }
}
eps_closed() { [[ ! -e $EPS ]] || { echo "still mapped, open count $(dmsetup info -c --noheadings -o open vcrypt-epsilon-root)"; return 1; }; }
eps_close_ctl() { $CTL close epsilon/root && eps_closed; }
eps_close_unit() { systemctl stop vcrypt-unlock@epsilon-root.service && eps_closed; }
# The guest's LV if the host activated it, and LVM's record that guestvg
# was autoactivated once (it would not be again).
drop_guest_lv() {
  local m
  for m in $(dmsetup ls | awk '$1 ~ /^guestvg-/ {print $1}'); do dmsetup remove --retry "$m"; done
  rm -f /run/lvm/vgs_online/guestvg /run/lvm/pvs_online/*
}
# Undoes whatever a failed check left: the guest's LV, the mapping.
eps_reset() {
  drop_guest_lv
  [[ ! -e $EPS ]] || $CTL close epsilon/root >/dev/null || true
  udevadm settle --timeout=60
}
eps_checks() {  # label [pvs]
  quiet_down
  check "$1: no guestvg-* device (host LVM left the guest's VG alone)" no_guest_lv
  check "$1: no /dev/disk/by-uuid link to the guest's ext4" no_guest_fs_link
  check "$1: udev did not probe the mapping's content" content_not_probed
  [[ ${2:-} != pvs ]] || check "$1: pvs does not list the guest's PV" pv_not_listed
}
use_lvm_filter() { cp "/etc/lvm/lvmlocal.conf.$1" /etc/lvm/lvmlocal.conf; }
use_dm_rule() {  # on|off
  if [[ $1 == on ]]; then rm -f /etc/udev/rules.d/$VCRYPT_DM_RULE; else ln -sf /dev/null /etc/udev/rules.d/$VCRYPT_DM_RULE; fi
  udevadm control --reload
}

# An admin's close holds (daemon/held_closed.h): every operation that
# writes a volume's header makes udev announce its device again and start
# its unlock unit; a volume the admin closed must stay closed through all
# of them (issue 14: it used to open itself again moments later). Each
# check first waits for the unit to have run again (so the event really
# came) and then looks at the mapping.
held_unit=vcrypt-unlock@alpha-root.service
held_after() {  # label command...: run it on the closed alpha, then check
  local label=$1; shift
  systemctl stop $held_unit
  if ! "$@" >/dev/null 2>&1; then FAIL "held: $label: the operation failed"; return; fi
  udevadm settle
  check "held: $label: the header write started alpha's unit again" wait_for 30 unit_is $held_unit active
  check "held: $label: alpha stays closed" bash -c "! [[ -e /dev/mapper/vcrypt-alpha-root ]]"
}
held_job() {
  local t0=$SECONDS
  # Closed by its unit's stop just before; the admin's close holds it
  # (it answers "not open", exit 5).
  $CTL close alpha/root >/dev/null 2>&1
  check "held: vcryptctl close of a closed volume answers not open (5)" test $? -eq 5
  held_after "shallow rekey" $CTL vm rekey alpha
  held_after "recovery-key add" $CTL volume recovery-key add alpha/root
  held_after "recovery-key remove" $CTL volume recovery-key remove alpha/root --force
  $CTL provider add native host2 >/dev/null
  held_after "provider change" $CTL vm rekey alpha --provider host2
  held_after "deep rekey" $CTL vm rekey alpha --deep
  check "held: the unit's log says why it left alpha closed" bash -c \
    "journalctl -b -u $held_unit --no-pager | grep -q 'closed by an admin on this boot'"
  check "held: an explicit open opens alpha" $CTL open alpha/root
  check "held: alpha's data intact after five header rewrites" data_intact alpha
  $CTL close alpha/root >/dev/null
  # A new volume on a block device is its creator's to open: the change
  # event of its format must not have the boot path open it.
  truncate -s 40M /tmp/zeta.img
  local loop
  loop=$(losetup -f --show /tmp/zeta.img)
  $CTL vm create zeta --provider host >/dev/null
  check "held: volume create --device on $loop" $CTL volume create zeta root --device "$loop"
  udevadm settle
  check "held: the new volume's unit ran" wait_for 30 unit_is vcrypt-unlock@zeta-root.service active
  check "held: ... and left the new volume closed" bash -c "! [[ -e /dev/mapper/vcrypt-zeta-root ]]"
  echo "# held checks took $((SECONDS - t0)) s"
}

epsilon_job() {
  local t0=$SECONDS
  # The boot path: udev rule → unlock unit → vcryptd, with vcrypt's udev
  # rule and LVM filter installed.
  check "epsilon: opened at boot by its unit" wait_for 60 unit_is vcrypt-unlock@epsilon-root.service active
  eps_checks "boot path" pvs
  $CTL vm set epsilon --auto-unlock off >/dev/null   # no reopen by later events
  check "boot path: stopping the unit closes the volume" eps_close_unit
  eps_reset
  check "vcryptctl: reopens epsilon" $CTL open epsilon/root
  eps_checks "vcryptctl open" pvs
  check "vcryptctl open: close succeeds" eps_close_ctl
  eps_reset
  # Each half alone. The udev rule alone stops autoactivation (udev-driven)
  # and the by-uuid links; a manual pvs still reads the mapping.
  use_lvm_filter debian
  check "udev rule alone: opens" $CTL open epsilon/root
  eps_checks "udev rule alone"
  echo "# pvs with the udev rule alone: $(pvs --noheadings -o pv_name,vg_name 2>&1 | tr -s ' \n' ' ')"
  check "udev rule alone: close succeeds" eps_close_ctl
  # ... and a manual vgchange -ay activates the guest's VG: what the
  # filter is for (the control of its check below).
  $CTL open epsilon/root >/dev/null
  quiet_down
  vgchange -ay >/dev/null 2>&1 || true
  check "control: with the udev rule alone, a manual vgchange -ay activates the guest's LV" \
    guest_lv_active
  drop_guest_lv
  eps_reset
  # The LVM filter alone keeps commands that scan (pvs, vgchange -ay,
  # pvscan --cache) off the mapping. It does not stop udev's own pvscan:
  # 69-lvm.rules passes /dev/dm-N, a name no filter can match (docs/boot.md).
  use_dm_rule off
  use_lvm_filter vcrypt
  check "LVM filter alone: opens" $CTL open epsilon/root
  quiet_down
  if ! no_guest_lv >/dev/null; then
    echo "# LVM filter alone: udev's pvscan of /dev/dm-N activated the guest's LV (the udev rule is what stops that)"
  fi
  drop_guest_lv   # the mapping stays open: no new event
  vgchange -ay >/dev/null 2>&1 || true
  pvscan --cache >/dev/null 2>&1 || true
  check "LVM filter alone: vgchange -ay and pvscan --cache leave the guest's VG alone" no_guest_lv
  check "LVM filter alone: pvs does not list the guest's PV" pv_not_listed
  check "LVM filter alone: close succeeds" eps_close_ctl
  eps_reset
  # The control: without both, this host activates the guest's LV (so the
  # checks above can fail).
  use_lvm_filter debian
  $CTL open epsilon/root >/dev/null
  check "control: without rule and filter the host activates the guest's LV" \
    wait_for 60 guest_lv_active
  check "control: ... and its ext4 gets a by-uuid link" wait_for 30 test -e "/dev/disk/by-uuid/$GUEST_FS_UUID"
  eps_reset
  use_dm_rule on
  use_lvm_filter vcrypt
  echo "# epsilon checks took $((SECONDS - t0)) s"
}

job() {
  source "$W/env"
  mkdir -p /dev/shm
  echo "# job started at uptime $(up) s"
  rm -f "$W/journal.txt"
  trap 'journalctl -b --no-pager -o short-monotonic >"$W/journal.txt" 2>&1; kms_kill kms1; kms_kill kms2' EXIT

  check "alpha (native) is mapped at boot with no manual command" wait_for 180 mapped alpha
  echo "# alpha mapped at uptime $(up) s"
  check "alpha: data written before the reboot is intact" data_intact alpha
  # The audit log under a real journald: structured records, found by
  # field (docs/audit.md), with the VM, the volume UUID and the result.
  check "audit: alpha's DEK unwrap is a structured journal record" bash -c \
    "journalctl -b -t vcryptd VCRYPT_OP=dek.unwrap VCRYPT_VM=alpha -o json --no-pager |
       grep '\"VCRYPT_RESULT\":\"ok\"' | grep -q '\"VCRYPT_VOLUME\":\"[0-9a-f-]\{36\}\"'"
  # The mapping appears a moment before the unit's helper exits.
  check "alpha: opened by vcrypt-unlock@alpha-root.service" \
    wait_for 60 unit_is vcrypt-unlock@alpha-root.service active
  check "native unit is not ordered after network-online.target" \
    after_lacks vcrypt-unlock@alpha-root.service network-online.target
  check "KMS unit is ordered after network-online.target" \
    after_contains vcrypt-unlock-net@beta-root.service network-online.target
  check "delta (--no-auto-unlock): its unit ran and opened nothing" \
    wait_for 60 unit_is vcrypt-unlock@delta-root.service active
  check "delta stays closed" bash -c "! [[ -e /dev/mapper/vcrypt-delta-root ]]"

  # KMS down: the unit keeps retrying; status says why the volume is locked.
  check "beta (KMS down): its unlock unit is still retrying" \
    unit_is vcrypt-unlock-net@beta-root.service activating
  check "beta: status reports locked with the unreachable KMS" \
    wait_for 60 locked_with beta "127.0.0.1:$P1"
  locked_with beta "127.0.0.1:$P1" || true   # the message, for the log
  echo "# beta: $(vol_state beta)"
  check "beta is not mapped while the KMS is down" bash -c "! [[ -e /dev/mapper/vcrypt-beta-root ]]"

  echo "# starting the KMS of beta at uptime $(up) s"
  KEEP_DB=1 kms_start kms1 "$P1" || FAIL "cannot start the KMS"
  echo "# KMS up at uptime $(up) s"
  check "beta unlocks by itself once the KMS is up" wait_for 120 mapped beta
  echo "# beta mapped at uptime $(up) s"
  check "beta: data intact" data_intact beta
  check "beta: unit active" wait_for 10 unit_is vcrypt-unlock-net@beta-root.service active
  check "beta: the unit's log shows retries" bash -c \
    "journalctl -b -u vcrypt-unlock-net@beta-root.service --no-pager | grep -qi 'retry'"
  check "beta: status reports unlocked" bash -c "[[ \$($(declare -f vol_state); CTL=$CTL vol_state beta) == unlocked\|* ]]"

  # gamma's KMS never comes: the unit gives up at its deadline (20 s, set by
  # a per-instance drop-in) and the boot completes.
  check "gamma: its unit fails at the deadline" wait_for 120 unit_is vcrypt-unlock-net@gamma-root.service failed
  check "gamma: status reports locked with the unreachable KMS" locked_with gamma "127.0.0.1:$P2"
  echo "# gamma: $(vol_state gamma)"
  local state
  state=$(timeout 180 systemctl is-system-running --wait)
  echo "# system state: $state at uptime $(up) s"
  check "boot completes (degraded: one failed unlock)" test "$state" = degraded
  check "the only failed unit is gamma's" only_failed_unit vcrypt-unlock-net@gamma-root.service
  # Ordering only binds jobs that exist together: an unlock unit pulled in
  # by a device that udev announces after libvirtd's start job has run
  # cannot hold libvirtd back (docs/boot.md; the qemu hook opens such a
  # disk when its domain starts). So: an unlock unit started before
  # libvirtd must have finished before libvirtd started.
  libvirtd_waited_for beta "libvirtd waited for beta's unit to open it" ActiveEnterTimestamp
  libvirtd_waited_for gamma "libvirtd waited for gamma's unit to give up" InactiveEnterTimestamp

  KEEP_DB=1 kms_start kms2 "$P2" || FAIL "cannot start gamma's KMS"
  check "gamma opens with systemctl restart once its KMS is up" \
    systemctl restart vcrypt-unlock-net@gamma-root.service
  check "gamma: data intact" data_intact gamma

  check "stopping alpha's unit closes the volume it opened" bash -c \
    "systemctl stop vcrypt-unlock@alpha-root.service && ! [[ -e /dev/mapper/vcrypt-alpha-root ]]"
  held_job
  epsilon_job
  echo "# done at uptime $(up) s"
}

case ${1:-} in
  prep) W=$2; prep ;;
  job) W=$2; job ;;
  -*|"") echo "usage: $0 BUILD_DIR" >&2; exit 2 ;;
  *) host "$1" ;;
esac
