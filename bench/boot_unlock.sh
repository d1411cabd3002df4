#!/bin/bash
# Benchmark: boot unlock of many volumes (issue: "Boot unlock of 64 volumes
# across 16 VMs: time to all mapped, and KMS messages sent, against 64
# sequential `vcryptctl open`s in the same run").
#
#   bench/boot_unlock.sh [BUILD_DIR] [ROUNDS]
#
# BUILD_DIR (default build/) is installed as a packager would
# (`DESTDIR=... cmake --install BUILD_DIR`, nothing is rebuilt) into a guest
# that boots systemd as PID 1 (tests/vm/run.sh --systemd), so the real
# udev rule (90-vcrypt.rules), unlock units (vcrypt-unlock[-net]@.service),
# the socket-activated vcryptd.service and its sandbox do the work.
# In that one guest boot, for each provider (standard: a pykmip-server on
# 127.0.0.1 in the guest; native):
#   setup: 16 VMs x 4 disks = 64 volumes, each a block device: a loop device
#     (/dev/loopN, fixed N) over a 17 MiB slice (losetup --offset
#     --sizelimit) of one virtio disk per provider (a sparse image file in
#     the work directory: host disk, not guest RAM; loop devices over files
#     on the 9p share are ~40x slower to write);
#   then ROUNDS (default 1) times:
#   (a) boot: every unlock unit stopped (closes the volumes), every loop
#       device detached, vcryptd.service stopped (cold KEK cache, fresh TLS;
#       vcryptd.socket stays, as at boot), page cache dropped; udev's event
#       queue held while the 64 loop devices are attached again (same slices
#       on the same /dev/loopN: vcryptd finds them by inventory path), then
#       released, as at coldplug. Timed: release -> all 64
#       /dev/mapper/vcrypt-* exist (udev -> probe -> device unit ->
#       vcrypt-unlock*@VM-DISK.service -> vcryptd, socket-activated, -> open);
#   (b) baseline: volumes closed, the unlock templates masked (--runtime:
#       an inactive unlock unit is started again by its device's next udev
#       "change" event, which every open causes), vcryptd.service stopped
#       again, caches dropped; 64 sequential `vcryptctl open VM/DISK` on the
#       same loop devices. Timed the same way.
#   KMS messages and TLS connections are `vcryptctl --json provider show`'s
#   kmip_messages_sent / tls_connections_made of the vcryptd process that
#   the phase started (so: that phase's totals, DiscoverVersions included).
# It prints per-round figures, then per provider the medians and the ratios
# boot/sequential. Everything runs under QEMU TCG: absolute times mean
# nothing, compare the ratios (same run, same guest). The "#" lines under
# each phase help read them: when vcryptd was ready and the first volume
# mapped, how often the unlock units retried, how busy the guest's CPUs
# were and which cgroups used them (udev with its probes, the unlock units
# with their `vcryptctl unlock`, vcryptd, the KMS, this script with the
# sequential vcryptctl calls, systemd). Under TCG every exec costs ~0.3-1 s
# of emulated CPU, so the boot path (a probe per udev event, a process per
# unit; before `vcryptctl unlock`, a bash helper with ~a dozen execs per
# volume) weighs far more here than on hardware. BUILD_DIR may be an older
# build, for a before/after pair.
#
# Environment:
#   VCRYPT_BENCH_PROVIDERS  "standard native" (default) or one of them
#   VCRYPT_BENCH_VMS        VMs per provider (default 16)
#   VCRYPT_BENCH_DISKS      disks per VM (default 4)
#   VCRYPT_BENCH_MEM        guest memory in MB (default 3072)
#   VCRYPT_BENCH_TIMEOUT    guest timeout in s (default: computed from the above)
#   VCRYPT_BENCH_WAIT       per-phase bound on "all mapped" in s (default 900)
#   VCRYPT_BENCH_KEEP=1     keep the work directory (images, journal, logs)
# The unlock units' retry deadline and start timeout are raised by a drop-in
# in the guest (VCRYPT_UNLOCK_DEADLINE=VCRYPT_BENCH_WAIT): under TCG a storm
# of 64 opens can outlast the defaults (30 s native, 90 s KMS), and the
# benchmark measures the work, not the timeouts.
#
# Exit status: 0 when every phase mapped every volume; 1 on a failure (a
# message says which, and the journal of the vcrypt units is shown); 2
# usage; 124 the guest timed out; 125 the guest died.
#
# Host side needs cmake, the VM harness (tests/vm/prepare.sh installs qemu
# etc.) and python3-pykmip (/usr/bin/pykmip-server) for the standard
# provider. The disk images use ~16 MiB of host disk per volume (the LUKS2
# keyslot area is filled with random data at format), removed at the end.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SELF=$ROOT/bench/boot_unlock.sh
KMIP=$ROOT/tests/kmip

die() {
  echo "boot_unlock.sh: error: $*" >&2
  exit 1
}
# Nanoseconds since the epoch in NOW, without a fork (bash 5 EPOCHREALTIME:
# the guest is CPU-bound, the clock must not compete with what it measures).
tick() { NOW=${EPOCHREALTIME/[.,]/}000; }
secs() { awk -v n="$1" 'BEGIN {printf "%.1f", n/1e9}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (b == 0) print "n/a"; else printf "%.2f", a/b}'; }
median() { sort -n | awk '{a[NR]=$1} END {if (NR == 0) print 0; else print (NR%2 ? a[(NR+1)/2] : int((a[NR/2]+a[NR/2+1])/2))}'; }

# ===================================================================== host
host() {
  local build=${1:-$ROOT/build} rounds=${2:-1}
  [[ $rounds =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 [BUILD_DIR] [ROUNDS]" >&2; exit 2; }
  build=$(cd "$build" 2>/dev/null && pwd) || { echo "boot_unlock.sh: no build directory ${1:-}" >&2; exit 2; }
  [[ -x $build/cli/vcryptctl && -x $build/daemon/vcryptd ]] ||
    { echo "boot_unlock.sh: $build has no vcryptctl/vcryptd (build it first)" >&2; exit 2; }
  local providers=${VCRYPT_BENCH_PROVIDERS:-standard native}
  local vms=${VCRYPT_BENCH_VMS:-16} disks=${VCRYPT_BENCH_DISKS:-4}
  local wait=${VCRYPT_BENCH_WAIT:-900} mem=${VCRYPT_BENCH_MEM:-3072}
  local p n=0
  for p in $providers; do
    [[ $p == standard || $p == native ]] || { echo "boot_unlock.sh: unknown provider type '$p'" >&2; exit 2; }
    n=$((n + 1))
  done
  ((n > 0)) || { echo "boot_unlock.sh: VCRYPT_BENCH_PROVIDERS is empty" >&2; exit 2; }
  [[ $vms =~ ^[1-9][0-9]?$ && $disks =~ ^[1-9]$ ]] ||
    { echo "boot_unlock.sh: VCRYPT_BENCH_VMS must be 1-99, VCRYPT_BENCH_DISKS 1-9" >&2; exit 2; }
  [[ $wait =~ ^[1-9][0-9]*$ && $mem =~ ^[1-9][0-9]*$ ]] ||
    { echo "boot_unlock.sh: VCRYPT_BENCH_WAIT and VCRYPT_BENCH_MEM must be numbers" >&2; exit 2; }
  if [[ " $providers " == *" standard "* && ! -x /usr/bin/pykmip-server ]]; then
    echo "boot_unlock.sh: /usr/bin/pykmip-server not found (apt-get install python3-pykmip)" >&2
    exit 2
  fi
  local vols=$((vms * disks))
  # Boot (2-3 min on a loaded host) + KMS start + setup + 2 phases a round:
  # generous (a busy 2-core host is several times slower than an idle
  # one); the guest is killed only when stuck.
  local timeout=${VCRYPT_BENCH_TIMEOUT:-$((900 + n * vols * 20 + n * rounds * vols * 20))}

  local W
  W=$(mktemp -d /var/tmp/vcrypt-bootbench.XXXXXX) || die "mktemp failed"
  if [[ ${VCRYPT_BENCH_KEEP:-0} == 1 ]]; then
    echo "# work directory kept: $W"
  else
    trap 'rm -rf "$W"' EXIT
  fi
  DESTDIR=$W/stage cmake --install "$build" >"$W/install.log" 2>&1 ||
    { cat "$W/install.log" >&2; die "cmake --install $build failed"; }
  local ctl
  ctl=$(cd "$W/stage" && find . -path '*/sbin/vcryptctl' | head -n1)
  [[ -n $ctl ]] || die "no sbin/vcryptctl in the install of $build"
  {
    printf 'BENCH_PROVIDERS=%q\n' "$providers"
    printf 'BENCH_VMS=%q\nBENCH_DISKS=%q\nBENCH_ROUNDS=%q\nBENCH_WAIT=%q\n' "$vms" "$disks" "$rounds" "$wait"
    printf 'VCTL=%q\n' "${ctl#.}"
  } >"$W/params"
  # --setup file: runs in the guest's overlay root before systemd starts.
  cat >"$W/setup.sh" <<EOF
set -e
W=$W
source "\$W/params"
# The project as cmake --install laid it out; tar, not cp: /lib is a
# symlink to usr/lib on a merged-/usr Debian.
tar -C "\$W/stage" -cf - . | tar -C / -xf - --keep-directory-symlink --no-same-owner
mkdir -p -m 0700 /var/lib/vcrypt
systemctl enable vcryptd.socket >/dev/null 2>&1
for t in vcrypt-unlock@.service vcrypt-unlock-net@.service; do
  mkdir -p "/etc/systemd/system/\$t.d"
  printf '[Service]\nEnvironment=VCRYPT_UNLOCK_DEADLINE=%s\nTimeoutStartSec=%s\n' \
    "\$BENCH_WAIT" "\$((BENCH_WAIT + 60))" >"/etc/systemd/system/\$t.d/bench.conf"
done
EOF

  echo "# boot unlock benchmark: $build, providers: $providers, $vms VMs x $disks disks, $rounds round(s); guest timeout ${timeout}s"
  # One virtio disk per provider: vda, vdb in the order of the list. The
  # first 8 MiB stay empty, so blkid finds nothing on the disk itself.
  local diskargs=()
  for p in $providers; do
    truncate -s $((8 + vols * 18))M "$W/$p.disk" || die "cannot create $W/$p.disk"
    diskargs+=(--disk "$W/$p.disk")
  done
  local t0=$SECONDS rc=0
  "$ROOT/tests/vm/run.sh" --systemd --mem "$mem" --timeout "$timeout" --outdir "$W" \
    "${diskargs[@]}" --setup "$W/setup.sh" -- bash "$SELF" --guest "$W" || rc=$?
  case $rc in
    0) ;;
    124) echo "boot_unlock.sh: error: the guest did not finish within ${timeout}s (VCRYPT_BENCH_TIMEOUT)" >&2 ;;
    125) echo "boot_unlock.sh: error: the guest died before reporting a status" >&2 ;;
    *) echo "boot_unlock.sh: error: the benchmark failed in the guest (status $rc)" >&2 ;;
  esac
  if ((rc != 0)) && [[ -s $W/journal.txt ]]; then
    echo "# --- journal of the guest (vcrypt), last lines ---" >&2
    grep -E 'vcrypt' "$W/journal.txt" | tail -n 60 >&2
  fi
  echo "# disk images: $(du -ch --apparent-size "$W"/*.disk | tail -n1 | cut -f1) apparent, $(du -ch "$W"/*.disk | tail -n1 | cut -f1) on the host's disk"
  echo "# whole run (install, guest boot, setup, all phases): $((SECONDS - t0)) s wall"
  ((rc == 0 || rc == 124 || rc == 125)) || rc=1
  exit "$rc"
}

# ==================================================================== guest
# Runs as the harness's job service under systemd, as root.
W=
VOLS=()     # VM/DISK
LOOPS=()    # /dev/loopN of VOLS[i]
OFFS=()     # offset in MiB of VOLS[i] on $DISK
MAPS=()     # /dev/mapper path of VOLS[i]
DISK=
PNAME=

vc() { "$VCTL" "$@"; }
# Unlock units that are not inactive (active, activating, failed...).
unlock_units() {
  systemctl list-units --all --plain --no-legend --type=service \
    'vcrypt-unlock@*' 'vcrypt-unlock-net@*' | awk '$3 != "inactive" {print $1}'
}
# Runs systemctl quietly (its warnings about socket activation), showing
# what it said only when it fails.
sctl() {
  local out
  out=$(timeout 600 systemctl "$@" 2>&1) || { echo "$out"; return 1; }
}
up() { cut -d' ' -f1 /proc/uptime; }
log() { echo "# [$(up) s] $*"; }
count_mapped() {
  local m c=0
  for m in "${MAPS[@]}"; do [[ -b $m ]] && c=$((c + 1)); done
  echo "$c"
}
# Diagnostics then exit 1.
gdie() {
  echo "boot_unlock.sh: error: $*"
  echo "# mapped: $(count_mapped)/${#VOLS[@]}; unlock units by state:"
  systemctl list-units --all --plain --no-legend --type=service 'vcrypt-unlock*' |
    awk '{print $3 "/" $4}' | sort | uniq -c
  systemctl --no-pager status vcryptd.service 2>&1 | head -n 15
  exit 1
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }

# --- where the guest's CPU time goes during a phase (cgroup v2 cpu.stat) ----
# The guest is CPU-bound under TCG: the split shows what the boot path
# costs (probes in udev, unlock helpers, vcryptd, the KMS, systemd itself).
CG_NAMES=(udev unlock-units vcryptd kms bench-job systemd)
cg_usec() {  # cgroup paths relative to /sys/fs/cgroup; prints the sum
  local sum=0 f k v
  for f in "$@"; do
    [[ -r /sys/fs/cgroup/$f/cpu.stat ]] || continue
    while read -r k v; do
      [[ $k == usage_usec ]] && { sum=$((sum + v)); break; }
    done <"/sys/fs/cgroup/$f/cpu.stat"
  done
  echo "$sum"
}
cg_all() {  # one number per CG_NAMES entry, then busy and total jiffies
  cg_usec system.slice/systemd-udevd.service
  cg_usec 'system.slice/system-vcrypt\x2dunlock.slice' 'system.slice/system-vcrypt\x2dunlock\x2dnet.slice'
  cg_usec system.slice/vcryptd.service
  cg_usec system.slice/vcrypt-bench-kms.scope
  cg_usec "$JOB_CG"
  cg_usec init.scope
  local _cpu user nice sys idle iowait irq softirq steal
  read -r _cpu user nice sys idle iowait irq softirq steal _ </proc/stat
  echo $((user + nice + sys + irq + softirq + steal))
  echo $((user + nice + sys + idle + iowait + irq + softirq + steal))
}
cpu_mark() { mapfile -t CPU0 < <(cg_all); }
# Prints "guest CPU busy N%; CPU s: udev X, ...". Cgroups that did not exist
# at the mark (vcryptd.service after a stop, the unit slices) count from 0;
# bench-job = this script (its polling, losetup; the vcryptctl processes of
# the sequential phase).
cpu_report() {
  local now_=() i out n=${#CG_NAMES[@]}
  mapfile -t now_ < <(cg_all)
  out="guest CPU busy $(awk -v b=$((now_[n] - CPU0[n])) -v t=$((now_[n + 1] - CPU0[n + 1])) 'BEGIN {printf "%d", t ? 100 * b / t : 0}')%; CPU s:"
  for ((i = 0; i < n; i++)); do
    local d=$((now_[i] - CPU0[i]))
    ((d >= 0)) || d=${now_[i]}
    out+=" ${CG_NAMES[$i]} $(awk -v u="$d" 'BEGIN {printf "%.1f", u/1e6}')"
    [[ $i -lt $((n - 1)) ]] && out+=","
  done
  echo "#   $out"
}

# The unlock templates are masked (runtime) except during the boot phase:
# systemd starts a device's SYSTEMD_WANTS again at its next "change" event
# when the unit is inactive, and opening a volume makes one on its backing
# device (libcryptsetup opens it read-write). Unmasked, the units would
# start during the setup and the sequential phase and compete with it.
units_mask() {
  sctl mask --runtime vcrypt-unlock@.service vcrypt-unlock-net@.service ||
    gdie "cannot mask the unlock units"
}
units_unmask() {
  sctl unmask --runtime vcrypt-unlock@.service vcrypt-unlock-net@.service ||
    gdie "cannot unmask the unlock units"
  sctl daemon-reload || gdie "systemctl daemon-reload failed"
}

stop_vcryptd() {
  sctl stop vcryptd.service || gdie "cannot stop vcryptd.service"
  [[ $(systemctl show -P ActiveState vcryptd.service) != active ]] || gdie "vcryptd.service still active"
  [[ $(systemctl show -P ActiveState vcryptd.socket) == active ]] || gdie "vcryptd.socket is not listening"
}

# Every volume of this provider closed, no unlock unit left active.
close_all() {
  local units=() i
  mapfile -t units < <(unlock_units)
  if ((${#units[@]})); then
    # ExecStop closes what the unit opened.
    sctl stop "${units[@]}" || gdie "stopping the unlock units failed"
    systemctl reset-failed 'vcrypt-unlock*' 2>/dev/null || true
  fi
  for i in "${!VOLS[@]}"; do
    if [[ -e ${MAPS[$i]} ]]; then
      vc close "${VOLS[$i]}" >/dev/null || gdie "cannot close ${VOLS[$i]}"
    fi
  done
  (($(count_mapped) == 0)) || gdie "volumes still mapped after closing"
}

attach() {  # i
  losetup --offset $((OFFS[$1] << 20)) --sizelimit $((17 << 20)) "${LOOPS[$1]}" "$DISK" ||
    gdie "losetup ${LOOPS[$1]} on $DISK at ${OFFS[$1]} MiB failed"
}
detach_all() {
  local i
  for i in "${!LOOPS[@]}"; do
    [[ -e /sys/block/${LOOPS[$i]#/dev/}/loop/backing_file ]] || continue
    losetup -d "${LOOPS[$i]}" || gdie "cannot detach ${LOOPS[$i]}"
  done
  udevadm settle --timeout=300 || gdie "udevadm settle timed out"
  for i in "${!LOOPS[@]}"; do
    [[ ! -e /sys/block/${LOOPS[$i]#/dev/}/loop/backing_file ]] || gdie "${LOOPS[$i]} still attached"
  done
}

# Waits until every volume is mapped (only shell builtins in the loop: it
# shares the 2 vCPUs with the work it measures); sets T_FIRST (first
# mapping seen) and T_DONE.
wait_all_mapped() {  # t0
  local end=$(($1 + BENCH_WAIT * 1000000000)) m all any
  T_FIRST=
  while :; do
    all=1 any=0
    for m in "${MAPS[@]}"; do
      if [[ -b $m ]]; then
        any=1
      else
        all=0
        [[ -z $T_FIRST ]] || break
      fi
    done
    tick
    ((any)) && [[ -z $T_FIRST ]] && T_FIRST=$NOW
    ((all)) && break
    ((NOW < end)) || gdie "not all volumes mapped after ${BENCH_WAIT}s (VCRYPT_BENCH_WAIT)"
    read -r -t 0.2 -u "$SLEEP_FD" _ || true   # sleep 0.2, as a builtin
  done
  T_DONE=$NOW
}

# Seconds from uptime $1 (s, as /proc/uptime) to vcryptd.service being
# ready (READY=1), by systemd's monotonic clock (the same as uptime here).
vcryptd_ready_after() {
  local us
  us=$(systemctl show -P ActiveEnterTimestampMonotonic vcryptd.service)
  awk -v u="$us" -v t="$1" 'BEGIN {printf "%.1f", u/1e6 - t}'
}

# Sets MSGS and CONNS from the provider's counters (standard), or "-".
counters() {
  MSGS=- CONNS=-
  [[ $PTYPE == standard ]] || return 0
  local j
  j=$(vc --json provider show "$PNAME") || gdie "provider show $PNAME failed"
  MSGS=$(/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["kmip_messages_sent"])' <<<"$j") ||
    gdie "no kmip_messages_sent in: $j"
  CONNS=$(/usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["tls_connections_made"])' <<<"$j") ||
    gdie "no tls_connections_made in: $j"
}

# vcryptd must have been started inside the phase (fresh KEK cache and
# counters): its start is after $1 (ns since the epoch).
check_fresh_vcryptd() {
  local started
  started=$(systemctl show -P ExecMainStartTimestamp --timestamp=unix vcryptd.service | tr -d @)
  if ! [[ $started =~ ^[0-9]+$ ]] || ((started * 1000000000 + 999999999 < $1)); then
    gdie "vcryptd.service was not (re)started during the phase (started: '$started')"
  fi
}

phase_boot() {  # round
  log "round $1, $PTYPE: boot phase"
  close_all
  detach_all
  units_unmask
  stop_vcryptd
  drop_caches
  local since
  since=$(date +%s)
  # As at coldplug: the devices are all there when udev starts handling
  # their events.
  udevadm control --stop-exec-queue || gdie "udevadm control --stop-exec-queue failed"
  local ta i
  tick; ta=$NOW
  for i in "${!LOOPS[@]}"; do attach "$i"; done
  local t0 up0
  cpu_mark
  tick; t0=$NOW
  read -r up0 _ </proc/uptime
  udevadm control --start-exec-queue || gdie "udevadm control --start-exec-queue failed"
  wait_all_mapped "$t0"
  local t=$((T_DONE - t0))
  cpu_report >"$R/cpu"
  check_fresh_vcryptd "$t0"
  counters
  # Units still running (mapping done, unit not yet) are fine; failed ones
  # are not.
  local failed retries
  failed=$(systemctl list-units --failed --plain --no-legend 'vcrypt-unlock*' | wc -l)
  ((failed == 0)) || gdie "$failed unlock unit(s) failed"
  retries=$(journalctl --since "@$since" --no-pager -q -o cat 2>/dev/null | grep -cE '(vcrypt-unlock|vcryptctl unlock): .*retrying' || true)
  printf 'round %d  %-8s boot (udev+systemd, parallel): %d volumes mapped in %6s s, KMS messages %s, TLS connections %s\n' \
    "$1" "$PTYPE" "${#VOLS[@]}" "$(secs "$t")" "$MSGS" "$CONNS"
  printf '#   vcryptd ready after %s s, first volume mapped after %s s; loop devices attached in %s s before the clock started; unlock retries: %s\n' \
    "$(vcryptd_ready_after "$up0")" "$(secs $((T_FIRST - t0)))" "$(secs $((t0 - ta)))" "$retries"
  cat "$R/cpu"
  echo "$t $MSGS $CONNS" >>"$R/$PTYPE.boot"
}

phase_seq() {  # round
  log "round $1, $PTYPE: sequential phase"
  close_all
  local i
  for i in "${!LOOPS[@]}"; do
    [[ -e /sys/block/${LOOPS[$i]#/dev/}/loop/backing_file ]] || gdie "${LOOPS[$i]} not attached before the sequential phase"
  done
  units_mask
  stop_vcryptd
  drop_caches
  local v t0 up0
  cpu_mark
  tick; t0=$NOW
  read -r up0 _ </proc/uptime
  T_FIRST=
  for v in "${VOLS[@]}"; do
    vc open "$v" >/dev/null || gdie "vcryptctl open $v failed"
    [[ -n $T_FIRST ]] || { tick; T_FIRST=$NOW; }
  done
  tick; T_DONE=$NOW
  local t=$((T_DONE - t0))
  cpu_report >"$R/cpu"
  (($(count_mapped) == ${#VOLS[@]})) || gdie "not all volumes mapped after the sequential opens"
  check_fresh_vcryptd "$t0"
  counters
  local active
  active=$(unlock_units | wc -l)
  ((active == 0)) || gdie "$active unlock unit(s) ran during the sequential phase"
  printf 'round %d  %-8s sequential vcryptctl open x%d:      %d volumes mapped in %6s s, KMS messages %s, TLS connections %s\n' \
    "$1" "$PTYPE" "${#VOLS[@]}" "${#VOLS[@]}" "$(secs "$t")" "$MSGS" "$CONNS"
  printf '#   vcryptd ready after %s s, first volume mapped after %s s\n' \
    "$(vcryptd_ready_after "$up0")" "$(secs $((T_FIRST - t0)))"
  cat "$R/cpu"
  echo "$t $MSGS $CONNS" >>"$R/$PTYPE.seq"
}

setup_provider() {  # type loop-base disk
  local base=$2 vmp v d i=0 n t0
  PTYPE=$1 DISK=$3
  t0=$SECONDS
  [[ -b $DISK ]] || gdie "no disk $DISK for the $PTYPE volumes"
  if [[ $PTYPE == standard ]]; then
    PNAME=kms vmp=s
    local K=/tmp/vcrypt-bootbench-kms
    rm -rf "$K"
    "$KMIP/make-certs.sh" "$K/certs" >/dev/null || gdie "make-certs.sh failed"
    # In a scope of its own, so that its CPU time is counted apart.
    systemd-run --quiet --scope --unit=vcrypt-bench-kms \
      "$KMIP/pykmip-server.sh" start "$K" 5696 >/dev/null || gdie "cannot start pykmip-server"
    KMS_DIR=$K
    log "$PTYPE: pykmip-server up on 127.0.0.1:5696"
    vc provider add standard "$PNAME" --kms 127.0.0.1:5696 --ca "$K/certs/ca.pem" \
      --cert "$K/certs/client.pem" --key "$K/certs/client-key.pem" >/dev/null ||
      gdie "provider add standard failed"
  else
    PNAME=host vmp=n
    vc provider add native "$PNAME" >/dev/null || gdie "provider add native failed"
  fi
  VOLS=() LOOPS=() OFFS=() MAPS=()
  for ((v = 0; v < BENCH_VMS; v++)); do
    for ((d = 0; d < BENCH_DISKS; d++)); do
      VOLS+=("$(printf '%s%02d/d%d' "$vmp" "$v" "$d")")
      MAPS+=("$(printf '/dev/mapper/vcrypt-%s%02d-d%d' "$vmp" "$v" "$d")")
      n=$((base + i))
      LOOPS+=("/dev/loop$n")
      OFFS+=($((8 + i * 18)))
      [[ ! -e /sys/block/loop$n/loop/backing_file ]] || gdie "/dev/loop$n is already in use"
      i=$((i + 1))
    done
  done
  # No auto-unlock storm while the volumes are made.
  units_mask
  for ((v = 0; v < BENCH_VMS; v++)); do
    vc vm create "$(printf '%s%02d' "$vmp" "$v")" --provider "$PNAME" >/dev/null || gdie "vm create failed"
  done
  log "$PTYPE: provider '$PNAME' and $BENCH_VMS VMs created"
  for i in "${!VOLS[@]}"; do
    attach "$i"
    vc volume create "${VOLS[$i]%/*}" "${VOLS[$i]#*/}" --device "${LOOPS[$i]}" >/dev/null ||
      gdie "volume create ${VOLS[$i]} on ${LOOPS[$i]} failed"
  done
  udevadm settle --timeout=300 || gdie "udevadm settle timed out"
  close_all
  detach_all
  log "$PTYPE: ${#VOLS[@]} volumes on ${LOOPS[0]}..${LOOPS[-1]} (slices of $DISK) set up in $((SECONDS - t0)) s"
}

teardown_provider() {
  journalctl -b --no-pager -o short-monotonic >"$W/journal.txt" 2>&1
  units_mask
  close_all
  detach_all
  if [[ -n ${KMS_DIR:-} ]]; then
    "$KMIP/pykmip-server.sh" kill "$KMS_DIR" >/dev/null 2>&1 || true
    KMS_DIR=
  fi
}

summary() {  # type
  local p=$1 bt bm bc st sm sc
  [[ -s $R/$p.boot && -s $R/$p.seq ]] || return 0
  bt=$(cut -d' ' -f1 "$R/$p.boot" | median)
  st=$(cut -d' ' -f1 "$R/$p.seq" | median)
  echo "$p provider, ${#VOLS[@]} volumes across $BENCH_VMS VMs (median of $BENCH_ROUNDS round(s)):"
  if [[ $p == standard ]]; then
    bm=$(cut -d' ' -f2 "$R/$p.boot" | median); bc=$(cut -d' ' -f3 "$R/$p.boot" | median)
    sm=$(cut -d' ' -f2 "$R/$p.seq" | median); sc=$(cut -d' ' -f3 "$R/$p.seq" | median)
    printf '  boot unlock (udev+systemd, parallel): %d volumes mapped in %6s s, KMS messages %s, TLS connections %s\n' "${#VOLS[@]}" "$(secs "$bt")" "$bm" "$bc"
    printf '  sequential vcryptctl open x%d:        %d volumes mapped in %6s s, KMS messages %s, TLS connections %s\n' "${#VOLS[@]}" "${#VOLS[@]}" "$(secs "$st")" "$sm" "$sc"
    printf '  ratio boot/sequential: time %s, KMS messages %s, TLS connections %s\n' "$(ratio "$bt" "$st")" "$(ratio "$bm" "$sm")" "$(ratio "$bc" "$sc")"
  else
    printf '  boot unlock (udev+systemd, parallel): %d volumes mapped in %6s s (no KMS)\n' "${#VOLS[@]}" "$(secs "$bt")"
    printf '  sequential vcryptctl open x%d:        %d volumes mapped in %6s s\n' "${#VOLS[@]}" "${#VOLS[@]}" "$(secs "$st")"
    printf '  ratio boot/sequential: time %s\n' "$(ratio "$bt" "$st")"
  fi
}

guest() {
  W=$1
  # shellcheck source=/dev/null
  source "$W/params" || { echo "boot_unlock.sh: cannot read $W/params"; exit 1; }
  R=$(mktemp -d /tmp/vcrypt-bootbench-results.XXXXXX)
  JOB_CG=$(sed -n 's|^0::/||p' /proc/self/cgroup)
  mkfifo "$R/sleep" || gdie "cannot make $R/sleep"
  exec {SLEEP_FD}<>"$R/sleep"
  trap 'journalctl -b --no-pager -o short-monotonic >"$W/journal.txt" 2>&1; [[ -n ${KMS_DIR:-} ]] && "$KMIP/pykmip-server.sh" kill "$KMS_DIR" >/dev/null 2>&1' EXIT
  [[ -x $VCTL ]] || gdie "$VCTL not installed in the guest"
  [[ -e /dev/mapper/control ]] || gdie "no device-mapper in the guest"
  timeout 300 systemctl is-system-running --wait >/dev/null 2>&1 || true
  echo "# guest: systemd $(systemctl --version | head -n1 | cut -d' ' -f2), kernel $(uname -r), $(nproc) vCPUs, job started at uptime $(cut -d' ' -f1 /proc/uptime) s"
  echo "# QEMU TCG (emulated CPU): absolute times mean nothing; compare the ratios"
  local p base=0 r disks=(/dev/vda /dev/vdb) k=0
  for p in $BENCH_PROVIDERS; do
    setup_provider "$p" "$base" "${disks[$k]}"
    k=$((k + 1))
    for ((r = 1; r <= BENCH_ROUNDS; r++)); do
      phase_boot "$r"
      phase_seq "$r"
    done
    summary "$p"
    teardown_provider
    base=$((base + BENCH_VMS * BENCH_DISKS))
  done
  log "done"
}

case ${1:-} in
  --guest) guest "$2" ;;
  -h|--help) sed -n '2,/^set -uo/p' "$0" | sed '$d'; exit 0 ;;
  *) host "$@" ;;
esac
