#!/bin/bash
# An installed vcryptctl finds its helper vcrypt-attach (cli/attach.h):
# `cmake --install` of cli/ into a staging tree (DESTDIR, as a packager
# does, so the tree is also not where the prefix says), then attach and
# detach through the installed vcryptctl reach libvirt's test driver. The
# installed udev probe vcrypt-probe (probe/probe.h) finds the installed
# vcryptctl, its fallback, the other way round.
# Host only (no dm, no vcryptd); about 0.5 s.
#   attach_helper_test.sh BUILD_DIR
set -euo pipefail
BUILD=$1
T=$(mktemp -d /tmp/vcrypt-install-XXXXXX)
trap 'rm -rf "$T"' EXIT
DESTDIR=$T cmake --install "$BUILD/cli" >/dev/null
prefix=$(sed -n 's/^CMAKE_INSTALL_PREFIX:PATH=//p' "$BUILD/CMakeCache.txt")
ctl=$(find "$T$prefix" -name vcryptctl -type f)
helper=$(find "$T$prefix" -name vcrypt-attach -type f)
[[ -x $ctl && -x $helper ]] || { echo "FAIL: not installed: '$ctl' '$helper'"; exit 1; }
[[ $helper == */libexec/vcrypt/vcrypt-attach ]] || { echo "FAIL: helper at $helper"; exit 1; }
set +e
err=$("$ctl" --socket /nonexistent/sock attach vm1/d0 --domain no-such-domain \
  --connect test:///default 2>&1 >/dev/null)
code=$?
set -e
[[ $code -eq 5 && $err == "vcryptctl: no libvirt domain named 'no-such-domain'"* ]] ||
  { echo "FAIL: exit $code: $err"; exit 1; }
# vcrypt-probe has no answer for a file of zeros and hands it to the
# installed vcryptctl probe: "not a vcrypt volume", exit 9.
probe=$(find "$T$prefix" -name vcrypt-probe -type f)
[[ $probe == */libexec/vcrypt/vcrypt-probe ]] || { echo "FAIL: probe at '$probe'"; exit 1; }
truncate -s 20M "$T/zeros.img"
set +e
err=$("$probe" "$T/zeros.img" 2>&1 >/dev/null)
code=$?
set -e
[[ $code -eq 9 && $(wc -l <<<"$err") -eq 1 && $err == "vcryptctl: "*zeros.img* ]] ||
  { echo "FAIL: vcrypt-probe exit $code: $err"; exit 1; }
# Without the helper: one line, exit 1.
rm "$helper"
set +e
err=$("$ctl" attach vm1/d0 --domain x 2>&1 >/dev/null)
code=$?
set -e
[[ $code -eq 1 && $(wc -l <<<"$err") -eq 1 && $err == *"need the helper program"* ]] ||
  { echo "FAIL: exit $code without the helper: $err"; exit 1; }
# Without vcryptctl, vcrypt-probe says so in one line, exit 1.
rm "$ctl"
set +e
err=$("$probe" "$T/zeros.img" 2>&1 >/dev/null)
code=$?
set -e
[[ $code -eq 1 && $(wc -l <<<"$err") -eq 1 && $err == *"install vcrypt completely"* ]] ||
  { echo "FAIL: vcrypt-probe exit $code without vcryptctl: $err"; exit 1; }
echo "PASS"
