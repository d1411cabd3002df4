# vcryptctl attach/detach and the libvirt qemu hook (docs/libvirt.md)
# against a real libvirtd and QEMU in the guest, with real dm-crypt
# volumes.
#
# Needs systemd as PID 1 (tests/vm/run.sh --systemd) to run libvirtd as
# Debian runs it; elsewhere the libvirtd tests skip (exit 77) with a
# message. Domains are TCG ('qemu'), without an OS, started --paused.
#
# They use machine q35 with ACPI PCI hot-plug turned off (QEMU's
# ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off), so PCIe root ports
# do native hot-plug: a disk hot-plugged into a guest that never ran stays
# in a powered-off slot, and QEMU then unplugs it without asking the guest.
# With ACPI hot-plug (machine 'pc', or q35's default) a paused guest can
# never acknowledge an unplug; test_libvirt_detach_waits_for_the_guest
# checks that case on purpose.
#
# The hook is installed as a wrapper that passes this test's vcryptd
# socket (--socket). libvirtd is (re)started once per boot, after the first
# hook file exists: it looks for hooks only when it starts, and later runs
# whatever qemu.d holds at each call. Under TCG in a loaded guest every
# systemctl, virsh and domain start takes seconds, so tests keep them few.

LIBVIRT_URI=qemu:///system
HOOK_BIN=$VCRYPT_BUILD/libvirt/vcrypt-libvirt-hook
HOOK_DST=/etc/libvirt/hooks/qemu.d/vcrypt

lv() { virsh -q -c "$LIBVIRT_URI" "$@"; }

LIBVIRTD_MARK=/run/vcrypt-test-libvirtd-hooked

# Skips (exit 77) unless systemd is PID 1; then installs the hook, makes
# sure libvirtd runs and has seen it, and arranges the cleanup.
libvirt_up() {
	[[ -d /run/systemd/system ]] ||
		skip "needs systemd as PID 1 (run in tests/vm/run.sh --systemd)"
	[[ -x $HOOK_BIN ]] || fail "$HOOK_BIN missing (build first)"
	trap libvirt_cleanup EXIT
	mkdir -p "$(dirname "$HOOK_DST")"
	printf '#!/bin/sh\nexec %q --socket %q "$@"\n' "$HOOK_BIN" "$T/sock" >"$HOOK_DST"
	chmod 0755 "$HOOK_DST"
	if [[ ! -f $LIBVIRTD_MARK ]]; then
		# The VM harness masks libvirt's units (they slow its boot down).
		local u masked=0
		for u in libvirtd.service libvirtd.socket libvirtd-ro.socket \
			libvirtd-admin.socket virtlogd.service virtlogd.socket \
			virtlogd-admin.socket virtlockd.socket virtlockd-admin.socket; do
			if [[ $(readlink "/etc/systemd/system/$u" 2>/dev/null) == /dev/null ]]; then
				rm -f "/etc/systemd/system/$u"
				masked=1
			fi
		done
		((masked == 0)) || systemctl daemon-reload
		systemctl restart libvirtd.service || {
			journalctl -u libvirtd --no-pager | tail -20
			fail "libvirtd did not start"
		}
		touch "$LIBVIRTD_MARK"
	fi
	local i
	for i in $(seq 1 100); do
		lv version >/dev/null 2>&1 && return 0
		sleep 0.2
	done
	fail "libvirtd does not answer on $LIBVIRT_URI"
}

libvirt_cleanup() {
	local d
	# While vcryptd still runs, so that the release hook can close.
	if [[ -f $T/domains ]]; then
		while read -r d; do
			lv destroy "$d" >/dev/null 2>&1 || true
			lv undefine "$d" >/dev/null 2>&1 || true
		done <"$T/domains"
	fi
	rm -f "$HOOK_DST"
	for d in $(vcrypt_mappings); do
		[[ -n ${DAEMON_PID:-} ]] && vc close "/dev/mapper/$d" >/dev/null 2>&1 || true
	done
	stop_daemon
	for d in $(vcrypt_mappings); do dmsetup remove --retry "$d" >/dev/null 2>&1 || true; done
}

# Defines domain $1 (machine $2: q35 or pc) with the <disk> elements in $3.
define_domain() {
	local name=$1 machine=$2 disks=${3:-} extra='' cmdline=''
	if [[ $machine == q35 ]]; then
		extra="<controller type='pci' model='pcie-root'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>
    <controller type='pci' model='pcie-root-port'/>"
		cmdline="<qemu:commandline>
    <qemu:arg value='-global'/>
    <qemu:arg value='ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off'/>
  </qemu:commandline>"
	fi
	cat >"$T/$name.xml" <<-EOF
	<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
	  <name>$name</name>
	  <memory unit='MiB'>64</memory>
	  <vcpu>1</vcpu>
	  <os><type arch='x86_64' machine='$machine'>hvm</type></os>
	  <features><acpi/></features>
	  <devices>
	    <emulator>/usr/bin/qemu-system-x86_64</emulator>
	    $extra
	    <controller type='usb' model='none'/>
	    <memballoon model='none'/>
	    $disks
	  </devices>
	  $cmdline
	</domain>
	EOF
	echo "$name" >>"$T/domains"
	lv define "$T/$name.xml" >/dev/null || fail "cannot define $name"
}

vcrypt_disk_xml() {  # vm disk target
	echo "<disk type='block' device='disk'><driver name='qemu' type='raw' cache='none' io='native'/><source dev='/dev/mapper/vcrypt-$1-$2'/><target dev='$3' bus='virtio'/></disk>"
}

# "TARGET SOURCE" lines of the running domain (or --inactive).
blklist() { lv domblklist "$@" | awk '{print $1, $2}'; }

test_libvirt_attach_and_detach() {
	libvirt_up
	start_daemon
	setup_vm
	vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
	define_domain lvat q35
	lv start --paused lvat >/dev/null

	local out
	out=$(vc attach vm1/d0 --domain lvat)
	assert_eq "attached /dev/mapper/vcrypt-vm1-d0 to domain 'lvat' as vda (live and persistent)" "$out"
	assert_eq "vcrypt-vm1-d0" "$(vcrypt_mappings)" "attach opened the volume"
	assert_eq "vda /dev/mapper/vcrypt-vm1-d0" "$(blklist lvat)" "virsh domblklist"
	assert_eq "vda /dev/mapper/vcrypt-vm1-d0" "$(blklist lvat --inactive)" "persistent config"
	local xml
	xml=$(lv dumpxml lvat)
	assert_contains "$xml" "<driver name='qemu' type='raw' cache='none' io='native'/>"
	assert_contains "$xml" "<target dev='vda' bus='virtio'/>"
	# What another host needs travels in the domain's vcrypt metadata
	# (docs/libvirt.md), live and persistent, and survives a define of the
	# dumped XML.
	local uuid md
	uuid=$(vc --json volume list vm1 | python3 -c 'import json,sys; print([v["uuid"] for v in json.load(sys.stdin)["volumes"] if v["disk"]=="d0"][0])')
	md=$(lv metadata lvat urn:vcrypt:libvirt:volumes:1)
	assert_contains "$md" "vm=\"vm1\" disk=\"d0\" uuid=\"$uuid\""
	assert_contains "$md" "provider-type=\"native\""
	assert_contains "$md" "image=\"$T/d0.img\""
	md=$(lv metadata lvat urn:vcrypt:libvirt:volumes:1 --config)
	assert_contains "$md" "uuid=\"$uuid\""
	lv dumpxml --inactive lvat >"$T/lvat-dump.xml"
	lv define "$T/lvat-dump.xml" >/dev/null || fail "define of the dumped XML"
	md=$(lv metadata lvat urn:vcrypt:libvirt:volumes:1 --config)
	assert_contains "$md" "uuid=\"$uuid\""

	# Once only; a taken target is refused; nothing changes.
	expect_exit 6 vc attach vm1/d0 --domain lvat
	assert_contains "$ERR" "already attached to domain 'lvat' as vda"
	expect_exit 6 vc attach vm1/d1 --domain lvat --target vda
	assert_eq "vcrypt-vm1-d0" "$(vcrypt_mappings)" "d1 not opened by a refused attach"
	# A second disk with an explicit target, JSON output.
	out=$(vc --json attach vm1/d1 --domain lvat --target vdc)
	assert_contains "$out" '"target": "vdc"'
	assert_contains "$out" '"opened": true'
	assert_eq "vda /dev/mapper/vcrypt-vm1-d0
vdc /dev/mapper/vcrypt-vm1-d1" "$(blklist lvat)"

	out=$(vc detach vm1/d0 --domain lvat)
	assert_eq "detached /dev/mapper/vcrypt-vm1-d0 (vda) from domain 'lvat'; closed vm1/d0" "$out"
	assert_eq "vdc /dev/mapper/vcrypt-vm1-d1" "$(blklist lvat)" "live after detach"
	assert_eq "vdc /dev/mapper/vcrypt-vm1-d1" "$(blklist lvat --inactive)" "config after detach"
	assert_eq "vcrypt-vm1-d1" "$(vcrypt_mappings)" "detach closed the volume"
	expect_exit 5 vc detach vm1/d0 --domain lvat
	assert_contains "$ERR" "is not attached to domain 'lvat'"

	vc detach vm1/d1 --domain lvat >/dev/null
	assert_eq "" "$(blklist lvat)"
	assert_eq "" "$(vcrypt_mappings)"
	# The entries went with the disks.
	if lv metadata lvat urn:vcrypt:libvirt:volumes:1 >/dev/null 2>&1; then
		fail "detach left the vcrypt metadata behind"
	fi

	# Errors: unknown domain, unknown volume (nothing attached, nothing open).
	expect_exit 5 vc attach vm1/d0 --domain no-such-domain
	expect_exit 5 vc attach vm1/nodisk --domain lvat
	assert_eq "" "$(blklist lvat)"
	expect_exit 3 vc attach vm1/d0 --domain lvat --connect "qemu+unix:///system?socket=$T/nolibvirt"
	stop_daemon
	expect_exit 3 vc attach vm1/d0 --domain lvat
	assert_eq "" "$(blklist lvat)"
}

# A shut-off domain gets the disk in its configuration only; the hook opens
# it when the domain starts and closes it when the domain stops.
test_libvirt_hook_opens_and_closes() {
	libvirt_up
	start_daemon
	setup_vm
	define_domain lvhook q35 "$(vcrypt_disk_xml vm1 d0 vdb)"
	assert_eq "" "$(vcrypt_mappings)"
	lv start --paused lvhook >/dev/null
	assert_eq "vcrypt-vm1-d0" "$(vcrypt_mappings)" "the hook opened the volume"
	assert_eq "vdb /dev/mapper/vcrypt-vm1-d0" "$(blklist lvhook)"
	lv destroy lvhook >/dev/null
	assert_eq "" "$(vcrypt_mappings)" "the hook closed the volume"

	# attach to the shut-off domain: configuration only, nothing opened.
	vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
	local out
	out=$(vc attach vm1/d1 --domain lvhook)
	assert_contains "$out" "as vda (persistent configuration; the hook opens it when the domain starts)"
	assert_eq "" "$(vcrypt_mappings)"
	# d0 open before the start: the hook leaves it, opens d1; release
	# closes both (docs/libvirt.md: a domain's volumes close with it).
	vc open vm1/d0 >/dev/null
	lv start --paused lvhook >/dev/null
	assert_eq "vcrypt-vm1-d0
vcrypt-vm1-d1" "$(vcrypt_mappings)" "both open while the domain runs"
	lv destroy lvhook >/dev/null
	assert_eq "" "$(vcrypt_mappings)" "released volumes are closed, even one open before"
}

# A volume that cannot be unlocked fails the start with the hook's line,
# and a volume the hook opened for that start is closed again.
test_libvirt_hook_refuses_locked_volumes() {
	libvirt_up
	start_daemon
	setup_vm
	define_domain lvlocked q35 "$(vcrypt_disk_xml vm1 d0 vdb)$(vcrypt_disk_xml ghost d0 vdc)"
	local rc=0 err
	err=$(lv start --paused lvlocked 2>&1) || rc=$?
	[[ $rc -ne 0 ]] || fail "the domain started with a volume that cannot be unlocked"
	assert_contains "$err" "vcrypt: cannot unlock ghost/d0 for domain lvlocked: "
	assert_eq "shut off" "$(lv domstate lvlocked)"
	assert_eq "" "$(vcrypt_mappings)" "vm1/d0 closed again"
	log "virsh: $(tr '\n' ' ' <<<"$err")"

	# vcryptd not running: same, with its reason.
	stop_daemon
	define_domain lvlocked2 q35 "$(vcrypt_disk_xml vm1 d0 vdb)"
	rc=0
	err=$(lv start --paused lvlocked2 2>&1) || rc=$?
	[[ $rc -ne 0 ]] || fail "the domain started without vcryptd"
	assert_contains "$err" "vcrypt: cannot unlock vm1/d0 for domain lvlocked2: vcryptd is not running"
	assert_eq "shut off" "$(lv domstate lvlocked2)"
}

# With ACPI hot-plug a paused guest never acknowledges the unplug: detach
# gives up after --timeout with exit 7 and leaves the persistent config and
# the volume alone; stopping the domain then releases (closes) the volume.
test_libvirt_detach_waits_for_the_guest() {
	libvirt_up
	start_daemon
	setup_vm
	define_domain lvpc pc
	lv start --paused lvpc >/dev/null
	vc attach vm1/d0 --domain lvpc >/dev/null
	assert_eq "vda /dev/mapper/vcrypt-vm1-d0" "$(blklist lvpc)"
	expect_exit 7 vc detach vm1/d0 --domain lvpc --timeout 1
	assert_contains "$ERR" "has not released vda"
	assert_eq "vda /dev/mapper/vcrypt-vm1-d0" "$(blklist lvpc --inactive)" "config unchanged"
	assert_eq "vcrypt-vm1-d0" "$(vcrypt_mappings)" "volume still open"
	# Again: the unplug is already requested; still waiting, still exit 7.
	expect_exit 7 vc detach vm1/d0 --domain lvpc --timeout 1
	lv destroy lvpc >/dev/null
	assert_eq "" "$(vcrypt_mappings)" "release closed the volume"
	# Shut off now: detach edits the configuration only.
	local out
	out=$(vc detach vm1/d0 --domain lvpc)
	assert_eq "detached /dev/mapper/vcrypt-vm1-d0 (vda) from domain 'lvpc'; vm1/d0 was not open" "$out"
	assert_eq "" "$(blklist lvpc --inactive)"
}

# The install rule: the hook in libexec, a symlink in libvirt's hook dir.
test_libvirt_hook_install_rule() {
	DESTDIR=$T/inst cmake --install "$VCRYPT_BUILD/libvirt" >/dev/null
	local prefix dir
	prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$VCRYPT_BUILD/CMakeCache.txt")
	dir=$(sed -n 's/^VCRYPT_LIBVIRT_HOOKS_DIR:PATH=//p' "$VCRYPT_BUILD/CMakeCache.txt")
	[[ -n $dir ]] || fail "VCRYPT_LIBVIRT_HOOKS_DIR not in the cache"
	[[ -x $T/inst$prefix/libexec/vcrypt/vcrypt-libvirt-hook ]] || fail "hook not installed"
	[[ -L $T/inst$dir/vcrypt ]] || fail "no symlink $dir/vcrypt"
	assert_eq "$prefix/libexec/vcrypt/vcrypt-libvirt-hook" "$(readlink "$T/inst$dir/vcrypt")"
}
