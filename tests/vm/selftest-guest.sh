#!/usr/bin/env bash
# Guest half of tests/vm/selftest.sh: runs inside the VM (via run.sh) and checks
# that device-mapper, dm-crypt with AES-NI XTS, LUKS2 on a loop file, udev and
# the shares work. Usage (inside the guest): selftest-guest.sh [DISK]
# DISK: a virtio disk attached with run.sh --disk (e.g. /dev/vda).
set -euo pipefail

disk=${1:-}
passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }
check() { # check DESCRIPTION COMMAND...
	local what=$1 out
	shift
	if out=$("$@" 2>&1); then
		ok "$what"
	else
		not_ok "$what"
		printf '%s\n' "$out" | tail -n 20 | sed 's/^/    /'
	fi
}

work=$(mktemp -d /tmp/vm-selftest.XXXXXX)
name=vm-selftest-$$
cleanup() {
	cryptsetup close "$name" 2>/dev/null || true
	cryptsetup close "$name-vd" 2>/dev/null || true
	[[ -n ${loopdev:-} ]] && losetup -d "$loopdev" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT

check "running as root in the guest kernel" \
	bash -c '[[ $(id -u) == 0 && $(uname -r) == *-amd64 && ${VCRYPT_VM:-} == 1 ]]'
check "dmsetup version talks to the kernel driver" \
	bash -c 'dmsetup version | grep -q "^Driver version"'
check "udevd is running" udevadm control --ping

# LUKS2 on a loop file, AES-XTS 512-bit key, 4096-byte sectors, key file.
truncate -s 32M "$work/vol.img"
head -c 64 /dev/urandom >"$work/key"
check "luksFormat (LUKS2, aes-xts-plain64, 512-bit key, 4096-byte sectors)" \
	cryptsetup luksFormat --batch-mode --type luks2 --cipher aes-xts-plain64 \
	--key-size 512 --sector-size 4096 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
	--key-file "$work/key" "$work/vol.img"
loopdev=$(losetup --find --show "$work/vol.img")
check "cryptsetup open on $loopdev" \
	cryptsetup open --type luks2 --key-file "$work/key" "$loopdev" "$name"
check "/dev/mapper/$name exists and is a block device" test -b "/dev/mapper/$name"
check "udev made /dev/disk/by-id/dm-name-$name" test -L "/dev/disk/by-id/dm-name-$name"
check "dmsetup table shows aes-xts-plain64 with 4096-byte sectors" \
	bash -c "dmsetup table '$name' | grep -E ' crypt aes-xts-plain64 .* sector_size:4096'"
check "write 4 MiB through dm-crypt" \
	dd if=/dev/urandom of="$work/data" bs=1M count=4 status=none
check "... and to the mapping" \
	dd if="$work/data" of="/dev/mapper/$name" bs=1M oflag=direct status=none
check "read back equals written" \
	cmp "$work/data" <(head -c 4M "/dev/mapper/$name")
check "ciphertext on the loop device (after the 16 MiB header) differs from the plaintext" \
	bash -c "! cmp -s '$work/data' <(dd if='$loopdev' bs=1M skip=16 count=4 status=none)"
check "/proc/crypto: xts-aes-aesni is registered" \
	grep -qx 'driver       : xts-aes-aesni' /proc/crypto
check "/proc/crypto: xts(aes) resolves to xts-aes-aesni (highest priority)" \
	bash -c "awk '/^name/{n=\$3} /^driver/{d=\$3} /^priority/{if (n==\"xts(aes)\" && \$3>p) {p=\$3; best=d}} END{print best}' /proc/crypto | grep -qx xts-aes-aesni"
# refcnt is 1 for a registered, unused algorithm; the open mapping holds a tfm.
check "/proc/crypto: xts-aes-aesni in use (refcnt > 1) while the mapping is open" \
	bash -c "awk '/^driver/ {d=\$3} /^refcnt/ && d==\"xts-aes-aesni\" {r=\$3} END {exit !(r>1)}' /proc/crypto"
check "cryptsetup status reports aes-xts-plain64" \
	bash -c "cryptsetup status '$name' | grep -q 'cipher:  aes-xts-plain64'"
check "cryptsetup close" cryptsetup close "$name"
check "mapping gone after close" bash -c "! test -e '/dev/mapper/$name'"
losetup -d "$loopdev"
loopdev=
check "reopen after close still reads the data" bash -c "
	l=\$(losetup --find --show '$work/vol.img') &&
	cryptsetup open --key-file '$work/key' \"\$l\" '$name' &&
	cmp '$work/data' <(head -c 4M '/dev/mapper/$name') &&
	cryptsetup close '$name' && losetup -d \"\$l\""

check "modprobe from the cached kernel tree (dm-zero)" \
	bash -c 'modprobe dm-zero && dmsetup targets | grep -q "^zero"'

if [[ -n $disk ]]; then
	check "virtio disk $disk is present" test -b "$disk"
	check "luksFormat on $disk" \
		cryptsetup luksFormat --batch-mode --type luks2 --pbkdf pbkdf2 \
		--pbkdf-force-iterations 1000 --label vm-selftest --key-file "$work/key" "$disk"
	check "udev sees crypto_LUKS on $disk" bash -c "
		udevadm trigger --action=change --settle '$disk' &&
		udevadm info --query=property --name='$disk' | grep -qx ID_FS_TYPE=crypto_LUKS &&
		test -L /dev/disk/by-label/vm-selftest"
	check "open + close on $disk" bash -c "
		cryptsetup open --key-file '$work/key' '$disk' '$name-vd' &&
		test -b '/dev/mapper/$name-vd' && cryptsetup close '$name-vd'"
fi

check "the output share is writable (/vmout)" \
	bash -c 'echo from-guest >"$VCRYPT_VM_OUTDIR/guest-was-here"'

echo "guest: $passed passed, $failed failed"
((failed == 0))
