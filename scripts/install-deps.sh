#!/bin/bash
# Installs everything vcrypt needs to build, test and run its VM harness,
# from Debian 12 packages only. Idempotent and quick when all is present.
set -euo pipefail

PACKAGES=(
  # build
  build-essential cmake ninja-build pkg-config
  libcryptsetup-dev libdevmapper-dev libblkid-dev libssl-dev
  libboost-program-options-dev nlohmann-json3-dev libsystemd-dev
  libgtest-dev libgmock-dev googletest
  libvirt-dev libxml2-dev
  # trusted key provider and Trust Authority (docs/trusted.md); its store:
  # SQLite embedded, PostgreSQL for replicas (the server for the tests)
  libtss2-dev libcpp-httplib-dev libsqlite3-dev libpq-dev postgresql
  # runtime tools used by tests and the demo
  cryptsetup-bin dmsetup e2fsprogs util-linux openssl kmod iproute2 procps
  python3-pykmip
  swtpm swtpm-tools tpm2-tools
  # libvirt integration tests (t_libvirt.sh: real libvirtd + QEMU in the VM)
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients
  # VM harness (Debian kernel under QEMU TCG)
  qemu-system-x86 busybox-static cpio udev
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing+=("$p")
done
if ((${#missing[@]} == 0)); then
  echo "install-deps: all ${#PACKAGES[@]} packages present"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  echo "install-deps: missing packages: ${missing[*]}; run as root (or: sudo $0)" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
