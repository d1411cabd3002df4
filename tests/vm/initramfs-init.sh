#!/bin/sh
# /init of the vcrypt test VM's initramfs (busybox sh, PID 1).
#
# Built into the initramfs by tests/vm/prepare.sh; run by the kernel that
# tests/vm/run.sh boots. It:
#   1. loads the kernel modules listed in /etc/vm-modules (dependency order),
#   2. mounts the host's root read-only over 9p (tag "hostroot") and puts a
#      tmpfs-backed overlay on top of it,
#   3. mounts fresh proc/sys/devtmpfs/devpts and tmpfs on /run and /dev/shm
#      (/tmp stays the overlay: writable, tmpfs-backed, and the host's files
#      under /tmp - a CI checkout, a test's temp dir - stay visible),
#   4. mounts the per-run control share (tag "vmctl") at /run/vmctl and the
#      output share (tag "vmout") at /vmout,
#   5. switch_root's into the overlay and execs /run/vmctl/stage2.sh with bash
#      (written by run.sh), which runs the user's command and powers off.
# On any fatal error it prints a message and powers the machine off; run.sh
# then reports that the guest died without a status.

export PATH=/bin
KVER=$(cat /etc/vm-kver)
MSIZE=262144

say() { echo "[vm-init] $*"; }
die() {
	say "FATAL: $*"
	if [ -d /newroot/run/vmctl ]; then
		echo "vm-init: $*" > /newroot/run/vmctl/init-error 2>/dev/null
	fi
	sync
	echo o > /proc/sysrq-trigger
	sleep 30
	exit 1
}

mount -t proc proc /proc || die "mount /proc"
mount -t sysfs sysfs /sys || die "mount /sys"
mount -t devtmpfs devtmpfs /dev || die "mount /dev"
# Unless run.sh asked for kernel messages (VCRYPT_VM_DEBUG), the kernel's
# console is not the serial port: talk to the serial port directly so that
# only our output (and the command's) reaches the host. No stdin.
if [ -c /dev/ttyS0 ]; then
	exec </dev/null >/dev/ttyS0 2>&1
fi

for m in $(cat /etc/vm-modules); do
	# "File exists" (already loaded) is fine; anything else is worth a line.
	out=$(insmod "/lib/modules/$KVER/$m" 2>&1) || case "$out" in
		*"File exists"*) ;;
		*) say "warning: insmod $m: $out" ;;
	esac
done

mkdir -p /lower /rw /newroot
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=$MSIZE,cache=loose hostroot /lower ||
	die "cannot mount the host root over 9p (tag hostroot)"
mount -t tmpfs -o mode=0755 rw /rw || die "mount tmpfs for the overlay"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot ||
	die "cannot mount the overlay on top of the host root"

N=/newroot
mount -o move /proc $N/proc || die "move /proc"
mount -o move /sys $N/sys || die "move /sys"
mount -o move /dev $N/dev || die "move /dev"
mkdir -p $N/dev/pts $N/dev/shm
# What systemd would add to a devtmpfs (bash's <(...) needs /dev/fd).
ln -sfn /proc/self/fd $N/dev/fd
ln -sfn /proc/self/fd/0 $N/dev/stdin
ln -sfn /proc/self/fd/1 $N/dev/stdout
ln -sfn /proc/self/fd/2 $N/dev/stderr
ln -sfn /proc/kcore $N/dev/core
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $N/dev/pts || die "mount devpts"
mount -t tmpfs -o mode=1777,nosuid,nodev shm $N/dev/shm || die "mount /dev/shm"
mount -t tmpfs -o mode=0755,nosuid,nodev run $N/run || die "mount /run"
mkdir -p $N/run/vmctl $N/vmout
mount -t 9p -o trans=virtio,version=9p2000.L,msize=$MSIZE vmctl $N/run/vmctl ||
	die "cannot mount the control share (tag vmctl)"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=$MSIZE vmout $N/vmout ||
	die "cannot mount the output share (tag vmout)"
[ -f $N/run/vmctl/stage2.sh ] || die "run.sh wrote no stage2.sh into the control share"
[ -x $N/bin/bash ] || [ -L $N/bin/bash ] || die "no /bin/bash in the host root"

# shellcheck disable=SC2093 # the die below runs only if exec fails
exec switch_root $N /bin/bash /run/vmctl/stage2.sh
die "switch_root failed"
