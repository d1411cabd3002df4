#!/usr/bin/env bash
# tests/vm/pair.sh - two guests of the VM harness as two "hosts", A and B,
# booted at once with systemd as PID 1 (tests/vm/run.sh --systemd), for
# tests between hosts such as live migration. See tests/vm/README.md,
# "Two hosts".
#
# usage: pair.sh [--mem MB] [--smp N] [--timeout SEC] [--outdir DIR] [--disk-size MIB]
#                [--disks N] [--setup FILE] [--env NAME]... [--no-libvirt] [--keep-disk]
#                -- COMMAND [ARGS...]
#
# Both guests get:
#   - the same raw image DIR/shared.img (sparse, created afresh) as a
#     virtio disk with serial vcrypt-shared: /dev/disk/by-id/virtio-vcrypt-shared
#     in both (cache=none, share-rw=on, file.locking=off: shared storage);
#     with --disks N, N such disks: DIR/shared.img, DIR/shared2.img, ...,
#     serials vcrypt-shared, vcrypt-shared2, ... (VCRYPT_PAIR_DISKS lists
#     their paths, space-separated);
#   - a private network between the two only (a QEMU stream netdev over a
#     unix socket): pair0 = 10.77.0.1 (A, vcrypt-a), 10.77.0.2 (B, vcrypt-b);
#   - DIR as their output share (/vmout), the channel of pair_lib.sh's on_b;
#   - libvirtd listening on TCP without authentication, set up for
#     peer-to-peer migration to the other (unless --no-libvirt).
# COMMAND runs in A (as run.sh --systemd runs it); B runs pair_agent.sh,
# which serves A's on_b requests until COMMAND ends.
#
# Exit status: COMMAND's; 124 if A's timeout expired; 125 if a guest died
# (or could not start) without a status; 2 for usage errors.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
PROG=${0##*/}

say() { printf '[pair] %s\n' "$*" >&2; }
die() { printf '[pair] %s: error: %s\n' "$PROG" "$1" >&2; exit "${2:-125}"; }
usage_die() { printf '[pair] %s: %s\n' "$PROG" "$*" >&2; usage >&2; exit 2; }
usage() {
	cat <<-'EOF'
	usage: pair.sh [options] -- COMMAND [ARGS...]
	Boots two systemd guests (A: vcrypt-a 10.77.0.1, B: vcrypt-b 10.77.0.2)
	sharing a raw disk and a private network; runs COMMAND in A, an agent for
	on_b (tests/vm/pair_lib.sh) in B; exits with COMMAND's status.
	  --mem MB          memory of each guest (default $VCRYPT_VM_MEM or 2048)
	  --smp N           virtual CPUs of each guest (default 1: two guests of
	                    2 vCPUs boot ~1.6x slower on a 2-core host)
	  --timeout SEC     kill both guests after SEC s, exit 124 (default 1200)
	  --outdir DIR      output and shared directory (/vmout in both guests);
	                    default: a temporary directory, deleted afterwards
	  --disk-size MIB   size of the shared disk DIR/shared.img (default 256)
	  --disks N         N shared disks of --disk-size each (default 1)
	  --keep-disk       keep DIR/shared*.img (deleted at exit by default)
	  --setup FILE      also run FILE as each guest's run.sh --setup file,
	                    after the harness's own (VCRYPT_PAIR_NAME tells a/b)
	  --env NAME        pass the variable NAME into both guests (repeatable)
	  --no-libvirt      leave libvirt masked (only network, disk, agent)
	Output: A's on stdout (and DIR/a.log), B's in DIR/b.log.
	EOF
}

mem=${VCRYPT_VM_MEM:-2048}
smp=1
timeout=${VCRYPT_VM_TIMEOUT:-1200}
outdir=
disk_size=256
ndisks=1
keep_disk=0
setup=
envs=()
libvirt=1
while (($#)); do
	case $1 in
		--mem) (($# >= 2)) || usage_die "--mem needs a value"; mem=$2; shift 2 ;;
		--smp) (($# >= 2)) || usage_die "--smp needs a value"; smp=$2; shift 2 ;;
		--timeout) (($# >= 2)) || usage_die "--timeout needs a value"; timeout=$2; shift 2 ;;
		--outdir) (($# >= 2)) || usage_die "--outdir needs a value"; outdir=$2; shift 2 ;;
		--disk-size) (($# >= 2)) || usage_die "--disk-size needs a value"; disk_size=$2; shift 2 ;;
		--keep-disk) keep_disk=1; shift ;;
		--disks) (($# >= 2)) || usage_die "--disks needs a value"; ndisks=$2; shift 2 ;;
		--setup) (($# >= 2)) || usage_die "--setup needs a value"; setup=$2; shift 2 ;;
		--env) (($# >= 2)) || usage_die "--env needs a value"; envs+=(--env "$2"); shift 2 ;;
		--no-libvirt) libvirt=0; shift ;;
		-h|--help) usage; exit 0 ;;
		--) shift; break ;;
		-*) usage_die "unknown option: $1" ;;
		*) break ;;
	esac
done
(($#)) || usage_die "no COMMAND given"
[[ $mem =~ ^[0-9]+$ ]] || usage_die "--mem: not a number: $mem"
[[ $smp =~ ^[1-9][0-9]?$ ]] || usage_die "--smp: not a number from 1 to 99: $smp"
[[ $timeout =~ ^[0-9]+$ && $timeout -gt 0 ]] || usage_die "--timeout: not a positive number: $timeout"
[[ $disk_size =~ ^[0-9]+$ && $disk_size -gt 0 ]] || usage_die "--disk-size: not a positive number: $disk_size"
[[ $ndisks =~ ^[1-8]$ ]] || usage_die "--disks: 1 to 8: $ndisks"
if [[ -n $setup ]]; then
	[[ -r $setup ]] || usage_die "--setup: cannot read $setup"
	setup=$(realpath -- "$setup")
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vcrypt-pair.XXXXXX")
apid=
bpid=
own_outdir=0
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	local rc=$? p
	trap - EXIT INT TERM HUP
	# run.sh kills its qemu on SIGTERM.
	for p in $apid $bpid; do kill -TERM "$p" 2>/dev/null || true; done
	for p in $apid $bpid; do wait "$p" 2>/dev/null || true; done
	rm -rf -- "$tmp"
	if ((own_outdir)); then
		rm -rf -- "$outdir"
	elif ((!keep_disk)) && [[ -n $outdir ]]; then
		rm -f -- "$outdir"/shared*.img
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'say "interrupted, killing the guests"; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

if [[ -z $outdir ]]; then
	outdir=$(mktemp -d "${TMPDIR:-/tmp}/vcrypt-pair-out.XXXXXX")
	own_outdir=1
fi
mkdir -p -- "$outdir" || die "cannot create --outdir $outdir" 2
outdir=$(cd -- "$outdir" && pwd -P)
# Stale channel files of an earlier run would confuse the agent and on_b.
rm -rf -- "$outdir/rpc" "$outdir"/shared*.img "$outdir/a.log" "$outdir/b.log"
mkdir -p "$outdir/rpc"

disk_args=()
guest_disks=
for ((i = 1; i <= ndisks; i++)); do
	sfx=$([[ $i == 1 ]] || echo "$i")
	img=$outdir/shared$sfx.img
	truncate -s "${disk_size}M" "$img" || die "cannot create $img"
	disk_args+=(
		--qemu-arg -drive
		--qemu-arg "file=$(printf '%s' "${img//,/,,}"),format=raw,if=none,id=pairdisk$i,cache=none,file.locking=off"
		--qemu-arg -device --qemu-arg "virtio-blk-pci,drive=pairdisk$i,share-rw=on,serial=vcrypt-shared$sfx"
	)
	guest_disks+="${guest_disks:+ }/dev/disk/by-id/virtio-vcrypt-shared$sfx"
done
sock=$tmp/net.sock  # short: a unix socket path has at most 107 bytes

# The harness's setup, then the caller's.
{
	printf 'source %q || exit 1\n' "$SCRIPT_DIR/pair_guest_setup.sh"
	[[ -z $setup ]] || printf 'source %q || exit 1\n' "$setup"
} >"$tmp/setup.sh"

qe() { printf '%s' "${1//,/,,}"; }  # a comma in a qemu option value is written as two

# guest NAME IP PEER_IP MAC UUID NETDEV_OPTS -- COMMAND...: starts run.sh in
# the background; its pid in $guest_pid.
guest() {
	local name=$1 ip=$2 peer=$3 mac=$4 uuid=$5 netdev=$6
	shift 7
	local args=(
		--systemd --mem "$mem" --smp "$smp" --timeout "$timeout" --outdir "$outdir"
		--setup "$tmp/setup.sh" ${envs[@]+"${envs[@]}"}
		--qemu-arg -uuid --qemu-arg "$uuid"
		--qemu-arg -netdev --qemu-arg "stream,id=pairnet,$netdev,addr.type=unix,addr.path=$(qe "$sock")"
		--qemu-arg -device --qemu-arg "virtio-net-pci,netdev=pairnet,mac=$mac"
		"${disk_args[@]}"
	)
	VCRYPT_PAIR_NAME=$name VCRYPT_PAIR_SELF_IP=$ip VCRYPT_PAIR_PEER_IP=$peer \
		VCRYPT_PAIR_MAC=$mac VCRYPT_PAIR_UUID=$uuid VCRYPT_PAIR_LIBVIRT=$libvirt \
		VCRYPT_PAIR_DIR=/vmout VCRYPT_PAIR_DISK=/dev/disk/by-id/virtio-vcrypt-shared \
		VCRYPT_PAIR_DISKS=$guest_disks \
		"$SCRIPT_DIR/run.sh" "${args[@]}" -- "$@" &
	guest_pid=$!
}

start=$SECONDS
# A listens on the socket, B connects: A first.
guest a 10.77.0.1 10.77.0.2 52:54:00:77:00:01 7663a000-0000-4000-8000-00000000000a \
	server=on -- "$@" > >(tee "$outdir/a.log")
apid=$guest_pid
for _ in $(seq 1 300); do
	[[ -S $sock ]] && break
	kill -0 "$apid" 2>/dev/null || break
	sleep 0.1
done
[[ -S $sock ]] || die "guest A's qemu did not create $sock (see the messages above)"
guest b 10.77.0.2 10.77.0.1 52:54:00:77:00:02 7663b000-0000-4000-8000-00000000000b \
	server=off -- bash "$SCRIPT_DIR/pair_agent.sh" >"$outdir/b.log" 2>&1
bpid=$guest_pid

# Wait for A; tell A's on_b at once if B ends first (it then fails fast).
arc=
while [[ -z $arc ]]; do
	if [[ -n $bpid ]] && ! kill -0 "$bpid" 2>/dev/null; then
		brc=0
		wait "$bpid" || brc=$?
		bpid=
		printf '%s\n' "$brc" >"$outdir/rpc/b-exited"
		say "guest B ended early (status $brc; its output: $outdir/b.log)"
	fi
	if ! kill -0 "$apid" 2>/dev/null; then
		arc=0
		wait "$apid" || arc=$?
		apid=
	fi
	[[ -n $arc ]] || sleep 0.5
done
touch "$outdir/rpc/stop"
if [[ -n $bpid ]]; then
	for _ in $(seq 1 40); do
		kill -0 "$bpid" 2>/dev/null || break
		sleep 0.5
	done
	brc=0
	if kill -0 "$bpid" 2>/dev/null; then
		kill -TERM "$bpid" 2>/dev/null || true
		wait "$bpid" || brc=$?
		say "guest B did not stop within 20 s: killed"
	else
		wait "$bpid" || brc=$?
	fi
	bpid=
	((brc == 0)) || say "guest B ended with status $brc (its output: $outdir/b.log)"
fi
if [[ ${VCRYPT_VM_VERBOSE:-0} != 0 ]]; then
	say "A's COMMAND exited with status $arc; pair ran $((SECONDS - start)) s"
fi
exit "$arc"
