# tests/vm/pair_guest_setup.sh - the --setup file of each guest of
# tests/vm/pair.sh (sourced by bash as root in the guest's overlay root,
# before systemd starts; see tests/vm/README.md, "Two hosts").
#
# Makes the guest one of two distinct "hosts" on a private network:
#   hostname vcrypt-a / vcrypt-b, its own /etc/machine-id, /etc/hosts
#   entries for both, the private NIC renamed pair0 (by its MAC) and given
#   its static address by vcrypt-pair-net.service.
# Unless VCRYPT_PAIR_LIBVIRT=0, also libvirt for peer-to-peer migration
# between the two: libvirtd (unmasked, started at boot, no idle exit)
# listening on TCP 16509 with NO authentication, and QEMU's incoming
# migrations listening on, and advertised as, the private address.
# TEST-ONLY configuration: it lives in the guest's throw-away overlay and is
# never installed by the project.
#
# Input (pair.sh passes them): VCRYPT_PAIR_NAME (a|b), VCRYPT_PAIR_SELF_IP,
# VCRYPT_PAIR_PEER_IP, VCRYPT_PAIR_MAC, VCRYPT_PAIR_UUID, VCRYPT_PAIR_LIBVIRT.
# Returns non-zero (the guest then powers off and pair.sh reports it) on
# failure.

pair_setup_fail() { echo "[pair] setup of guest ${VCRYPT_PAIR_NAME:-?}: $*" >&2; return 1; }

pair_setup() {
	local name=${VCRYPT_PAIR_NAME:-} self=${VCRYPT_PAIR_SELF_IP:-} peer=${VCRYPT_PAIR_PEER_IP:-}
	local mac=${VCRYPT_PAIR_MAC:-} uuid=${VCRYPT_PAIR_UUID:-} peer_name
	[[ $name == a || $name == b ]] || { pair_setup_fail "VCRYPT_PAIR_NAME must be a or b"; return; }
	[[ -n $self && -n $peer && -n $mac && -n $uuid ]] || { pair_setup_fail "VCRYPT_PAIR_* missing"; return; }
	peer_name=vcrypt-$([[ $name == a ]] && echo b || echo a)

	# Identity. systemd reads both files when it starts, right after us.
	echo "vcrypt-$name" >/etc/hostname || { pair_setup_fail "cannot write /etc/hostname"; return; }
	printf '%s\n' "${uuid//-/}" >/etc/machine-id || { pair_setup_fail "cannot write /etc/machine-id"; return; }
	{
		echo "127.0.0.1 localhost"
		echo "$self vcrypt-$name"
		echo "$peer $peer_name"
	} >/etc/hosts || { pair_setup_fail "cannot write /etc/hosts"; return; }

	# The private NIC: udev names it pair0 by its MAC (no predictable-name
	# guessing), and a unit bound to that device gives it its address.
	mkdir -p /etc/systemd/network /etc/systemd/system/multi-user.target.wants || return
	cat >/etc/systemd/network/10-vcrypt-pair.link <<-EOF || return
	[Match]
	MACAddress=$mac
	[Link]
	Name=pair0
	EOF
	cat >/etc/systemd/system/vcrypt-pair-net.service <<-EOF || return
	[Unit]
	Description=vcrypt pair harness: address $self/24 on pair0
	BindsTo=sys-subsystem-net-devices-pair0.device
	After=sys-subsystem-net-devices-pair0.device
	Before=network.target libvirtd.service
	[Service]
	Type=oneshot
	RemainAfterExit=yes
	ExecStart=/usr/sbin/ip addr add $self/24 dev pair0
	ExecStart=/usr/sbin/ip link set pair0 up
	EOF
	ln -sfn ../vcrypt-pair-net.service /etc/systemd/system/multi-user.target.wants/ || return

	[[ ${VCRYPT_PAIR_LIBVIRT:-1} == 0 ]] && return 0

	# libvirt. The harness masks its units; Debian enables libvirtd.service
	# and its sockets, so unmasking starts it at boot (and it sees hook
	# scripts installed by a later --setup file: it looks for them only when
	# it starts).
	local u
	for u in libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
		virtlogd.service virtlogd.socket virtlogd-admin.socket \
		virtlockd.socket virtlockd-admin.socket; do
		if [[ $(readlink "/etc/systemd/system/$u" 2>/dev/null) == /dev/null ]]; then
			rm -f "/etc/systemd/system/$u" || return
		fi
	done
	[[ -f /lib/systemd/system/libvirtd-tcp.socket ]] ||
		{ pair_setup_fail "no libvirtd-tcp.socket (install libvirt-daemon-system)"; return; }
	mkdir -p /etc/systemd/system/sockets.target.wants /etc/systemd/system/libvirtd.service.d || return
	ln -sfn /lib/systemd/system/libvirtd-tcp.socket /etc/systemd/system/sockets.target.wants/ || return
	# Debian's unit makes libvirtd exit after 120 s without clients or
	# domains; a test would then see the hooks' daemon shutdown/start.
	printf '[Service]\nEnvironment=LIBVIRTD_ARGS=\n' \
		>/etc/systemd/system/libvirtd.service.d/vcrypt-pair.conf || return
	# Socket activation: listen_tcp is ignored, libvirtd-tcp.socket listens.
	# host_uuid: libvirt refuses to migrate to a host with its own UUID.
	local conf=/etc/libvirt/libvirtd.conf qconf=/etc/libvirt/qemu.conf t
	t=$(grep -Ev '^[[:space:]]*(auth_tcp|host_uuid)[[:space:]]*=' "$conf") || true
	printf '%s\n# vcrypt pair harness (test only)\nauth_tcp = "none"\nhost_uuid = "%s"\n' \
		"$t" "$uuid" >"$conf" || { pair_setup_fail "cannot write $conf"; return; }
	t=$(grep -Ev '^[[:space:]]*(migration_address|migration_host)[[:space:]]*=' "$qconf") || true
	printf '%s\n# vcrypt pair harness (test only)\nmigration_address = "%s"\nmigration_host = "%s"\n' \
		"$t" "$self" "$self" >"$qconf" || { pair_setup_fail "cannot write $qconf"; return; }
	return 0
}

pair_setup
