#!/bin/bash
# The newcomer's second command, and what CI runs (.ci/run): installs what
# is needed, then runs every test:
#   1. unit tests on the host (GoogleTest via ctest)
#   2. the same unit tests built with AddressSanitizer + UBSan
#   3. dm-level tests and integration tests inside the VM harness (Debian's
#      kernel under QEMU TCG), against a real dm-crypt
#   4. tests that need systemd as PID 1 in the VM: the boot test
#      (tests/systemd/boot_test.sh), libvirt (real libvirtd + QEMU) and the
#      Trust Authority's units (t_ta_units.sh)
#   5. two hosts (two systemd guests, shared disks, a private network):
#      live migration of a domain with vcrypt disks (tests/vm/pair_migration.sh)
# Ends with one line "all: N passed, M failed"; exits non-zero on any failure.
#   VCRYPT_TEST_SKIP_ASAN=1   skip step 2 (quicker local runs)
#   VCRYPT_TEST_FILTER=word   only integration tests whose name contains word
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
LOG=$(mktemp -d /tmp/vcrypt-test.XXXXXX)
passed=0 failed=0 status=0

section() { printf '\n===== %s =====\n' "$*"; }
count_ctest() {  # log file
  local line total fails
  line=$(grep -E 'tests passed, [0-9]+ tests failed out of [0-9]+' "$1" | tail -1)
  if [[ -z $line ]]; then failed=$((failed + 1)); return; fi
  fails=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\1/' <<<"$line")
  total=$(sed -E 's/.* ([0-9]+) tests failed out of ([0-9]+).*/\2/' <<<"$line")
  passed=$((passed + total - fails)); failed=$((failed + fails))
}
count_gtest() {  # log file
  local p f
  p=$(grep -E '^\[  PASSED  \] [0-9]+ test' "$1" | tail -1 | sed -E 's/.* ([0-9]+) test.*/\1/')
  f=$(grep -E '^\[  FAILED  \] [0-9]+ test' "$1" | tail -1 | sed -E 's/.* ([0-9]+) test.*/\1/')
  if [[ -z $p && -z $f ]]; then failed=$((failed + 1)); return; fi
  passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
}
count_summary() {  # log file, prefix of its "PREFIX: N passed, M failed" line
  local line
  line=$(grep -E "^$2: [0-9]+ passed, [0-9]+ failed" "$1" | tail -1)
  if [[ -z $line ]]; then failed=$((failed + 1)); return; fi
  passed=$((passed + $(sed -E 's/.*: ([0-9]+) passed.*/\1/' <<<"$line")))
  failed=$((failed + $(sed -E 's/.* ([0-9]+) failed/\1/' <<<"$line")))
}
count_integration() { count_summary "$1" integration; }

section "dependencies"
scripts/install-deps.sh || exit 1

section "build"
scripts/build.sh "$ROOT/build" || exit 1

section "unit tests (host)"
(cd build && ctest --output-on-failure -j2) 2>&1 | tee "$LOG/unit.log"
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
count_ctest "$LOG/unit.log"

if [[ ${VCRYPT_TEST_SKIP_ASAN:-0} != 1 ]]; then
  section "unit tests (host, ASan + UBSan)"
  if scripts/build.sh "$ROOT/build-asan" -DVCRYPT_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug; then
    (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
      ctest --output-on-failure -j2) 2>&1 | tee "$LOG/asan.log"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
    count_ctest "$LOG/asan.log"
  else
    status=1; failed=$((failed + 1))
  fi
fi

section "VM harness: dm-level tests and integration tests (real dm-crypt)"
if tests/vm/prepare.sh; then
  tests/vm/run.sh --timeout 2400 --outdir "$LOG" -- bash -c "
      '$ROOT/build/tests/dm/vcrypt_dm_tests' 2>&1 | tee /vmout/dm.log
      tests/integration/run.sh '$ROOT/build' '${VCRYPT_TEST_FILTER:-}' 2>&1 | tee /vmout/it.log
      true" 2>&1 | tee "$LOG/vm.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  # The guest wrote its logs into the outdir share.
  if [[ -f $LOG/dm.log ]]; then count_gtest "$LOG/dm.log"; else failed=$((failed + 1)); fi
  if [[ -f $LOG/it.log ]]; then count_integration "$LOG/it.log"; else failed=$((failed + 1)); fi
else
  status=1; failed=$((failed + 1))
fi

if [[ -z ${VCRYPT_TEST_FILTER:-} || ${VCRYPT_TEST_FILTER:-} == boot ]]; then
  section "VM harness, systemd as PID 1: boot test"
  tests/systemd/boot_test.sh "$ROOT/build" 2>&1 | tee "$LOG/boot.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  count_summary "$LOG/boot.log" boot
fi

if [[ -z ${VCRYPT_TEST_FILTER:-} || ${VCRYPT_TEST_FILTER:-} == libvirt ]]; then
  section "VM harness, systemd as PID 1: libvirt (libvirtd + QEMU in the guest), Trust Authority units"
  mkdir -p "$LOG/libvirt"
  tests/vm/run.sh --systemd --timeout 1800 --mem 3072 --outdir "$LOG/libvirt" -- bash -c "
      tests/integration/run.sh '$ROOT/build' libvirt,ta_units 2>&1 | tee /vmout/it.log
      true" 2>&1 | tee "$LOG/libvirt.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  if [[ -f $LOG/libvirt/it.log ]]; then count_integration "$LOG/libvirt/it.log"; else failed=$((failed + 1)); fi
fi

if [[ -z ${VCRYPT_TEST_FILTER:-} || ${VCRYPT_TEST_FILTER:-} == migration ]]; then
  section "VM harness, two hosts: live migration (docs/cluster.md)"
  tests/vm/pair_migration.sh "$ROOT/build" --outdir "$LOG/migration" 2>&1 | tee "$LOG/migration.log"
  [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
  count_summary "$LOG/migration.log" migration
fi

[[ $failed -eq 0 ]] || status=1
echo
echo "logs: $LOG"
echo "all: $passed passed, $failed failed"
exit $status
