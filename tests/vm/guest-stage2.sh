#!/bin/bash
# Guest side of tests/vm/run.sh: runs as PID 1 inside the VM, in the overlay
# root (host root read-only + tmpfs), after the initramfs switch_root'ed here.
#
# run.sh copies this file into the per-run control share, which the guest sees
# at /run/vmctl, next to:
#   job.env  VM_* settings for this script (bash, sourced)
#   job.sh   the user's command: exported allow-listed env, cd, exec COMMAND
# and this script leaves there:
#   status   COMMAND's exit status (decimal), written last
#
# No `set -e`/`set -u`: PID 1 must never exit (the kernel would panic); every
# step is checked by hand and the machine always powers off at the end.
CTL=/run/vmctl

say() { echo "[vm] $*" >&2; }
dbg() {
	[[ ${VM_DEBUG:-0} == 1 ]] || return 0
	local up
	read -r up _ </proc/uptime
	say "$up s: $*"
}

# Power-off is asynchronous and tears down the 9p mounts under us: after the
# sysrq write, run no program from the host root (exec fails with EIO and says
# so). Wait on a FIFO in /run (tmpfs) with bash's builtin read, not sleep.
mkfifo /run/vm-idle 2>/dev/null || true
poweroff_now() {
	sync
	exec 2>/dev/null
	echo o >/proc/sysrq-trigger
	read -r -t 60 _ <>/run/vm-idle
	exit 1 # not reached; a kernel panic (panic=1 + -no-reboot) stops qemu too
}

# shellcheck source=/dev/null
source "$CTL/job.env" || { say "FATAL: cannot read $CTL/job.env"; poweroff_now; }

# The console is a serial line: no CR before LF on the host side.
stty -F /dev/ttyS0 -onlcr 2>/dev/null || true
export SYSTEMD_LOG_TARGET=kmsg SYSTEMD_LOG_LEVEL=warning

dbg "stage2 started"
hostname vcrypt-vm 2>/dev/null || true
ip link set lo up 2>/dev/null || say "warning: cannot bring up lo"

# Kernel modules of the guest kernel are not in the host root: show the
# cached, extracted ones at the usual place so modprobe (and the kernel's
# request_module) work.
if [[ -n ${VM_MODDIR:-} && -d $VM_MODDIR ]]; then
	mkdir -p "/lib/modules/$VM_KVER" &&
		mount --bind "$VM_MODDIR" "/lib/modules/$VM_KVER" ||
		say "warning: cannot bind $VM_MODDIR at /lib/modules/$VM_KVER (modprobe will not work)"
else
	say "warning: module dir ${VM_MODDIR:-?} not visible (modprobe will not work)"
fi

# The output share also appears at the host's path of the output directory,
# when that path is visible in the guest (i.e. not under /run, /dev, ...).
if [[ -n ${VM_OUTDIR_HOST:-} ]]; then
	mkdir -p "$VM_OUTDIR_HOST" && mount --bind /vmout "$VM_OUTDIR_HOST" ||
		say "warning: cannot bind /vmout at $VM_OUTDIR_HOST"
fi

# --- systemd as PID 1 (run.sh --systemd) --------------------------------------
# The job becomes a oneshot service; the service's wrapper writes the status
# and powers off, exactly as below.
if [[ ${VM_SYSTEMD:-0} == 1 ]]; then
	sd_fail() {
		say "FATAL: $*"
		echo "stage2: $*" >"$CTL/init-error"
		poweroff_now
	}
	[[ -x /lib/systemd/systemd ]] || sd_fail "no /lib/systemd/systemd in the host root (install systemd)"
	# The host's fstab names the host's disks.
	: >/etc/fstab || sd_fail "cannot write /etc/fstab in the overlay"
	# Units of the host root that would only slow the boot down or wait for
	# hardware the guest lacks. Tests unmask what they need in --setup.
	for u in postgresql.service getty.target serial-getty@.service getty@.service \
		systemd-timesyncd.service timers.target e2scrub_reap.service \
		systemd-pstore.service remote-fs.target machines.target \
		libvirt-guests.service libvirtd.service virtlockd.socket virtlogd.socket \
		libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
		virtlockd-admin.socket virtlogd-admin.socket \
		systemd-networkd-wait-online.service NetworkManager-wait-online.service \
		apt-daily.service apt-daily-upgrade.service man-db.service \
		systemd-logind.service console-setup.service keyboard-setup.service \
		systemd-vconsole-setup.service; do
		ln -sfn /dev/null "/etc/systemd/system/$u"
	done
	# tmpfiles' tmp.conf would empty /tmp at boot: in the guest, /tmp is the
	# host's /tmp (a CI checkout, a test's files) seen through the overlay.
	mkdir -p /etc/tmpfiles.d && ln -sfn /dev/null /etc/tmpfiles.d/tmp.conf ||
		sd_fail "cannot override tmpfiles.d/tmp.conf"
	cat >/etc/systemd/system/vcrypt-vmjob.service <<-'EOF'
	[Unit]
	Description=vcrypt VM harness job (tests/vm/run.sh --systemd)
	After=basic.target
	[Service]
	Type=exec
	ExecStart=/bin/bash /run/vmctl/sd-job.sh
	StandardInput=null
	StandardOutput=file:/dev/ttyS0
	StandardError=inherit
	TimeoutStopSec=5
	EOF
	mkdir -p /etc/systemd/system/multi-user.target.wants &&
		ln -sfn ../vcrypt-vmjob.service /etc/systemd/system/multi-user.target.wants/ ||
		sd_fail "cannot install vcrypt-vmjob.service"
	cat >"$CTL/sd-job.sh" <<-'EOF'
	# Written by guest-stage2.sh: runs the job under systemd, reports, powers off.
	env -i /bin/bash --noprofile --norc /run/vmctl/job.sh
	rc=$?
	printf '%s\n' "$rc" >/run/vmctl/status.tmp && mv -f /run/vmctl/status.tmp /run/vmctl/status
	sync
	# As in stage2: after the sysrq write, run nothing from the host root.
	exec 2>/dev/null
	echo o >/proc/sysrq-trigger
	read -r -t 60 _ <>/run/vm-idle
	EOF
	if [[ -f $CTL/setup.sh ]]; then
		dbg "running the --setup file"
		env -i /bin/bash --noprofile --norc "$CTL/setup.sh" ||
			sd_fail "the --setup file failed (status $?)"
	fi
	dbg "exec systemd"
	exec /lib/systemd/systemd
	sd_fail "cannot exec /lib/systemd/systemd"
fi

if [[ ${VM_UDEV:-1} == 1 ]]; then
	udevd=/lib/systemd/systemd-udevd
	# Coldplug only block devices and misc (device-mapper control,
	# loop-control): a full coldplug of the emulated PC hardware takes
	# ~5 s under TCG for nothing a test needs. VCRYPT_VM_UDEV_COLDPLUG=all
	# (run.sh passes it as VM_UDEV_COLDPLUG) triggers everything.
	trigger_match=(--subsystem-match=block --subsystem-match=misc)
	[[ ${VM_UDEV_COLDPLUG:-} == all ]] && trigger_match=()
	if [[ ! -x $udevd ]]; then
		say "warning: $udevd not found (install the udev package); continuing without udev"
	elif ! "$udevd" --daemon; then
		say "warning: systemd-udevd failed to start; continuing without udev"
	elif ! udevadm trigger --type=subsystems --action=add ||
		! udevadm trigger --type=devices --action=add "${trigger_match[@]}" ||
		! udevadm settle --timeout=120; then
		say "warning: udevadm trigger/settle failed; udev may be incomplete"
	fi
fi

dbg "udev done"
# Run the user's command with a clean, allow-listed environment (job.sh
# exports it), as a child so that PID 1 survives it.
env -i /bin/bash --noprofile --norc "$CTL/job.sh"
rc=$?
dbg "command exited with status $rc"

printf '%s\n' "$rc" >"$CTL/status.tmp" && mv -f "$CTL/status.tmp" "$CTL/status" ||
	say "FATAL: cannot write the exit status to $CTL"
poweroff_now
