#!/usr/bin/env bash
# tests/vm/run.sh - run a command as root inside a QEMU (TCG) guest that boots
# Debian's stock kernel (device-mapper, dm-crypt, loop, ...) over this host's
# root filesystem (read-only 9p + tmpfs overlay). See tests/vm/README.md.
#
# usage: run.sh [--mem MB] [--smp N] [--timeout SECONDS] [--disk FILE]... [--outdir DIR]
#               [--env NAME]... [--no-udev] [--systemd [--setup FILE]]
#               [--qemu-arg ARG]... -- COMMAND [ARGS...]
#
# Exit status: COMMAND's; 124 if the timeout expired; 125 if the guest died
# (or qemu failed) without reporting a status; 2 for usage errors.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
PROG=${0##*/}

die() { printf '[vm] %s: error: %s\n' "$PROG" "$*" >&2; exit "${2:-125}"; }
usage_die() { printf '[vm] %s: %s\n' "$PROG" "$*" >&2; usage >&2; exit 2; }
usage() {
	cat <<-'EOF'
	usage: run.sh [options] -- COMMAND [ARGS...]
	Runs COMMAND (as root, in the caller's working directory) inside a QEMU guest
	with a real device-mapper/dm-crypt kernel; exits with COMMAND's status.
	  --mem MB          guest memory (default $VCRYPT_VM_MEM or 2048)
	  --smp N           virtual CPUs (default 2)
	  --timeout SEC     kill the guest after SEC seconds, exit 124
	                    (default $VCRYPT_VM_TIMEOUT or 1200)
	  --disk FILE       attach FILE as a raw virtio disk (/dev/vda, /dev/vdb, ...)
	  --outdir DIR      read-write share: /vmout in the guest (and DIR's own path
	                    too, if visible there); default: a temporary directory
	  --env NAME        also pass the variable NAME into the guest (repeatable)
	  --no-udev         do not start systemd-udevd in the guest
	  --systemd         boot systemd as PID 1; COMMAND runs as a Type=exec
	                    service (vcrypt-vmjob.service, wanted by
	                    multi-user.target, ordered after basic.target only)
	  --setup FILE      with --systemd: run FILE (bash, as root, in the
	                    overlay root, same environment as COMMAND) before
	                    systemd starts, e.g. to install units or enable them
	  --qemu-arg ARG    append ARG to qemu's command line (repeatable; e.g.
	                    -netdev/-device pairs; tests/vm/pair.sh uses it)
	Passed to COMMAND: PATH HOME LANG LANGUAGE LC_* TZ USER LOGNAME CI
	VCRYPT_* and the names in $VCRYPT_VM_PASSENV (space separated).
	EOF
}

debug=0
[[ ${VCRYPT_VM_DEBUG:-0} == 0 ]] || debug=1
mem=${VCRYPT_VM_MEM:-2048}
smp=2
timeout=${VCRYPT_VM_TIMEOUT:-1200}
disks=()
outdir=
extra_env=()
udev=1
systemd=0
setup=
qemu_args=()
while (($#)); do
	case $1 in
		--mem) (($# >= 2)) || usage_die "--mem needs a value"; mem=$2; shift 2 ;;
		--mem=*) mem=${1#*=}; shift ;;
		--smp) (($# >= 2)) || usage_die "--smp needs a value"; smp=$2; shift 2 ;;
		--smp=*) smp=${1#*=}; shift ;;
		--timeout) (($# >= 2)) || usage_die "--timeout needs a value"; timeout=$2; shift 2 ;;
		--timeout=*) timeout=${1#*=}; shift ;;
		--disk) (($# >= 2)) || usage_die "--disk needs a value"; disks+=("$2"); shift 2 ;;
		--disk=*) disks+=("${1#*=}"); shift ;;
		--outdir) (($# >= 2)) || usage_die "--outdir needs a value"; outdir=$2; shift 2 ;;
		--outdir=*) outdir=${1#*=}; shift ;;
		--env) (($# >= 2)) || usage_die "--env needs a value"; extra_env+=("$2"); shift 2 ;;
		--env=*) extra_env+=("${1#*=}"); shift ;;
		--no-udev) udev=0; shift ;;
		--systemd) systemd=1; shift ;;
		--setup) (($# >= 2)) || usage_die "--setup needs a value"; setup=$2; shift 2 ;;
		--setup=*) setup=${1#*=}; shift ;;
		--qemu-arg) (($# >= 2)) || usage_die "--qemu-arg needs a value"; qemu_args+=("$2"); shift 2 ;;
		--qemu-arg=*) qemu_args+=("${1#*=}"); shift ;;
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
for d in ${disks[@]+"${disks[@]}"}; do
	[[ -e $d ]] || usage_die "--disk: no such file: $d"
done
((${#disks[@]} <= 20)) || usage_die "too many --disk options"
if [[ -n $setup ]]; then
	((systemd)) || usage_die "--setup needs --systemd"
	[[ -r $setup ]] || usage_die "--setup: cannot read $setup"
fi
((systemd && !udev)) && usage_die "--no-udev and --systemd exclude each other (systemd starts udevd)"

# Paths the guest replaces with fresh filesystems: the host's content there is
# invisible inside.
hidden_path() {
	case $1/ in
		/run/*|/dev/*|/proc/*|/sys/*|/vmout/*) return 0 ;;
	esac
	return 1
}
cwd=$(pwd -P)
hidden_path "$cwd" &&
	die "the working directory $cwd is hidden in the guest (/run, /dev, /proc, /sys are fresh there); cd elsewhere" 2

# Silent and ~0.1 s when everything is cached; logs to stderr when it has work.
kdir=$("$SCRIPT_DIR/prepare.sh" | tail -n1) || die "tests/vm/prepare.sh failed"
kver=$(cat "$kdir/kver")
kernel=$kdir/vmlinux
[[ -r $kernel ]] || kernel=$kdir/vmlinuz
[[ -r $kernel && -r $kdir/initrd.img ]] || die "kernel or initramfs missing in $kdir"
hidden_path "$kdir" && die "VCRYPT_VM_CACHE ($kdir) must not be under /run or /dev: the guest reads its modules from there"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vcrypt-vm.XXXXXX")
qpid=
# shellcheck disable=SC2317 # invoked by the EXIT trap
cleanup() {
	local rc=$?
	trap - EXIT INT TERM HUP
	if [[ -n $qpid ]] && kill -0 "$qpid" 2>/dev/null; then
		kill -TERM "$qpid" 2>/dev/null || true
		for _ in 1 2 3 4 5 6 7 8 9 10; do
			kill -0 "$qpid" 2>/dev/null || break
			sleep 0.2
		done
		kill -KILL "$qpid" 2>/dev/null || true
		wait "$qpid" 2>/dev/null || true
	fi
	rm -rf -- "$tmp"
	exit "$rc"
}
trap cleanup EXIT
trap 'printf "\n[vm] %s: interrupted, killing the guest\n" "$PROG" >&2; exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

ctl=$tmp/ctl
mkdir -p "$ctl"
outdir_host=
if [[ -n $outdir ]]; then
	mkdir -p -- "$outdir" || die "cannot create --outdir $outdir" 2
	outdir=$(cd -- "$outdir" && pwd -P)
	hidden_path "$outdir" || outdir_host=$outdir
else
	outdir=$tmp/out
	mkdir -p "$outdir"
fi

# --- the job: environment allow-list, working directory, command ------------
passenv=(PATH HOME LANG LANGUAGE TZ USER LOGNAME CI)
while IFS= read -r name; do
	passenv+=("$name")
done < <(compgen -e | grep -E '^(LC_[A-Z_]+|VCRYPT_[A-Za-z0-9_]+)$' || true)
read -r -a more <<<"${VCRYPT_VM_PASSENV:-}"
passenv+=(${more[@]+"${more[@]}"} ${extra_env[@]+"${extra_env[@]}"})
{
	echo '# generated by tests/vm/run.sh'
	for name in "${passenv[@]}"; do
		[[ $name =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "bad variable name: $name" 2
		[[ -n ${!name+set} ]] || continue
		printf 'export %s=%q\n' "$name" "${!name}"
	done
	echo 'export TERM=dumb VCRYPT_VM=1 VCRYPT_VM_OUTDIR=/vmout'
	printf 'cd -- %q || { echo "[vm] cannot cd to %q" >&2; exit 125; }\n' "$cwd" "$cwd"
	printf 'exec'
	printf ' %q' "$@"
	printf '\n'
} >"$ctl/job.sh"
{
	printf 'VM_KVER=%q\n' "$kver"
	printf 'VM_MODDIR=%q\n' "$kdir/root/lib/modules/$kver"
	printf 'VM_OUTDIR_HOST=%q\n' "$outdir_host"
	printf 'VM_UDEV=%q\n' "$udev"
	printf 'VM_UDEV_COLDPLUG=%q\n' "${VCRYPT_VM_UDEV_COLDPLUG:-}"
	printf 'VM_DEBUG=%q\n' "$debug"
	printf 'VM_SYSTEMD=%q\n' "$systemd"
} >"$ctl/job.env"
cp "$SCRIPT_DIR/guest-stage2.sh" "$ctl/stage2.sh"
if [[ -n $setup ]]; then
	# Same environment and working directory as the job, then the file.
	sed '$d' "$ctl/job.sh" >"$ctl/setup.sh"
	cp -- "$setup" "$ctl/setup-file.sh"
	printf 'source /run/vmctl/setup-file.sh\n' >>"$ctl/setup.sh"
fi

# A comma in a qemu option value is written as two.
qemu_escape() { printf '%s' "${1//,/,,}"; }

# --- boot ---------------------------------------------------------------------
# The kernel's console stays off the serial port (the guest's init writes to
# ttyS0 itself), so the host sees only COMMAND's output; VCRYPT_VM_DEBUG=1
# puts the kernel log there too.
# module_blacklist: drivers for emulated hardware that udev's coldplug would
# otherwise load (floppy, IDE, KVM, PC speaker...): seconds under TCG, no use.
cmdline="panic=1 8250.nr_uarts=1 i8042.noaux i8042.nokbd"
cmdline+=" module_blacklist=floppy,pcspkr,ata_piix,ata_generic,i2c_piix4,kvm,kvm_amd,kvm_intel,ccp,evdev,joydev,psmouse,serio_raw"
if ((debug)); then
	cmdline+=" console=ttyS0 loglevel=7 printk.time=1"
else
	cmdline+=" console=tty0 quiet loglevel=0"
fi
# systemd as PID 1: no status lines on the console, no emergency shell.
((systemd)) && cmdline+=" systemd.show_status=0 systemd.log_target=journal"

qemu=(
	qemu-system-x86_64 -accel tcg -cpu max -smp "$smp" -m "$mem"
	-nographic -no-reboot -nodefaults -vga none -nic none -bios qboot.rom
	-serial stdio -monitor none
	-kernel "$kernel" -initrd "$kdir/initrd.img"
	-append "$cmdline"
	-device virtio-rng-pci
	-virtfs "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap"
	-virtfs "local,path=$(qemu_escape "$ctl"),mount_tag=vmctl,security_model=none"
	-virtfs "local,path=$(qemu_escape "$outdir"),mount_tag=vmout,security_model=none"
)
for d in ${disks[@]+"${disks[@]}"}; do
	qemu+=(-drive "file=$(qemu_escape "$(realpath -- "$d")"),format=raw,if=virtio,cache=unsafe")
done
# Verbatim: the caller escapes commas in values (qemu_escape) itself.
qemu+=(${qemu_args[@]+"${qemu_args[@]}"})

start=$(date +%s.%N)
"${qemu[@]}" </dev/null &
qpid=$!

# Watchdog: poll rather than a background sleeper so nothing outlives us.
timed_out=0
deadline=$((SECONDS + timeout))
while kill -0 "$qpid" 2>/dev/null; do
	if ((SECONDS >= deadline)); then
		timed_out=1
		break
	fi
	sleep 0.25
done
qrc=0
if ((timed_out)); then
	kill -TERM "$qpid" 2>/dev/null || true
	sleep 1
	kill -KILL "$qpid" 2>/dev/null || true
	wait "$qpid" 2>/dev/null || true
	qpid=
	printf '\n[vm] %s: error: timeout: the guest ran for more than %s s; qemu killed\n' "$PROG" "$timeout" >&2
	exit 124
fi
wait "$qpid" || qrc=$?
qpid=
elapsed=$(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }')

if [[ -f $ctl/status ]]; then
	rc=$(cat "$ctl/status")
	[[ $rc =~ ^[0-9]+$ ]] || die "the guest reported a garbled status: $rc"
	if ((debug)) || [[ ${VCRYPT_VM_VERBOSE:-0} != 0 ]]; then
		printf '[vm] guest exit status %s after %s s\n' "$rc" "$elapsed" >&2
	fi
	exit "$rc"
fi
msg="the guest died without reporting COMMAND's exit status (qemu exit code $qrc, after $elapsed s)"
[[ -f $ctl/init-error ]] && msg+=": $(cat "$ctl/init-error")"
((debug)) || msg+="; rerun with VCRYPT_VM_DEBUG=1 to see the kernel log"
die "$msg"
