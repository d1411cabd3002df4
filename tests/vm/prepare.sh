#!/usr/bin/env bash
# tests/vm/prepare.sh - fetch a Debian kernel and build the initramfs for the
# vcrypt test VM (see tests/vm/README.md).
#
# Idempotent and cheap when everything is cached. Prints the kernel cache
# directory (containing vmlinuz, initrd.img, kver, root/) as the last line on
# stdout; all progress messages go to stderr.
#
# Environment:
#   VCRYPT_VM_CACHE       cache directory (default /var/cache/vcrypt-vm)
#   VCRYPT_VM_KERNEL_PKG  kernel package to use instead of the one that
#                         linux-image-amd64 depends on (e.g. linux-image-6.1.0-56-amd64)
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
CACHE=${VCRYPT_VM_CACHE:-/var/cache/vcrypt-vm}
QUIET=0

# Modules the guest loads from the initramfs, in addition to everything they
# depend on (resolved from modules.dep). Names as modprobe knows them.
MODULES=(
	virtio_pci virtio_blk virtio-rng 9pnet_virtio 9p overlay
	dm-mod dm-crypt dm-integrity
	cryptd crypto_simd aesni-intel xts
	loop algif_skcipher ext4
)
# Host packages this harness needs (command -v / dpkg are checked first).
PACKAGES=(qemu-system-x86 busybox-static cpio kmod udev xz-utils)

CLEANUP=()
CACHE_LOG=$(mktemp "${TMPDIR:-/tmp}/vcrypt-vm-prepare.XXXXXX")
CLEANUP+=("$CACHE_LOG")
cleanup() { ((${#CLEANUP[@]} == 0)) || rm -rf -- "${CLEANUP[@]}"; }
trap cleanup EXIT

log() { [[ $QUIET == 1 ]] || printf '[vm-prepare] %s\n' "$*" >&2; }
die() { printf '[vm-prepare] error: %s\n' "$*" >&2; exit 1; }

usage() {
	cat <<-EOF
	usage: $0 [-q|--quiet]
	Downloads the Debian kernel and builds the initramfs for tests/vm/run.sh.
	Cache: \${VCRYPT_VM_CACHE:-/var/cache/vcrypt-vm} (now: $CACHE)
	EOF
}

while (($#)); do
	case $1 in
		-q|--quiet) QUIET=1 ;;
		-h|--help) usage; exit 0 ;;
		*) usage >&2; die "unknown argument: $1" ;;
	esac
	shift
done

is_installed() {
	[[ $(dpkg-query -W -f='${Status}' "$1" 2>/dev/null) == "install ok installed" ]]
}

APT_UPDATED=0
apt_update_once() {
	[[ $APT_UPDATED == 1 ]] && return 0
	log "apt-get update"
	apt-get update -qq >"$CACHE_LOG" 2>&1 || { cat "$CACHE_LOG" >&2; die "apt-get update failed"; }
	APT_UPDATED=1
}

ensure_packages() {
	local missing=() p
	# Fast path: the binaries are there.
	if command -v qemu-system-x86_64 >/dev/null && [[ -x /bin/busybox ]] &&
		command -v cpio >/dev/null && command -v depmod >/dev/null && command -v xz >/dev/null &&
		[[ -x /lib/systemd/systemd-udevd ]] && is_installed busybox-static; then
		return 0
	fi
	for p in "${PACKAGES[@]}"; do
		is_installed "$p" || missing+=("$p")
	done
	((${#missing[@]})) || return 0
	[[ $(id -u) == 0 ]] || die "missing packages (${missing[*]}); run as root or install them"
	apt_update_once
	log "installing ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		"${missing[@]}" >"$CACHE_LOG" 2>&1 ||
		{ cat "$CACHE_LOG" >&2; die "apt-get install ${missing[*]} failed"; }
}

# Name of the kernel image package: linux-image-amd64's dependency.
resolve_kernel_pkg() {
	if [[ -n ${VCRYPT_VM_KERNEL_PKG:-} ]]; then
		printf '%s\n' "$VCRYPT_VM_KERNEL_PKG"
		return
	fi
	# apt-cache takes ~1 s; remember its answer until the apt lists change.
	local memo=$CACHE/.resolved-kernel-pkg lists=/var/lib/apt/lists pkg
	if [[ -s $memo && -z $(find "$lists" -maxdepth 1 -newer "$memo" -name '*Packages*' 2>/dev/null) ]]; then
		cat "$memo"
		return
	fi
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
		awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9]/ { print $2; exit }')
	[[ -n $pkg ]] || return 0
	printf '%s\n' "$pkg" >"$memo.$$" 2>/dev/null && mv -f "$memo.$$" "$memo" 2>/dev/null || true
	printf '%s\n' "$pkg"
}

# The newest fully prepared kernel in the cache (offline fallback).
newest_cached_kver() {
	local d
	for d in "$CACHE"/*/; do
		[[ -f $d/.extracted ]] && basename "$d"
	done | sort -V | tail -n1 | grep .
}

# Key of the initramfs contents: this script, the init script, busybox.
initrd_key() {
	{
		cat "$SCRIPT_DIR/prepare.sh" "$SCRIPT_DIR/initramfs-init.sh"
		printf '%s\n' "${MODULES[@]}"
		dpkg-query -W -f='${Version}' busybox-static 2>/dev/null || true
	} | sha256sum | cut -c1-16
}

# Print the modules.dep paths for MODULES, dependencies first, no duplicates.
resolve_modules() {
	local moddir=$1
	# Map name -> (path, deps), then a depth-first post-order walk.
	awk -v want="${MODULES[*]}" '
			function norm(s) { gsub(/-/, "_", s); return s }
			function base(p,   n) { n = p; sub(/.*\//, "", n); sub(/\.ko(\.[a-z]+)?$/, "", n); return norm(n) }
			function visit(path,   i, n, parts) {
				if (path in seen) return
				seen[path] = 1
				n = split(deps[path], parts, " ")
				for (i = 1; i <= n; i++) visit(parts[i])
				print path
			}
			{
				p = $1; sub(/:$/, "", p)
				d = ""; for (i = 2; i <= NF; i++) d = d " " $i
				deps[p] = d; byname[base(p)] = p
			}
			END {
				n = split(want, w, " ")
				for (i = 1; i <= n; i++) {
					k = norm(w[i])
					if (!(k in byname)) { print "MISSING " w[i] > "/dev/stderr"; missing = 1; continue }
					visit(byname[k])
				}
				exit missing
			}' "$moddir/modules.dep"
}

build_initrd() {
	local kdir=$1 kver=$2 key=$3
	local moddir=$kdir/root/lib/modules/$kver stage mods m
	stage=$(mktemp -d "$CACHE/.initrd.XXXXXX")
	CLEANUP+=("$stage")
	mkdir -p "$stage"/{bin,dev,etc,proc,sys,lower,rw,newroot} "$stage/lib/modules/$kver"
	cp /bin/busybox "$stage/bin/busybox"
	local applet
	for applet in $(/bin/busybox --list); do
		[[ $applet == busybox ]] || ln -s busybox "$stage/bin/$applet"
	done
	mknod -m 600 "$stage/dev/console" c 5 1 || die "mknod /dev/console failed (run as root)"
	mknod -m 666 "$stage/dev/null" c 1 3 || die "mknod /dev/null failed (run as root)"
	mods=$(resolve_modules "$moddir") || die "some modules are not in $moddir/modules.dep"
	for m in $mods; do
		mkdir -p "$stage/lib/modules/$kver/$(dirname "$m")"
		cp "$moddir/$m" "$stage/lib/modules/$kver/$m"
	done
	printf '%s\n' $mods >"$stage/etc/vm-modules"
	printf '%s\n' "$kver" >"$stage/etc/vm-kver"
	install -m 755 "$SCRIPT_DIR/initramfs-init.sh" "$stage/init"
	(cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc --quiet) |
		gzip -1 >"$kdir/.initrd.img.tmp" || die "building the initramfs failed"
	mv -f "$kdir/.initrd.img.tmp" "$kdir/initrd.img"
	printf '%s\n' "$key" >"$kdir/initrd.key"
	log "initramfs: $kdir/initrd.img ($(du -h "$kdir/initrd.img" | cut -f1), $(wc -w <<<"$mods") modules)"
}

# Uncompressed ELF vmlinux next to the bzImage: qemu boots it directly through
# its PVH entry point, which saves the ~3 s that the in-guest XZ decompression
# takes under TCG. Optional: run.sh falls back to vmlinuz.
extract_vmlinux() {
	local kdir=$1 off
	rm -f "$kdir/vmlinux" "$kdir/.vmlinux.tmp"
	off=$(LC_ALL=C grep -obUaP '\xfd7zXZ\x00' "$kdir/vmlinuz" | head -n1 | cut -d: -f1) || true
	if [[ -n $off ]] && command -v xz >/dev/null &&
		xz -dc --single-stream <(tail -c +"$((off + 1))" "$kdir/vmlinuz") >"$kdir/.vmlinux.tmp" 2>/dev/null &&
		[[ $(head -c4 "$kdir/.vmlinux.tmp" | od -An -tx1 | tr -d ' ') == 7f454c46 ]]; then
		mv -f "$kdir/.vmlinux.tmp" "$kdir/vmlinux"
		log "vmlinux: $kdir/vmlinux (PVH boot)"
	else
		rm -f "$kdir/.vmlinux.tmp"
		log "warning: cannot extract an ELF vmlinux from vmlinuz; booting the bzImage (slower)"
		touch "$kdir/.no-vmlinux"
	fi
}

extract_kernel() {
	local kdir=$1 kver=$2 pkg=$3 tmp deb
	tmp=$(mktemp -d "$CACHE/.kernel.XXXXXX")
	CLEANUP+=("$tmp")
	log "downloading $pkg"
	# _apt cannot write into a root-only directory: fetch as root, unsandboxed.
	if ! (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2); then
		[[ $(id -u) == 0 ]] || { log "apt-get download $pkg failed"; return 1; }
		apt_update_once
		(cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "$pkg" >&2) ||
			{ log "apt-get download $pkg failed"; return 1; }
	fi
	deb=$(ls "$tmp"/*.deb)
	log "extracting $(basename "$deb")"
	dpkg-deb -x "$deb" "$tmp/root" || die "dpkg-deb -x failed"
	[[ -f $tmp/root/boot/vmlinuz-$kver ]] || die "$pkg has no /boot/vmlinuz-$kver"
	depmod -b "$tmp/root" "$kver" || die "depmod failed"
	mkdir -p "$kdir"
	rm -rf "$kdir/root"
	mv "$tmp/root" "$kdir/root"
	ln -sfn "root/boot/vmlinuz-$kver" "$kdir/vmlinuz"
	printf '%s\n' "$kver" >"$kdir/kver"
	printf '%s\n' "$pkg" >"$kdir/package"
	touch "$kdir/.extracted"
}

ensure_packages

mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
pkg=$(resolve_kernel_pkg || true)
if [[ -z $pkg && $(id -u) == 0 ]]; then
	apt_update_once
	pkg=$(resolve_kernel_pkg || true)
fi
if [[ -n $pkg ]]; then
	kver=${pkg#linux-image-}
else
	kver=$(newest_cached_kver) ||
		die "cannot resolve the kernel package (apt-cache depends linux-image-amd64) and nothing is cached in $CACHE"
	log "apt cannot resolve linux-image-amd64; using cached kernel $kver"
	pkg=linux-image-$kver
fi
kdir=$CACHE/$kver
key=$(initrd_key)

up_to_date() {
	[[ -f $kdir/.extracted && -f $kdir/initrd.img && -f $kdir/initrd.key &&
		( -f $kdir/vmlinux || -f $kdir/.no-vmlinux ) &&
		$(cat "$kdir/initrd.key") == "$key" ]]
}

if ! up_to_date; then
	# Serialise concurrent preparations; re-check once we hold the lock.
	exec 9>"$CACHE/.lock"
	flock 9
	if ! up_to_date; then
		if [[ ! -f $kdir/.extracted ]] && ! extract_kernel "$kdir" "$kver" "$pkg"; then
			# Offline, or the archive moved on: use what the cache has.
			kver=$(newest_cached_kver) || die "cannot download $pkg and nothing is cached in $CACHE"
			log "using the cached kernel $kver instead of $pkg"
			kdir=$CACHE/$kver
		fi
		[[ -f $kdir/vmlinux || -f $kdir/.no-vmlinux ]] || extract_vmlinux "$kdir"
		if ! up_to_date; then
			log "building the initramfs for $kver"
			build_initrd "$kdir" "$kver" "$key"
		fi
	fi
	exec 9>&-
	log "ready: $kdir"
fi
printf '%s\n' "$kdir"
