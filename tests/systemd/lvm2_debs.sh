#!/bin/bash
# Prints a directory that holds Debian's lvm2 and the packages it needs
# that the host may lack, fetched once with `apt-get download` into
# $VCRYPT_VM_CACHE/lvm2 (default /var/cache/vcrypt-vm/lvm2). The boot test's
# guests install them into their throw-away overlay root (`dpkg -i`); the
# host never gets lvm2. Offline, a cache that holds every package is used.
set -euo pipefail
dir=${VCRYPT_VM_CACHE:-/var/cache/vcrypt-vm}/lvm2
pkgs=(lvm2 dmeventd libdevmapper-event1.02.1 liblvm2cmd2.03 libaio1 thin-provisioning-tools)
complete() {
  local p
  for p in "${pkgs[@]}"; do
    compgen -G "$dir/${p}_*.deb" >/dev/null || return 1
  done
}
mkdir -p "$dir"
if ! complete; then
  # apt-get download writes into the working directory.
  (cd "$dir" && apt-get download "${pkgs[@]}") >&2 ||
    { echo "lvm2_debs: cannot download ${pkgs[*]} into $dir" >&2; exit 1; }
  complete || { echo "lvm2_debs: $dir lacks some of ${pkgs[*]}" >&2; exit 1; }
fi
echo "$dir"
