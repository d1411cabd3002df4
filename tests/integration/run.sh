#!/bin/bash
# Runs the integration tests (tests/integration/t_*.sh, every test_*
# function) against a real device-mapper. Meant to run as root inside the
# VM harness:  tests/vm/run.sh -- tests/integration/run.sh BUILD_DIR [FILTER]
# FILTER: comma-separated substrings; a test runs if its name has any.
# After each test it checks that nothing was left behind (vcrypt mappings,
# loop devices, a running vcryptd); a leftover fails the test. A test that
# exits 77 (lib.sh: skip REASON) is reported as skipped, not passed.
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
export VCRYPT_BUILD=${1:?usage: run.sh BUILD_DIR [FILTER]}
FILTER=${2:-}
[[ $(id -u) -eq 0 ]] || { echo "integration tests need root" >&2; exit 2; }
dmsetup version >/dev/null 2>&1 || { echo "no device-mapper here: run inside tests/vm/run.sh" >&2; exit 2; }

passed=0 failed=0 failures=() skipped=()
for file in "$HERE"/t_*.sh; do
  tests=$(bash -c "source '$HERE/lib.sh'; source '$file'; declare -F" | awk '{print $3}' | grep '^test_' || true)
  for t in $tests; do
    if [[ -n $FILTER ]]; then
      match=0
      IFS=, read -ra subs <<<"$FILTER"
      for sub in "${subs[@]}"; do [[ $t == *"$sub"* ]] && match=1; done
      ((match)) || continue
    fi
    T=$(mktemp -d /tmp/vcrypt-it.XXXXXX)
    start=$(date +%s%N)
    (
      set -euo pipefail
      export T
      source "$HERE/lib.sh"
      source "$file"
      trap 'stop_daemon' EXIT
      "$t"
    ) >"$T.out" 2>&1
    rc=$?
    # Leftover check: whatever the test did, nothing may remain.
    left=$(dmsetup ls 2>/dev/null | awk '$1 ~ /^vcrypt-/ {print $1}')
    loops=$(losetup -a 2>/dev/null)
    if [[ -n $left || -n $loops ]]; then
      echo "leftovers after $t: mappings [$left] loops [$loops]" >>"$T.out"
      for m in $left; do dmsetup remove --retry "$m" >/dev/null 2>&1; done
      losetup -D 2>/dev/null
      rc=1
    fi
    ds=$((($(date +%s%N) - start) / 100000000))
    dur="$((ds / 10)).$((ds % 10))"
    if [[ $rc -eq 77 ]]; then
      skipped+=("$t"); echo "SKIP $t ($(sed -n 's/^SKIP: //p' "$T.out" | head -1))"
    elif [[ $rc -eq 0 ]]; then
      passed=$((passed + 1)); echo "PASS $t (${dur}s)"
      grep '^  # ' "$T.out" || true   # figures a passing test logged
    else
      failed=$((failed + 1)); failures+=("$t"); echo "FAIL $t (${dur}s)"
      sed 's/^/    /' "$T.out"
      [[ -f $T/vcryptd.log ]] && sed 's/^/    vcryptd| /' "$T/vcryptd.log" | tail -20
    fi
    rm -rf "$T" "$T.out"
  done
done
echo
[[ ${#skipped[@]} -eq 0 ]] || echo "skipped: ${skipped[*]}"
[[ $failed -eq 0 ]] || echo "failed: ${failures[*]}"
echo "integration: $passed passed, $failed failed"
[[ $failed -eq 0 && $passed -gt 0 ]]
