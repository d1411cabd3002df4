# --setup file of the boot test: tests/vm/run.sh runs it as root in the
# guest's overlay root before systemd starts. $VCRYPT_BOOT_W is the work
# directory (the --outdir share) prepared by boot_test.sh, $VCRYPT_BOOT_SRC
# the source tree.
set -e
W=$VCRYPT_BOOT_W
# The project as `cmake --install` laid it out (DESTDIR staging root).
# tar, not cp: /lib is a symlink to usr/lib on a merged-/usr Debian.
tar -C "$W/stage" -cf - . | tar -C / -xf - --keep-directory-symlink --no-same-owner
# vcryptd's state from the preparation boot: providers, VMs, inventory.
mkdir -p /var/lib/vcrypt
cp -a "$W/state/." /var/lib/vcrypt/
chmod 0700 /var/lib/vcrypt
systemctl enable vcryptd.socket >/dev/null 2>&1
# The harness masks libvirt; this test wants the real ordering against it.
for u in libvirtd.service libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket \
  virtlogd.socket virtlogd-admin.socket virtlockd.socket virtlockd-admin.socket; do
  rm -f "/etc/systemd/system/$u"
done
# gamma's KMS never comes up during boot: give its unit a short deadline
# (the documented per-instance drop-in).
d=/etc/systemd/system/vcrypt-unlock-net@gamma-root.service.d
mkdir -p "$d"
printf '[Service]\nEnvironment=VCRYPT_UNLOCK_DEADLINE=20\n' >"$d/deadline.conf"
# beta's KMS starts only after the test has seen the volume locked, a while
# into the boot under TCG (pykmip alone takes 30-200 s to start there): a
# long enough retry window (the documented knob).
d=/etc/systemd/system/vcrypt-unlock-net@beta-root.service.d
mkdir -p "$d"
printf '[Service]\nEnvironment=VCRYPT_UNLOCK_DEADLINE=900\nTimeoutStartSec=960\n' >"$d/deadline.conf"
# Debian's lvm2 (event activation on), installed in this guest only, and
# vcrypt's LVM filter applied as docs/boot.md says: appended to
# /etc/lvm/lvmlocal.conf. The job switches between the two copies kept here.
source "$W/env"
t0=$(date +%s%N)
"$VCRYPT_BOOT_SRC/tests/systemd/lvm2_debs.sh" install "$LVM_DEBS"
lvm version >/dev/null
echo "lvm2 installed in $((($(date +%s%N) - t0) / 1000000)) ms" >"$W/lvm2-setup.log"
cp /etc/lvm/lvmlocal.conf /etc/lvm/lvmlocal.conf.debian
filter=$(find "$W/stage" -name vcrypt-lvm-filter.conf | head -1)
[[ -z $filter ]] || cat "$filter" >>/etc/lvm/lvmlocal.conf
cp /etc/lvm/lvmlocal.conf /etc/lvm/lvmlocal.conf.vcrypt
