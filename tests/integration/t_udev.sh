# Boot-time auto-unlock pieces (docs/boot.md) against the guest's real
# systemd-udevd: `vcrypt-probe` and `vcryptctl probe`, the udev rule
# udev/90-vcrypt.rules (loaded from the build tree into /run/udev/rules.d,
# with the build's vcrypt-probe as the probe program), and the unlock units' helper
# `vcryptctl unlock`. systemd itself (PID 1) is not part of this: the
# rule's SYSTEMD_WANTS is checked in udev's database.
# The unlock units run `vcryptctl unlock`; its retry policy (backoff,
# deadline, an attempt that hangs) is unit-tested with its own clock in
# tests/unit/unlock_test.cc, what it does against a real vcryptd here.

RULE_SRC=$VCRYPT_BUILD/udev/90-vcrypt.rules
RULE_DST=/run/udev/rules.d/90-vcrypt.rules
VCRYPT_PROBE=$VCRYPT_BUILD/cli/vcrypt-probe

# Small LUKS2 volumes without the daemon: plain (cryptsetup) and ext4.
make_plain_luks() {
	truncate -s 40M "$1"
	head -c 32 /dev/urandom >"$T/keyfile"
	cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 \
		--pbkdf-force-iterations 1000 --key-file "$T/keyfile" "$1" >/dev/null
}
make_ext4() {
	truncate -s 40M "$1"
	mkfs.ext4 -q -F "$1" >/dev/null
}

udev_cleanup() {
	rm -f "$RULE_DST"
	udevadm control --reload 2>/dev/null || true
	cleanup_loops
}

install_rule() {
	[[ -f $RULE_SRC ]] || fail "$RULE_SRC missing (build first)"
	udevadm control --ping 2>/dev/null || fail "systemd-udevd is not running in this guest"
	trap udev_cleanup EXIT
	mkdir -p /run/udev/rules.d
	sed "s|\"[^\"]*/vcrypt-probe |\"$VCRYPT_PROBE |" "$RULE_SRC" >"$RULE_DST"
	grep -q "IMPORT{program}=\"$VCRYPT_PROBE \$devnode\"" "$RULE_DST" ||
		fail "probe program not replaced in $RULE_DST"
	udevadm control --reload
}

# Replays the "add" event the boot coldplug sends, and waits for it.
replay_add() { udevadm trigger --action=add --settle "$1"; }
props() { udevadm info --query=property --name="$1"; }
prop() { props "$1" | sed -n "s/^$2=//p"; }

# Replaces the provider type in the vcrypt token of image $1 (no daemon:
# a standard-provider volume without a KMS; probe does not unwrap).
set_provider_type() {
	cryptsetup token export --token-id 0 "$1" >"$T/tok.json"
	sed -i "s/\"type\":\"native\"/\"type\":\"$2\"/" "$T/tok.json"
	grep -q "\"type\":\"$2\"" "$T/tok.json" || fail "token edit failed"
	cryptsetup token import --token-id 0 --token-replace --json-file "$T/tok.json" "$1"
}

test_udev_probe_output_and_exit_codes() {
	start_daemon
	vc provider add native p1 >/dev/null
	vc vm create web-01 >/dev/null
	vc volume create web-01 root --file "$T/v.img" --size 40M >/dev/null
	local uuid out
	uuid=$(cryptsetup luksUUID "$T/v.img")
	stop_daemon # probe needs no daemon
	out=$("$VCRYPTCTL" --socket /nonexistent/sock probe "$T/v.img")
	assert_eq "VCRYPT_VOLUME=1
VCRYPT_VM=web-01
VCRYPT_DISK=root
VCRYPT_UUID=$uuid
VCRYPT_PROVIDER=p1
VCRYPT_PROVIDER_TYPE=native
VCRYPT_NEEDS_NETWORK=0
VCRYPT_UNIT=web-01-root" "$out" "probe output"
	# The fast probe (its own header reader) answers the same.
	assert_eq "$out" "$("$VCRYPT_PROBE" "$T/v.img")" "vcrypt-probe output"
	# On a block device too.
	local dev
	dev=$(attach_loop "$T/v.img")
	assert_eq "$out" "$("$VCRYPTCTL" probe "$dev")" "probe of $dev"
	assert_eq "$out" "$("$VCRYPT_PROBE" "$dev")" "vcrypt-probe of $dev"
	losetup -d "$dev"

	# A token imported by cryptsetup: both probes agree.
	set_provider_type "$T/v.img" standard
	out=$("$VCRYPTCTL" probe "$T/v.img")
	assert_contains "$out" "VCRYPT_PROVIDER_TYPE=standard"
	assert_contains "$out" "VCRYPT_NEEDS_NETWORK=1"
	assert_eq "$out" "$("$VCRYPT_PROBE" "$T/v.img")" "vcrypt-probe after a token import"

	make_plain_luks "$T/plain.img"
	make_ext4 "$T/ext4.img"
	head -c 20M /dev/urandom >"$T/garbage.img"
	local f
	for f in plain ext4 garbage; do
		expect_exit 9 "$VCRYPTCTL" probe "$T/$f.img"
		[[ -z $("$VCRYPTCTL" probe "$T/$f.img" 2>/dev/null) ]] || fail "probe printed something for $f"
		# vcrypt-probe has no answer and hands over to vcryptctl probe.
		expect_exit 9 "$VCRYPT_PROBE" "$T/$f.img"
		[[ -z $("$VCRYPT_PROBE" "$T/$f.img" 2>/dev/null) ]] || fail "vcrypt-probe printed something for $f"
	done
	expect_exit 5 "$VCRYPTCTL" probe "$T/missing.img"
	expect_exit 5 "$VCRYPTCTL" probe /dev/vcrypt-no-such-disk
	expect_exit 2 "$VCRYPTCTL" probe
	expect_exit 5 "$VCRYPT_PROBE" "$T/missing.img"
	expect_exit 2 "$VCRYPT_PROBE"
}

test_udev_rule_fires_for_vcrypt_volumes() {
	install_rule
	start_daemon
	vc provider add native p1 >/dev/null
	vc vm create web-01 >/dev/null
	vc volume create web-01 root --file "$T/v.img" --size 40M >/dev/null
	vc volume create web-01 data --file "$T/n.img" --size 40M >/dev/null
	stop_daemon
	set_provider_type "$T/n.img" standard # a KMS volume, as far as udev can tell
	local dev ndev p
	dev=$(attach_loop "$T/v.img")
	ndev=$(attach_loop "$T/n.img")
	replay_add "$dev"
	replay_add "$ndev"
	p=$(props "$dev")
	assert_contains "$p" "ID_FS_TYPE=crypto_LUKS"
	assert_contains "$p" "VCRYPT_VOLUME=1"
	assert_contains "$p" "VCRYPT_VM=web-01"
	assert_contains "$p" "VCRYPT_DISK=root"
	assert_contains "$p" "VCRYPT_UUID=$(cryptsetup luksUUID "$T/v.img")"
	assert_eq "vcrypt-unlock@web-01-root.service" "$(prop "$dev" SYSTEMD_WANTS)" "SYSTEMD_WANTS of $dev"
	assert_contains "$(prop "$dev" TAGS)" ":systemd:"
	p=$(props "$ndev")
	assert_contains "$p" "VCRYPT_NEEDS_NETWORK=1"
	assert_eq "vcrypt-unlock-net@web-01-data.service" "$(prop "$ndev" SYSTEMD_WANTS)" "SYSTEMD_WANTS of $ndev"
	# The unit instance is what systemd-escape makes of VM/DISK when the VM
	# name has no '-' (and always splits at the last '-').
	assert_eq "web01-root" "$(systemd-escape web01/root)"
	# A change event (what udev sends when a device is rewritten) keeps it.
	udevadm trigger --action=change --settle "$dev"
	assert_eq "vcrypt-unlock@web-01-root.service" "$(prop "$dev" SYSTEMD_WANTS)" "after change"
	# udevadm test shows the same, and that it is this rule's doing.
	local t
	t=$(udevadm test --action=add "/sys/class/block/${dev#/dev/}" 2>&1)
	assert_contains "$t" "90-vcrypt.rules"
	assert_contains "$t" "SYSTEMD_WANTS=vcrypt-unlock@web-01-root.service"
	# Removing the rule removes the properties at the next event.
	# udevd applies a reload lazily (between events), so under load the
	# first replayed event may still see the old rules: replay until the
	# properties go, for at most 10 events.
	rm -f "$RULE_DST"
	udevadm control --reload
	local i
	for i in $(seq 10); do
		replay_add "$dev"
		[[ $(props "$dev") != *VCRYPT_* ]] && break
		sleep 1
	done
	assert_not_contains "$(props "$dev")" "VCRYPT_" "no rule, no properties"
}

test_udev_rule_ignores_plain_luks_ext4_and_garbage() {
	install_rule
	make_plain_luks "$T/plain.img"
	make_ext4 "$T/ext4.img"
	head -c 20M /dev/urandom >"$T/garbage.img"
	local f dev p
	for f in plain ext4 garbage; do
		dev=$(attach_loop "$T/$f.img")
		replay_add "$dev"
		p=$(props "$dev")
		assert_not_contains "$p" "VCRYPT_" "$f on $dev"
		assert_not_contains "$p" "SYSTEMD_WANTS" "$f on $dev"
		case $f in
		plain) assert_contains "$p" "ID_FS_TYPE=crypto_LUKS" "the probe ran for $f" ;;
		ext4) assert_contains "$p" "ID_FS_TYPE=ext4" ;;
		esac
	done
}

test_udev_rule_ignores_vcrypt_own_devices() {
	install_rule
	start_daemon
	setup_vm
	vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
	local path loop p
	path=$(vc open vm1/d0)
	# The auto-clear loop device libcryptsetup attached for the image: it
	# holds a vcrypt header, but it is vcrypt's own device.
	loop=$(dmsetup deps -o devname vcrypt-vm1-d0 | sed -n 's/.*(\(loop[0-9]*\)).*/\1/p')
	[[ -n $loop ]] || fail "no loop device under vcrypt-vm1-d0"
	assert_eq 1 "$(cat "/sys/block/$loop/loop/autoclear")" "autoclear on $loop"
	replay_add "/dev/$loop"
	p=$(props "/dev/$loop")
	assert_contains "$p" "ID_FS_TYPE=crypto_LUKS"
	"$VCRYPTCTL" probe "/dev/$loop" >/dev/null || fail "probe of /dev/$loop should succeed"
	assert_not_contains "$p" "VCRYPT_" "auto-clear loop device"
	# A mapping (DM_UUID CRYPT-...) whose contents look like a vcrypt volume.
	dd if="$T/d1.img" of="$path" bs=1M count=16 oflag=direct conv=fsync status=none
	udevadm trigger --action=change --settle "$path"
	p=$(props "$path")
	assert_contains "$p" "DM_UUID=CRYPT-LUKS2-"
	assert_contains "$p" "ID_FS_TYPE=crypto_LUKS"
	"$VCRYPTCTL" probe "$path" >/dev/null || fail "probe of $path should succeed"
	assert_not_contains "$p" "VCRYPT_" "dm-crypt mapping"
	vc close vm1/d0 >/dev/null
}

# --- vcryptctl unlock (ExecStart/ExecStop of the unlock units) -----------

unlock() { # start|stop INSTANCE
	if [[ $1 == stop ]]; then
		"$VCRYPTCTL" --socket "$T/sock" unlock --stop --marker-dir "$T/run" "${@:2}"
	elif [[ $1 == start ]]; then
		"$VCRYPTCTL" --socket "$T/sock" unlock --marker-dir "$T/run" \
			--deadline "${DEADLINE:-20}" "${@:2}"
	else
		return 99
	fi
}

test_udev_unlock_helper_opens_per_vm_setting() {
	mkdir -p "$T/run"
	start_daemon
	vc provider add native p1 >/dev/null
	vc vm create web-01 >/dev/null
	vc volume create web-01 root --file "$T/v.img" --size 40M >/dev/null
	vc vm create manual --no-auto-unlock >/dev/null
	vc volume create manual d0 --file "$T/m.img" --size 40M >/dev/null

	unlock start web-01-root 2>"$T/log" || fail "unlock start failed: $(cat "$T/log")"
	[[ -b /dev/mapper/vcrypt-web-01-root ]] || fail "not opened"
	[[ -e $T/run/opened ]] || fail "no marker"
	assert_contains "$(cat "$T/log")" "opened at /dev/mapper/vcrypt-web-01-root"
	unlock start web-01-root 2>"$T/log" || fail "second start failed"
	assert_contains "$(cat "$T/log")" "already open"
	unlock stop web-01-root 2>"$T/log"
	[[ ! -e /dev/mapper/vcrypt-web-01-root ]] || fail "stop did not close"
	# The unit's stop does not hold the volume closed: a restart opens it.
	unlock start web-01-root 2>"$T/log" || fail "start after stop failed"
	[[ -b /dev/mapper/vcrypt-web-01-root ]] || fail "a restart did not open it again"
	# An admin's close does (daemon/held_closed.h): the unit leaves it
	# closed and says so, until an explicit open.
	vc close web-01/root >/dev/null
	unlock start web-01-root 2>"$T/log" || fail "start of a held volume failed"
	assert_contains "$(cat "$T/log")" "closed by an admin on this boot"
	[[ ! -e /dev/mapper/vcrypt-web-01-root ]] || fail "the unit opened a volume an admin closed"
	vc open web-01/root >/dev/null
	vc close --auto web-01/root >/dev/null
	unlock start web-01-root 2>"$T/log" || fail "start after an explicit open failed"
	[[ -b /dev/mapper/vcrypt-web-01-root ]] || fail "the hold outlived an explicit open"
	unlock stop web-01-root 2>"$T/log"

	# auto_unlock=false: nothing opened, and that is not a failure.
	unlock start manual-d0 2>"$T/log" || fail "start for a --no-auto-unlock VM failed"
	assert_contains "$(cat "$T/log")" "auto-unlock is off"
	assert_eq "" "$(vcrypt_mappings)" "no mapping for a --no-auto-unlock VM"
	# A VM vcryptd does not know: left alone.
	unlock start ghost-d0 2>"$T/log" || fail "start for an unknown VM failed"
	assert_contains "$(cat "$T/log")" "not registered"
	# Opened by someone else: stop leaves it open.
	rm -rf "$T/run" && mkdir "$T/run"
	vc open web-01/root >/dev/null
	unlock start web-01-root 2>/dev/null
	unlock stop web-01-root 2>/dev/null
	[[ -b /dev/mapper/vcrypt-web-01-root ]] || fail "stop closed a volume it did not open"
	vc close web-01/root >/dev/null
	# Bad instances.
	expect_exit 2 unlock start nodash
	expect_exit 2 unlock start "a/b/c"
	expect_exit 2 unlock start "-vm-d0"
}

# vcryptd drops a connection that sends nothing for request_timeout_ms;
# a retry after a longer backoff must not reuse it (found by the boot
# test: beta's unit failed at its 16 s backoff, past the 15 s default).
test_udev_unlock_retries_past_vcryptds_idle_timeout() {
	mkdir -p "$T/run"
	start_daemon
	setup_vm
	stop_daemon
	rm -rf "$T/state/providers/p1" # its key is unavailable from now on
	echo '{"request_timeout_ms": 300}' >"$T/vcryptd.json"
	start_daemon
	local rc=0
	DEADLINE=4 unlock start vm1-d0 2>"$T/log" || rc=$?
	assert_eq 8 "$rc" "exit code: the key stayed unavailable"
	assert_contains "$(cat "$T/log")" "retrying in 2s"
	assert_contains "$(cat "$T/log")" "giving up after 4s"
	assert_eq "" "$(vcrypt_mappings)"
}

test_udev_unlock_helper_waits_for_vcryptd() {
	mkdir -p "$T/run"
	start_daemon
	setup_vm
	stop_daemon
	# No daemon and a short deadline: bounded failure with vcryptctl's code.
	local t0=$SECONDS rc=0
	DEADLINE=3 unlock start vm1-d0 2>"$T/log" || rc=$?
	assert_eq 3 "$rc" "exit code without vcryptd"
	((SECONDS - t0 <= 8)) || fail "took $((SECONDS - t0)) s with a 3 s deadline"
	assert_contains "$(cat "$T/log")" "giving up after 3s"
	# vcryptd comes up while the helper retries.
	DEADLINE=60 unlock start vm1-d0 2>"$T/log" &
	local pid=$!
	sleep 2
	start_daemon
	wait "$pid" || fail "unlock start failed: $(cat "$T/log")"
	assert_contains "$(cat "$T/log")" "retrying in 1s"
	[[ -b /dev/mapper/vcrypt-vm1-d0 ]] || fail "not opened"
	unlock stop vm1-d0 2>/dev/null
	assert_eq "" "$(vcrypt_mappings)"
}
