#!/bin/bash
# Debian's lvm2 for the boot test's guests; the host never gets it.
#
#   lvm2_debs.sh              prints a directory that holds lvm2 and the
#                             packages it needs that the host may lack,
#                             fetched once with `apt-get download` into
#                             $VCRYPT_VM_CACHE/lvm2 (default
#                             /var/cache/vcrypt-vm/lvm2); offline, a cache
#                             that holds every package is used
#   lvm2_debs.sh install DIR  (in a guest) unpacks them into / (the guest's
#                             throw-away overlay root)
#
# install unpacks rather than `dpkg -i`: the files are the same, and under
# TCG dpkg -i takes 100-220 s (reading the host's dpkg database over 9p,
# man-db triggers) against a few seconds. What the maintainer scripts would
# add is not needed: lvm2's event activation is its udev rule
# (69-lvm.rules) running `lvm pvscan` and `systemd-run lvm vgchange`, and
# lvm.conf is the package's own (event_activation = 1).
set -euo pipefail
pkgs=(lvm2 dmeventd libdevmapper-event1.02.1 liblvm2cmd2.03 libaio1 thin-provisioning-tools)

if [[ ${1:-} == install ]]; then
  dir=${2:?usage: lvm2_debs.sh install DIR}
  for deb in "$dir"/*.deb; do
    # tar, not dpkg-deb -x: /lib and /sbin are symlinks on merged-/usr.
    dpkg-deb --fsys-tarfile "$deb" | tar -C / -xf - --keep-directory-symlink --no-same-owner
  done
  systemd-tmpfiles --create lvm2.conf >/dev/null 2>&1 || true
  exit 0
fi

dir=${VCRYPT_VM_CACHE:-/var/cache/vcrypt-vm}/lvm2
complete() {
  local p
  for p in "${pkgs[@]}"; do
    compgen -G "$dir/${p}_*.deb" >/dev/null || return 1
  done
}
mkdir -p "$dir"
if ! complete; then
  # apt-get download writes into the working directory.
  (cd "$dir" && apt-get download -q "${pkgs[@]}") >&2 ||
    { echo "lvm2_debs: cannot download ${pkgs[*]} into $dir" >&2; exit 1; }
  complete || { echo "lvm2_debs: $dir lacks some of ${pkgs[*]}" >&2; exit 1; }
fi
echo "$dir"
