# Decrypted guest content stays the guest's (docs/boot.md, "Guest content
# stays the guest's"), against real dm-crypt and the guest's systemd-udevd
# with Debian's device-mapper rules:
#  - udev/12-vcrypt-dm.rules (loaded from the source tree into
#    /run/udev/rules.d) keeps udev's blkid off vcrypt mappings, and only
#    off them;
#  - vcryptd's /dev/disk/by-uuid fallback refuses a link into a vcrypt
#    mapping or into a device stacked on one, even when the header there
#    is the expected volume's;
#  - so does the path recorded at `volume create`, when its name was
#    taken by such a device (and the fallback still finds the volume under
#    a new name);
#  - `volume create --device` refuses to format a vcrypt mapping or a
#    device stacked on one, whichever name it is given by, even with
#    --force.
# All of them share the harness's one boot (measured 6-30 s each under
# TCG, depending on the machine's load).
# The LVM side (lvm2 autoactivation, the LVM filter, the boot path) is in
# tests/systemd/boot_test.sh, which has lvm2 and systemd.

GUEST_RULE_SRC=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../udev" && pwd)/12-vcrypt-dm.rules
GUEST_RULE_DST=/run/udev/rules.d/12-vcrypt-dm.rules

guest_cleanup() {
	local m pass
	# Two passes: a test's devices and vcrypt mappings stack on each other
	# both ways (a mapping on backa2, guestlv on a mapping), so whatever
	# one pass could not remove is free in the next.
	for pass in 1 2; do
		for m in $(dmsetup ls 2>/dev/null | awk '$1 ~ /^(guestlv|backa|backa2|vcrypt-decoy)$/ {print $1}'); do
			dmsetup remove "$m" >/dev/null 2>&1 || true
		done
		cleanup_loops
	done
	rm -f "$GUEST_RULE_DST" /dev/disk/by-uuid/vcrypt-test-*
	udevadm control --reload 2>/dev/null || true
}

load_guest_rule() {
	mkdir -p /run/udev/rules.d
	cp "$GUEST_RULE_SRC" "$GUEST_RULE_DST"
	udevadm control --reload
}

# Properties udev stored for device $1.
udev_props() { udevadm info -q property -n "$1"; }

test_guest_udev_rule_hides_vcrypt_mappings_only() {
	trap guest_cleanup EXIT
	load_guest_rule
	start_daemon
	setup_vm
	local path fs_uuid=5e1ec7ed-0000-4000-8000-00000000a001
	path=$(vc open vm1/d0)
	[[ -b $path ]] || fail "no $path: dm's own rules must still make the node"
	# The guest puts a file system on its disk; udev's watch, or any event,
	# would probe it.
	mkfs.ext4 -q -U "$fs_uuid" "$path"
	udevadm trigger --action=change --settle "$path"
	udevadm settle --timeout=30
	local p
	p=$(udev_props "$path")
	assert_contains "$p" "DM_UDEV_DISABLE_DISK_RULES_FLAG=1"
	assert_contains "$p" "DM_UDEV_DISABLE_OTHER_RULES_FLAG=1"
	assert_contains "$p" "VCRYPT_GUEST_CONTENT=1"
	assert_contains "$p" "DM_NAME=vcrypt-vm1-d0" "dm's own rules still ran"
	assert_not_contains "$p" "ID_FS_TYPE=" "udev probed the guest's content"
	[[ ! -e /dev/disk/by-uuid/$fs_uuid ]] || fail "by-uuid link to the guest's ext4: $(ls -l /dev/disk/by-uuid/$fs_uuid)"
	# libdevmapper's udev sync still completes: close does not hang.
	timeout 60 "$VCRYPTCTL" --socket "$T/sock" close vm1/d0 >/dev/null || fail "close failed or hung"
	[[ ! -e $path ]] || fail "$path still there after close"

	# Not hidden: a dm device that is not a vcrypt mapping, even one named
	# vcrypt-* (an LV of a VG named "vcrypt" would be), with the same ext4.
	# (Not an LVM- UUID here: libblkid treats a short one as an LVM-private
	# layer and never probes it.)
	truncate -s 24M "$T/plain.img"
	local loop
	loop=$(attach_loop "$T/plain.img")
	mkfs.ext4 -q -U "$fs_uuid" "$loop"
	dmsetup create vcrypt-decoy --uuid DECOY-vcrypt-test --table "0 $(blockdev --getsz "$loop") linear $loop 0"
	udevadm settle --timeout=30
	p=$(udev_props /dev/mapper/vcrypt-decoy)
	assert_contains "$p" "ID_FS_TYPE=ext4" "a non-vcrypt dm device is probed as before"
	assert_not_contains "$p" "VCRYPT_GUEST_CONTENT=1"
	dmsetup remove --retry vcrypt-decoy
	udevadm settle --timeout=30
}

test_guest_uuid_fallback_refuses_guest_content() {
	trap guest_cleanup EXIT
	start_daemon
	vc provider add native p1 >/dev/null
	vc vm create vm1 >/dev/null
	vc vm create vm2 >/dev/null
	truncate -s 40M "$T/a.img"
	local loop uuid pb dmb link
	loop=$(attach_loop "$T/a.img")
	# vm1/a on a dm device (as on a host LV), so that its path can go away
	# for good (a detached loop device keeps its /dev node).
	dmsetup create backa --table "0 $(blockdev --getsz "$loop") linear $loop 0"
	udevadm settle --timeout=30
	vc volume create vm1 a --device /dev/mapper/backa >/dev/null
	uuid=$(vol_field vm1 a uuid)
	vc volume create vm2 b --file "$T/b.img" --size 64M >/dev/null
	pb=$(vc open vm2/b)
	dmb=$(basename "$(readlink -f "$pb")")
	# vm2's guest writes a copy of vm1/a's LUKS2 header (headers are not
	# secret: a guest may have had the image, or the same template) to its
	# disk. Then vm1/a's device goes away: the inventory path is stale.
	dd if=/dev/mapper/backa of="$pb" bs=1M count=16 oflag=direct conv=fsync status=none
	dmsetup remove --retry backa
	udevadm settle --timeout=30
	# Whatever made it (udev without vcrypt's rule, as here; a stale or
	# planted link), a by-uuid link leads into vm2's clear content.
	link=/dev/disk/by-uuid/$uuid
	if [[ ! -e $link ]]; then
		mkdir -p /dev/disk/by-uuid
		ln -sfn "../../$dmb" "$link"
	fi
	assert_eq "/dev/$dmb" "$(readlink -f "$link")" "the link leads into vm2/b's mapping"
	expect_exit 5 vc open vm1/a
	assert_contains "$ERR" "$link"
	assert_contains "$ERR" "vcrypt-vm2-b"
	[[ ! -e /dev/mapper/vcrypt-vm1-a ]] || fail "vm1/a was opened on vm2's guest content"
	assert_eq /dev/mapper/backa "$(vol_field vm1 a device)" "inventory unchanged"
	# A link into guest content does not make the volume present.
	local s
	s=$(vol_state vm1 a)
	[[ $s == "unavailable|not_found|"*"guest content"* ]] || fail "status of vm1/a: $s"
	log "refused: $ERR"
	# The same from status alone, with no failed open recorded (a restart
	# forgets them).
	stop_daemon
	start_daemon
	s=$(vol_state vm1 a)
	[[ $s == "unavailable|not_found|"*"and $link is guest content (on vcrypt mapping vcrypt-vm2-b)"* ]] ||
		fail "status of vm1/a after a restart: $s"

	# One level up: a device stacked on the mapping (as the host's LVM
	# makes for a guest's LV), whose content starts with the same header.
	dmsetup create guestlv --table "0 $(blockdev --getsz "$pb") linear $pb 0"
	udevadm settle --timeout=30
	ln -sfn "../../$(basename "$(readlink -f /dev/mapper/guestlv)")" "$link"
	expect_exit 5 vc open vm1/a
	assert_contains "$ERR" "vcrypt-vm2-b"
	[[ ! -e /dev/mapper/vcrypt-vm1-a ]] || fail "vm1/a was opened on a device stacked on vm2's guest content"
	dmsetup remove --retry guestlv
	rm -f "$link"
	vc close vm2/b >/dev/null
}

# The recorded path of a block-device volume is a name, and names are
# recycled: here vm1/a's device goes away and its name comes back as a
# device stacked on vm2/b's mapping (the host activating a guest's LV
# under that name), whose content starts with a copy of vm1/a's header.
test_guest_recorded_device_refuses_guest_content() {
	trap guest_cleanup EXIT
	start_daemon
	vc provider add native p1 >/dev/null
	vc vm create vm1 >/dev/null
	vc vm create vm2 >/dev/null
	truncate -s 40M "$T/a.img"
	local loop uuid pb link s dm2
	loop=$(attach_loop "$T/a.img")
	dmsetup create backa --table "0 $(blockdev --getsz "$loop") linear $loop 0"
	udevadm settle --timeout=30
	vc volume create vm1 a --device /dev/mapper/backa >/dev/null
	uuid=$(vol_field vm1 a uuid)
	vc volume create vm2 b --file "$T/b.img" --size 64M >/dev/null
	pb=$(vc open vm2/b)
	dd if=/dev/mapper/backa of="$pb" bs=1M count=16 oflag=direct conv=fsync status=none
	dmsetup remove --retry backa
	dmsetup create backa --table "0 $(blockdev --getsz "$pb") linear $pb 0"
	udevadm settle --timeout=30
	[[ $(blkid -p -s UUID -o value /dev/mapper/backa) == "$uuid" ]] || fail "backa does not show vm1/a's header"
	# Whatever udev linked by that UUID (the link, if any, leads into the
	# guest's content too): the fallback must not take it either.
	link=/dev/disk/by-uuid/$uuid
	expect_exit 5 vc open vm1/a
	assert_contains "$ERR" "/dev/mapper/backa is guest content (on vcrypt mapping vcrypt-vm2-b)"
	[[ ! -e /dev/mapper/vcrypt-vm1-a ]] || fail "vm1/a was opened on vm2's guest content"
	assert_eq /dev/mapper/backa "$(vol_field vm1 a device)" "inventory unchanged"
	log "refused: $ERR"
	# A planted link into the same device: refused as well, naming both.
	mkdir -p /dev/disk/by-uuid
	ln -sfn "../../$(basename "$(readlink -f /dev/mapper/backa)")" "$link"
	expect_exit 5 vc open vm1/a
	assert_contains "$ERR" "/dev/mapper/backa is guest content (on vcrypt mapping vcrypt-vm2-b)"
	assert_contains "$ERR" "$link -> "
	[[ ! -e /dev/mapper/vcrypt-vm1-a ]] || fail "vm1/a was opened through the link"
	# status, with no failed open recorded (after a restart): not present.
	rm -f "$link"
	stop_daemon
	start_daemon
	s=$(vol_state vm1 a)
	[[ $s == "unavailable|not_found|device /dev/mapper/backa is guest content (on vcrypt mapping vcrypt-vm2-b) and there is no $link|"* ]] ||
		fail "status of vm1/a: $s"

	# The volume's own device comes back under another name, linked by its
	# UUID: the fallback finds it, and the inventory follows.
	dmsetup create backa2 --table "0 $(blockdev --getsz "$loop") linear $loop 0"
	udevadm settle --timeout=30
	dm2=$(basename "$(readlink -f /dev/mapper/backa2)")
	ln -sfn "../../$dm2" "$link"
	assert_eq /dev/mapper/vcrypt-vm1-a "$(vc open vm1/a)"
	assert_eq "$dm2" "$(ls "/sys/block/$(basename "$(readlink -f /dev/mapper/vcrypt-vm1-a)")/slaves")" "vm1/a mapped on its own device"
	assert_eq "/dev/$dm2" "$(vol_field vm1 a device)" "inventory follows the link"
	vc close vm1/a >/dev/null
	rm -f "$link"
	dmsetup remove --retry backa2
	dmsetup remove --retry backa
	vc close vm2/b >/dev/null
}

# Formatting a guest's LV from the host writes into the guest's disk: root
# is refused too, --force or not, whichever name the device is given by.
test_guest_volume_create_refuses_guest_content() {
	trap guest_cleanup EXIT
	start_daemon
	setup_vm 64M
	vc vm create vm2 >/dev/null
	local pd dmn dev
	pd=$(vc open vm1/d0)
	# The guest's LV as the host's LVM would activate it: linear, 1 MiB in.
	dmsetup create guestlv --table "0 $((40 * 2048)) linear $pd 2048"
	udevadm settle --timeout=30
	dmn=$(readlink -f /dev/mapper/guestlv)
	write_pattern /dev/mapper/guestlv 1 lv.sha
	for dev in /dev/mapper/guestlv "$dmn"; do
		expect_exit 12 vc volume create vm2 g --device "$dev" --force
		assert_contains "$ERR" "$dev is guest content (on vcrypt mapping vcrypt-vm1-d0)"
		log "refused: $ERR"
	done
	expect_exit 12 vc volume create vm2 g --device /dev/mapper/guestlv
	assert_eq "$(cat "$T/lv.sha")" "$(read_sha /dev/mapper/guestlv 1)" "the guest's LV was written to"
	assert_eq "" "$(vol_field vm2 g device)" "a state record for the refused volume"
	assert_eq vcrypt-vm1-d0 "$(vcrypt_mappings)" "mappings"
	dmsetup remove --retry guestlv
	udevadm settle --timeout=30
	# The mapping itself (now held by nothing, so O_EXCL alone would not
	# stop it).
	write_pattern "$pd" 1 pd.sha
	expect_exit 12 vc volume create vm2 g --device "$pd" --force
	assert_contains "$ERR" "$pd is guest content (on vcrypt mapping vcrypt-vm1-d0)"
	assert_eq "$(cat "$T/pd.sha")" "$(read_sha "$pd" 1)" "the guest's disk was written to"
	assert_eq "" "$(vol_field vm2 g device)" "a state record for the refused volume"
	vc close vm1/d0 >/dev/null
}
