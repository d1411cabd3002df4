# tests/vm/pair_migration_setup.sh - pair.sh --setup file of
# tests/vm/pair_migration.sh, sourced as root in each guest's overlay root
# before systemd (and so libvirtd, which looks for hooks only when it
# starts) runs.
#
# Installs vcrypt as `cmake --install` laid it out into
# $VCRYPT_MIG_W/stage: vcryptd with its socket unit (enabled), vcryptctl,
# the libvirt qemu hook in /etc/libvirt/hooks/qemu.d/vcrypt, the udev rule
# and the unlock units, as on a real host.

pair_migration_setup() {
	local stage=${VCRYPT_MIG_W:?}/stage
	[[ -d $stage ]] || { echo "[pair] no $stage" >&2; return 1; }
	# tar, not cp: /lib is a symlink to usr/lib on a merged-/usr Debian.
	tar -C "$stage" -cf - . | tar -C / -xf - --keep-directory-symlink --no-same-owner || return
	# A build configured with another prefix than /usr installs the hook's
	# link under ${sysconfdir}; libvirtd only looks in /etc.
	if [[ ! -e /etc/libvirt/hooks/qemu.d/vcrypt ]]; then
		local hook
		hook=$(cd "$stage" && find . -path '*/libexec/vcrypt/vcrypt-libvirt-hook' | head -n1)
		[[ -n $hook ]] || { echo "[pair] the hook was not installed" >&2; return 1; }
		mkdir -p /etc/libvirt/hooks/qemu.d && ln -s "${hook#.}" /etc/libvirt/hooks/qemu.d/vcrypt || return
	fi
	systemctl enable vcryptd.socket >/dev/null 2>&1 || return
}

pair_migration_setup
