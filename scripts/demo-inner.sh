#!/bin/bash
# The demo proper (root, real device-mapper): a self-contained vcryptd with
# the native provider, one VM with an encrypted disk holding a filesystem,
# survived across a daemon restart.
set -euo pipefail
BUILD=${1:?usage: demo-inner.sh BUILD_DIR}
D=$(mktemp -d /tmp/vcrypt-demo.XXXXXX)
VCRYPTD=$BUILD/daemon/vcryptd
vc() { echo "\$ vcryptctl $*" >&2; "$BUILD/cli/vcryptctl" --socket "$D/sock" "$@"; }
step() { printf '\n== %s\n' "$*"; }
start() {
  "$VCRYPTD" --state-dir "$D/state" --socket "$D/sock" 2>>"$D/vcryptd.log" &
  PID=$!
  for _ in $(seq 100); do [[ -S $D/sock ]] && break; sleep 0.05; done
}
cleanup() {
  umount "$D/mnt" 2>/dev/null || true
  "$BUILD/cli/vcryptctl" --socket "$D/sock" close web01/root >/dev/null 2>&1 || true
  kill "${PID:-}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

step "start vcryptd (state in $D/state)"
start
step "create the native key provider, a VM and an encrypted 64 MiB disk"
vc provider add native local
vc vm create web01
vc volume create web01 root --file "$D/root.img" --size 64M
step "open it, make a filesystem, write a file"
dev=$(vc open web01/root)
echo "$dev"
mkfs.ext4 -q "$dev"
mkdir -p "$D/mnt"
mount "$dev" "$D/mnt"
echo "hello from an encrypted VM disk" >"$D/mnt/hello.txt"
umount "$D/mnt"
vc close web01/root
step "what is on disk: LUKS2, aes-xts-plain64, no keyslot, the vcrypt token"
cryptsetup luksDump "$D/root.img" | sed -n '1,/^Digests:/p' | grep -vE '^\s*$'
step "restart vcryptd: the KEK cache is empty, the volume opens from its header + provider"
kill "$PID"; wait "$PID" || true
start
vc status
dev=$(vc open web01/root)
dmsetup table "$(basename "$dev")" | sed -E 's/ [0-9a-f]{128} / <512-bit key hidden> /'
mount "$dev" "$D/mnt"
echo "read back: $(cat "$D/mnt/hello.txt")"
umount "$D/mnt"
step "unregister the VM: volumes closed, KEK evicted"
vc vm unregister web01
vc status
echo
echo "demo: OK"
