#!/bin/bash
# The guest side of bench/migration_downtime.sh: runs in guest A of
# tests/vm/pair.sh (four shared disks, vcrypt installed on both hosts).
# Prints "bench: ..." lines.
set -uo pipefail
HERE=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
SRC=$(cd -- "$HERE/.." && pwd -P)
# shellcheck source=tests/vm/pair_lib.sh
source "$SRC/tests/vm/pair_lib.sh"
ROUNDS=${VCRYPT_MIG_ROUNDS:-4}
read -r D1 D2 D3 D4 _ <<<"$VCRYPT_PAIR_DISKS"
KMS=/var/tmp/bench-kms
PORT=5696
A_URI=qemu+tcp://10.77.0.1/system
B_URI=qemu+tcp://10.77.0.2/system
die() { echo "bench: FAILED: $*"; exit 1; }
CTL=$(command -v vcryptctl) || die "no vcryptctl"
HOOK=$(readlink -f /etc/libvirt/hooks/qemu.d/vcrypt)
vc() { "$CTL" "$@"; }
bvc() { on_b "$CTL" "$@"; }
lv() { virsh -q -c qemu:///system "$@"; }
# median/min/max of the numbers on stdin, one per line
stats() { sort -n | awk '{ v[NR] = $1 } END { printf "min %.3f median %.3f max %.3f (n=%d)", v[1], (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2), v[NR], NR }'; }
median() { sort -n | awk '{ v[NR] = $1 } END { printf "%.6f", (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }

pair_wait_boot 600 >/dev/null || die "the pair did not boot"
MAKE_CERTS_EXTRA_SAN=IP:10.77.0.1 "$SRC/tests/kmip/make-certs.sh" "$KMS/certs" || die "certs"
PYKMIP_ADDRESS=10.77.0.1 PYKMIP_START_TIMEOUT=300 "$SRC/tests/kmip/pykmip-server.sh" start "$KMS" "$PORT" >/dev/null 2>&1 || die "pykmip-server"
mkdir -p /vmout/certs && cp "$KMS/certs/"{ca,client,client-key}.pem /vmout/certs/
kms=(--kms "10.77.0.1:$PORT" --ca /vmout/certs/ca.pem --cert /vmout/certs/client.pem --key /vmout/certs/client-key.pem)
vc provider add native local >/dev/null && vc provider add standard kms "${kms[@]}" >/dev/null &&
  bvc provider add standard kms "${kms[@]}" >/dev/null || die "providers"
printf 'bench-password\n' >/vmout/pw
vc provider backup local --out - --password-file /vmout/pw >/vmout/local.p12 2>/dev/null &&
  on_b bash -c "$CTL provider restore - --name local --password-file /vmout/pw </vmout/local.p12" >/dev/null || die "push"
vc vm create bnat --provider local >/dev/null && vc vm create bkms --provider kms >/dev/null &&
  vc volume create bnat d0 --device "$D1" >/dev/null && vc volume create bkms d0 --device "$D2" >/dev/null || die "volumes"
on_b bash -c "for d in $D1 $D2; do blockdev --flushbufs \$d; udevadm trigger --action=change --settle \$(readlink -f \$d); done" || die "udev on B"

domain() {  # NAME DISKS_XML
  cat >"/var/tmp/$1.xml" <<XML
<domain type='qemu'><name>$1</name><memory unit='MiB'>64</memory><vcpu>1</vcpu>
<os><type arch='x86_64' machine='pc'>hvm</type></os><features><acpi/></features>
<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>$2
<controller type='usb' model='none'/><memballoon model='none'/></devices></domain>
XML
  lv define "/var/tmp/$1.xml" >/dev/null || die "define $1"
}
plain_disk() { echo "<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none' io='native'/><source dev='$1'/><target dev='$2' bus='virtio'/></disk>"; }
domain bplain "$(plain_disk "$D3" vda)$(plain_disk "$D4" vdb)"
domain bvc ""
vc attach bnat/d0 --domain bvc >/dev/null && vc attach bkms/d0 --domain bvc >/dev/null || die "attach"
lv start bplain >/dev/null && lv start bvc >/dev/null || die "start"

# migrate DOM FROM(a|b): appends "downtime_s wall_s" to /var/tmp/DOM.times
migrate() {
  local dom=$1 from=$2 uri t0 rc=0 info d
  uri=$([[ $from == a ]] && echo "$B_URI" || echo "$A_URI")
  t0=$EPOCHREALTIME
  if [[ $from == a ]]; then
    virsh -c qemu:///system migrate --live --p2p --persistent "$dom" "$uri" >/dev/null 2>/var/tmp/err || rc=$?
    info=$(lv domjobinfo --completed "$dom")
  else
    on_b virsh -c qemu:///system migrate --live --p2p --persistent "$dom" "$uri" >/dev/null 2>/var/tmp/err || rc=$?
    info=$(on_b virsh -q -c qemu:///system domjobinfo --completed "$dom")
  fi
  ((rc == 0)) || die "migrate $dom from $from: $(cat /var/tmp/err)"
  local wall
  wall=$(awk -v s="$t0" -v e="$EPOCHREALTIME" 'BEGIN { printf "%.3f", e - s }')
  d=$(awk -F: '/^Total downtime/ { gsub(/[^0-9]/, "", $2); print $2 / 1000 }' <<<"$info")
  [[ -n $d ]] || die "no downtime in domjobinfo of $dom: $info"
  echo "$d $wall" >>"/var/tmp/$dom.times"
}
rm -f /var/tmp/bplain.times /var/tmp/bvc.times
for ((r = 1; r <= ROUNDS; r++)); do
  # Alternate which domain goes first, so neither always follows the other.
  if ((r % 2)); then order="bplain bvc"; else order="bvc bplain"; fi
  for dom in $order; do migrate "$dom" a; done
  for dom in $order; do migrate "$dom" b; done
done
pd=$(cut -d' ' -f1 /var/tmp/bplain.times | median)
vd=$(cut -d' ' -f1 /var/tmp/bvc.times | median)
pw=$(cut -d' ' -f2 /var/tmp/bplain.times | median)
vw=$(cut -d' ' -f2 /var/tmp/bvc.times | median)
echo "bench: downtime (s), two plain disks:  $(cut -d' ' -f1 /var/tmp/bplain.times | stats)"
echo "bench: downtime (s), two vcrypt disks: $(cut -d' ' -f1 /var/tmp/bvc.times | stats)"
echo "bench: downtime ratio vcrypt/plain (medians): $(awk -v a="$vd" -v b="$pd" 'BEGIN { printf "%.3f", a / b }') (goal <= 1.05)"
echo "bench: virsh migrate wall (s), plain: $(cut -d' ' -f2 /var/tmp/bplain.times | stats)"
echo "bench: virsh migrate wall (s), vcrypt: $(cut -d' ' -f2 /var/tmp/bvc.times | stats)"
echo "bench: wall ratio vcrypt/plain (medians): $(awk -v a="$vw" -v b="$pw" 'BEGIN { printf "%.3f", a / b }')"

# 2. migrate begin on B with the KEKs not cached (the domain runs on A).
lv dumpxml bvc >/vmout/bvc.xml
rm -f /vmout/check.times /vmout/noop.times
on_b bash -c "
  for i in \$(seq 1 10); do
    $CTL cache evict >/dev/null || exit 1
    t=\$EPOCHREALTIME
    $HOOK bvc migrate begin - </vmout/bvc.xml >/dev/null || exit 1
    awk -v s=\$t -v e=\$EPOCHREALTIME 'BEGIN { printf \"%.3f\\n\", (e - s) * 1000 }' >>/vmout/check.times
    t=\$EPOCHREALTIME
    $HOOK bvc start begin - </vmout/bvc.xml >/dev/null || exit 1
    awk -v s=\$t -v e=\$EPOCHREALTIME 'BEGIN { printf \"%.3f\\n\", (e - s) * 1000 }' >>/vmout/noop.times
  done" || die "the migrate begin check on B failed"
echo "bench: migrate begin check on B, KEKs not cached (ms): $(stats </vmout/check.times)"
echo "bench: a hook call that does nothing (start begin) (ms): $(stats </vmout/noop.times)"
echo "bench: check minus no-op (medians, ms): $(awk -v a="$(median </vmout/check.times)" -v b="$(median </vmout/noop.times)" 'BEGIN { printf "%.1f", a - b }')"
"$SRC/tests/kmip/pykmip-server.sh" kill "$KMS" >/dev/null 2>&1 || true
