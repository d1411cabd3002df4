#!/usr/bin/env bash
# tests/vm/selftest.sh - prove that the VM harness works: boots the guest
# (tests/vm/run.sh) and checks device-mapper, LUKS2/dm-crypt with AES-NI XTS,
# udev, a virtio disk, the output share, exit-status propagation and the
# timeout. Prints the time of each boot. Exit status 0 iff all checks pass.
set -euo pipefail

SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
RUN=$SCRIPT_DIR/run.sh

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok - $*"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $*"; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/vcrypt-vm-selftest.XXXXXX")
trap 'rm -rf -- "$tmp"' EXIT

now() { date +%s.%N; }
secs() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.1f", e - s }'; }

"$SCRIPT_DIR/prepare.sh" >/dev/null

# 1. Everything that needs the guest kernel, in one boot.
truncate -s 64M "$tmp/disk.img"
mkdir -p "$tmp/out"
echo "# boot 1: device-mapper / LUKS2 / udev checks"
t0=$(now)
rc=0
"$RUN" --disk "$tmp/disk.img" --outdir "$tmp/out" -- \
	bash "$SCRIPT_DIR/selftest-guest.sh" /dev/vda || rc=$?
t1=$(now)
if ((rc == 0)); then ok "guest checks passed"; else not_ok "guest checks (run.sh exit status $rc)"; fi
if [[ $(cat "$tmp/out/guest-was-here" 2>/dev/null) == from-guest ]]; then
	ok "file written to /vmout arrived in --outdir"
else
	not_ok "file written to /vmout did not arrive in --outdir"
fi
echo "# boot 1 took $(secs "$t0" "$t1") s (boot + checks + poweroff)"

# 2. Exit status propagation, environment allow-list, working directory.
echo "# boot 2: exit status, environment, working directory"
cd "$SCRIPT_DIR"
t0=$(now)
rc=0
out=$(VCRYPT_SELFTEST_VAR='a b$c' SELFTEST_SECRET=nope "$RUN" -- bash -c '
	echo "cwd=$PWD"
	echo "var=$VCRYPT_SELFTEST_VAR"
	echo "secret=${SELFTEST_SECRET:-unset}"
	exit 3') || rc=$?
t1=$(now)
printf '%s\n' "$out" | sed 's/^/    /'
if ((rc == 3)); then ok "COMMAND exiting 3 makes run.sh exit 3"; else not_ok "expected exit status 3, got $rc"; fi
grep -qx "cwd=$SCRIPT_DIR" <<<"$out" && ok "guest runs in the caller's working directory" ||
	not_ok "working directory not passed"
grep -qxF 'var=a b$c' <<<"$out" && ok "VCRYPT_* variables are passed verbatim" ||
	not_ok "VCRYPT_* variable not passed"
grep -qx 'secret=unset' <<<"$out" && ok "variables outside the allow-list are not passed" ||
	not_ok "a variable outside the allow-list leaked"
echo "# boot 2 took $(secs "$t0" "$t1") s (boot + trivial command + poweroff)"

# 3. The timeout kills the guest (qemu gone, temp dir removed).
echo "# boot 3: timeout"
mkdir -p "$tmp/rt"
rc=0
TMPDIR=$tmp/rt "$RUN" --no-udev --timeout 20 -- sleep 600 2>"$tmp/timeout.err" || rc=$?
if ((rc == 124)) && grep -q timeout "$tmp/timeout.err"; then
	ok "--timeout kills the guest, exit status 124"
else
	not_ok "--timeout: exit status $rc, stderr: $(cat "$tmp/timeout.err")"
fi
if [[ -z $(ls -A "$tmp/rt") ]] && ! pgrep -f -- "$tmp/rt/" >/dev/null; then
	ok "no qemu process or temp dir left behind"
else
	not_ok "left behind: $(ls -A "$tmp/rt") $(pgrep -af -- "$tmp/rt/" || true)"
fi

echo "selftest: $passed passed, $failed failed"
((failed == 0))
