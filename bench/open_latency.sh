#!/bin/bash
# Benchmark: latency of opening vcrypt volumes (issues: foundation, 14 §4).
#
#  1. median latency of `vcryptctl open` with the KEK cached, against
#     `cryptsetup open --volume-key-file` of the SAME volume, alternating,
#     same run -> ratio (goal <= 1.1)
#  2. opening 32 volumes (4 VMs x 8 disks) sequentially vs concurrently
#     (KEK cache cold each time), native provider -> times and ratio
#  3. the same with a standard provider: a real pykmip-server on loopback
#     (tests/kmip/pykmip-server.sh, as the integration tests run it) holds
#     each VM's KEK, so a cold cache costs one KMS fetch per VM -> times,
#     ratio (goal <= 0.5: the fetches of different VMs overlap) and, from
#     the KMS's own log, the KMIP messages, Get operations and new TLS
#     sessions of each run.
#
# What limits the concurrent runs: every libcryptsetup/libdevmapper call of
# vcryptd (header reads, mapping lookups, the activation and its wait for
# udev) is made under one process-wide lock (dmtools/library.cc), so the
# 32 activations run one after the other however many opens arrive
# together. Concurrency overlaps only what lies outside that lock:
# vcryptctl's process start, the request itself and the KEK fetch. A native
# KEK is a local unwrap, so native's ratio shows the overlap of the first
# two alone. A KMS fetch is a round trip made under no lock that opens of
# other VMs need (only the volume's own and the KEK's, vcryptd's GetKek):
# the disks of one VM wait for the VM's one fetch, and the fetches of
# different VMs overlap (the standard provider sends those that queue up
# while one message is in flight together in the next one).
#
# Needs root and device-mapper; re-runs itself in the VM harness otherwise.
# Part 3 needs python3-pykmip (/usr/bin/pykmip-server) and a writable
# /dev/shm (the harness mounts one); the KMS's start is bounded by
# PYKMIP_START_TIMEOUT (default here 180 s). Absolute times under QEMU TCG
# mean nothing; compare the ratios.
#   bench/open_latency.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
ROUNDS=${2:-21}
if [[ $(id -u) -ne 0 ]] || ! dmsetup version >/dev/null 2>&1; then
  "$ROOT/tests/vm/prepare.sh" >/dev/null
  # Both providers' sections take a while under TCG: more than run.sh's
  # default timeout on a loaded machine.
  exec "$ROOT/tests/vm/run.sh" --timeout "${VCRYPT_VM_TIMEOUT:-2400}" -- "$0" "$BUILD" "$ROUNDS"
fi
D=$(mktemp -d /tmp/vcrypt-bench.XXXXXX)
vc() { "$BUILD/cli/vcryptctl" --socket "$D/sock" "$@"; }
"$BUILD/daemon/vcryptd" --state-dir "$D/state" --socket "$D/sock" 2>"$D/log" &
PID=$!
KMS=  # the KMS's directory once part 3 starts one
kms_server() { "$ROOT/tests/kmip/pykmip-server.sh" "$@"; }
cleanup() {
  for m in $(dmsetup ls | awk '/^(vcrypt-|bench-)/ {print $1}'); do dmsetup remove "$m" || true; done
  kill $PID 2>/dev/null; wait $PID 2>/dev/null
  # SIGKILL to its process group: a graceful PyKMIP stop takes 10-20 s.
  [[ -z $KMS ]] || kms_server kill "$KMS" >/dev/null 2>&1 || true
  rm -rf "$D"
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
for _ in $(seq "$ROUNDS"); do
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

# --- 2 and 3: 32 volumes, 4 VMs x 8 disks -----------------------------------

# VMs P1..P4 ($1 = P) with 8 file-backed disks each; the rest of the
# arguments go to `vm create`.
make_vms() {
  local p=$1 v d
  shift
  for v in 1 2 3 4; do
    vc vm create "$p$v" "$@" >/dev/null
    for d in 0 1 2 3 4 5 6 7; do
      vc volume create "$p$v" "d$d" --file "$D/$p$v-d$d.img" --size 20M >/dev/null
    done
  done
}
close_all() {  # P
  local v d
  for v in 1 2 3 4; do for d in 0 1 2 3 4 5 6 7; do vc close "$1$v/d$d" >/dev/null; done; done
}
# "MESSAGES GETS SESSIONS": the KMIP request messages, Get operations and
# TLS sessions the KMS has logged so far (PyKMIP logs each at INFO, and
# rotates its log at 1 MB: server.log.1, ...); zeros while no KMS runs.
kms_count() { cat "$KMS"/server.log* 2>/dev/null | grep -c "$1" || true; }
kms_stats() {
  if [[ -z $KMS ]]; then echo "0 0 0"; return; fi
  echo "$(kms_count 'Received request at time')" \
    "$(kms_count 'Processing operation: Get$')" "$(kms_count 'Starting session')"
}
kms_delta() {  # BEFORE AFTER (kms_stats each) -> text
  local a b
  read -r -a a <<<"$1"; read -r -a b <<<"$2"
  echo "$((b[0] - a[0])) messages ($((b[1] - a[1])) Get), $((b[2] - a[2])) new TLS sessions"
}
# CPU time the whole machine has used so far (all CPUs, not idle or
# iowait), in clock ticks.
cpu_ticks() { awk '/^cpu / {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat; }
NCPU=$(nproc)
HZ=$(getconf CLK_TCK)
# Average number of CPUs busy over NS nanoseconds that used TICKS.
busy() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN {printf "%.2f", t / hz / (n / 1e9)}'; }
# What the runs say about the machine: on NCPU CPUs a concurrent run cannot
# take less than the sequential run's CPU time / NCPU (if it does the same
# work), so the ratio has a floor of (CPUs busy in the sequential run) /
# NCPU. Under TCG the sequential run is nearly CPU-bound.
print_cpu() {
  echo "  CPUs busy (of $NCPU): sequential $(busy "$seq_cpu" "$seq_ns"), concurrent $(busy "$par_cpu" "$par_ns");" \
    "ratio floor on $NCPU CPUs $(awk -v b="$(busy "$seq_cpu" "$seq_ns")" -v n="$NCPU" 'BEGIN {printf "%.3f", b / n}')"
}
# Opens the 32 volumes of VMs P1..P4 ($1 = P) with the KEK cache cold,
# first one after the other, then all at once; sets seq_ns and par_ns, and
# seq_kms and par_kms (what the KMS logged meanwhile), and seq_cpu and
# par_cpu (the CPU ticks each used).
open32() {
  local p=$1 v d t0 t1 k0 c0 pid pids=()
  vc cache evict >/dev/null
  k0=$(kms_stats)
  c0=$(cpu_ticks)
  t0=$(now)
  for v in 1 2 3 4; do for d in 0 1 2 3 4 5 6 7; do vc open "$p$v/d$d" >/dev/null; done; done
  t1=$(now); seq_ns=$((t1 - t0))
  seq_cpu=$(($(cpu_ticks) - c0))
  seq_kms=$(kms_delta "$k0" "$(kms_stats)")
  close_all "$p"
  vc cache evict >/dev/null
  k0=$(kms_stats)
  c0=$(cpu_ticks)
  t0=$(now)
  for v in 1 2 3 4; do for d in 0 1 2 3 4 5 6 7; do vc open "$p$v/d$d" >/dev/null & pids+=($!); done; done
  for pid in "${pids[@]}"; do wait "$pid"; done
  t1=$(now); par_ns=$((t1 - t0))
  par_cpu=$(($(cpu_ticks) - c0))
  par_kms=$(kms_delta "$k0" "$(kms_stats)")
  [[ $(dmsetup ls | grep -c "^vcrypt-$p") -eq 32 ]] || { echo "not all 32 mapped" >&2; exit 1; }
  close_all "$p"
}

# 2. Native provider "bench", VMs vm1..vm4.
make_vms vm
open32 vm
echo "32 volumes (4 VMs x 8 disks), KEK cache cold:"
echo "  sequential  $(ms "$seq_ns") ms"
echo "  concurrent  $(ms "$par_ns") ms"
echo "  ratio concurrent/sequential  $(ratio "$par_ns" "$seq_ns")"
print_cpu
# The guest's /tmp is RAM: make room for part 3's images.
rm -f "$D"/vm?-d?.img

# 3. Standard provider "kms" on a pykmip-server (fresh database), VMs
# kms1..kms4: each VM's KEK is created on the KMS by `vm create`. Started
# only now, so that it takes no CPU from parts 1 and 2.
KMS=$D/kms
kms_port=$((20000 + RANDOM % 20000))
PYKMIP_START_TIMEOUT=${PYKMIP_START_TIMEOUT:-180} kms_server start "$KMS" "$kms_port" >/dev/null
vc provider add standard kms --kms "127.0.0.1:$kms_port" --ca "$KMS/certs/ca.pem" \
  --cert "$KMS/certs/client.pem" --key "$KMS/certs/client-key.pem" >/dev/null
make_vms kms --provider kms
open32 kms
echo "32 volumes (4 VMs x 8 disks), standard provider (KMIP, pykmip-server on loopback), KEK cache cold:"
echo "  sequential  $(ms "$seq_ns") ms"
echo "  concurrent  $(ms "$par_ns") ms"
echo "  ratio concurrent/sequential  $(ratio "$par_ns" "$seq_ns")   (goal <= 0.5)"
echo "  KMS, sequential: $seq_kms"
echo "  KMS, concurrent: $par_kms"
print_cpu
