# Shallow rekey (`vcryptctl vm rekey VM`) against real LUKS2 headers and
# dm-crypt: a new KEK, every DEK re-wrapped, data and LUKS2 digest
# untouched; crash consistency with vcryptd killed (-9) between two
# volumes; an interrupted rekey finished by a re-run. Provider change
# (native <-> standard) is in t_kmip.sh.

# The parts of the header a shallow rekey must not change: digests,
# keyslots, segments (canonical JSON).
header_core() {
  cryptsetup luksDump --dump-json-metadata "$1" | /usr/bin/python3 -c '
import json, sys
m = json.load(sys.stdin)
print(json.dumps({k: m[k] for k in ("digests", "keyslots", "segments")}, sort_keys=True))'
}
# sha256 of the data area (ciphertext) of image $1: everything after the
# 16 MiB LUKS2 header.
ciphertext_sha() { tail -c +$((16 * 1024 * 1024 + 1)) "$1" | sha256sum | cut -d' ' -f1; }
vm_kek() { vc --json vm show "$1" | /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["kek_id"])'; }
pending_rekey() {  # prints the KEK ID of vm1's unfinished rekey, or "none"
  /usr/bin/python3 -c '
import json, sys
v = json.load(open(sys.argv[1]))["vms"]["vm1"]
print(v["rekey"]["kek"]["id"] if "rekey" in v else "none")' "$T/state/inventory.json"
}

# vm1 on native provider p1 with disks $@ (40 MiB images), 4 MiB of
# random data each (sha in $T/<disk>.sha), all closed.
make_vm_with_data() {
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  local d p
  for d in "$@"; do
    vc volume create vm1 "$d" --file "$T/$d.img" --size 40M >/dev/null
    p=$(vc open "vm1/$d")
    write_pattern "$p" 4 "$d.sha"
    vc close "vm1/$d" >/dev/null
  done
}
data_intact() {  # disk...: open, compare, close
  local d p
  for d in "$@"; do
    p=$(vc open "vm1/$d")
    assert_eq "$(cat "$T/$d.sha")" "$(read_sha "$p" 4)" "data of vm1/$d"
    vc close "vm1/$d" >/dev/null
  done
}

test_shallow_rekey_rewraps_dek_and_keeps_data() {
  trap cleanup_loops EXIT
  start_daemon
  make_vm_with_data d0 d1 d2
  local d old new
  old=$(vm_kek vm1)
  declare -A core cipher
  for d in d0 d1 d2; do
    assert_eq "p1 $old" "$(token_kek "$T/$d.img")" "token of $d before"
    core[$d]=$(header_core "$T/$d.img")
    cipher[$d]=$(ciphertext_sha "$T/$d.img")
  done
  # d0 stays open (in use by a reader) through the rekey.
  local p0
  p0=$(vc open vm1/d0)
  exec 7<"$p0"
  local out
  out=$(vc vm rekey vm1)
  assert_contains "$out" "rekeyed VM 'vm1'"
  assert_contains "$out" "3 of 3 disk(s) re-wrapped now"
  exec 7<&-
  new=$(vm_kek vm1)
  [[ $new != "$old" ]] || fail "the VM's KEK did not change"
  for d in d0 d1 d2; do
    assert_eq "p1 $new" "$(token_kek "$T/$d.img")" "token of $d after"
    assert_eq "${core[$d]}" "$(header_core "$T/$d.img")" "digest/keyslots/segments of $d"
    assert_eq "${cipher[$d]}" "$(ciphertext_sha "$T/$d.img")" "ciphertext of $d"
  done
  assert_eq "$(cat "$T/d0.sha")" "$(read_sha "$p0" 4)" "open volume readable after the rekey"
  vc close vm1/d0 >/dev/null
  assert_eq none "$(pending_rekey)"
  # A cold daemon opens every disk with the new KEK only.
  stop_daemon
  start_daemon
  data_intact d0 d1 d2
  # A second rekey works the same way (and a re-run of a finished one is
  # a new rekey, not a no-op).
  vc vm rekey vm1 >/dev/null
  [[ $(vm_kek vm1) != "$new" ]] || fail "second rekey kept the KEK"
  data_intact d0 d1 d2
}

# vcryptd dies (SIGKILL, injected right after the 2nd of 4 token writes:
# the only way to stop it at exactly that point) in the middle of a
# rekey. Every disk must still open (2 with the new KEK, 2 with the old),
# and a re-run finishes with the same new KEK.
test_rekey_killed_between_volumes_then_rerun() {
  trap cleanup_loops EXIT
  start_daemon
  make_vm_with_data d0 d1 d2 d3
  local old pending d rc=0
  old=$(vm_kek vm1)
  stop_daemon
  VCRYPT_TEST_CRASH_AFTER_TOKEN_WRITES=2 start_daemon
  vc vm rekey vm1 >/dev/null 2>&1 || rc=$?
  [[ $rc -ne 0 ]] || fail "rekey succeeded although vcryptd was killed"
  local drc=0
  wait "$DAEMON_PID" 2>/dev/null || drc=$?
  assert_eq 137 "$drc" "vcryptd killed by SIGKILL"
  DAEMON_PID=
  pending=$(pending_rekey)
  [[ $pending != none && $pending != "$old" ]] || fail "no pending rekey recorded: $pending"
  local kinds want
  kinds=$(for d in d0 d1 d2 d3; do token_kek "$T/$d.img" | cut -d' ' -f2; done |
    sort | uniq -c | awk '{print $1, $2}' | sort | tr '\n' ';')
  want=$(printf '2 %s\n2 %s\n' "$old" "$pending" | sort | tr '\n' ';')
  assert_eq "$want" "$kinds" "tokens after the kill (count KEK-ID;...)"
  # Every disk opens in between, whichever KEK it carries.
  start_daemon
  data_intact d0 d1 d2 d3
  assert_eq "$old" "$(vm_kek vm1)" "the VM keeps its old KEK until the rekey is finished"
  local out
  out=$(vc vm rekey vm1)
  assert_contains "$out" "finished the rekey of VM 'vm1'"
  assert_contains "$out" "2 of 4 disk(s) re-wrapped now"
  assert_eq "$pending" "$(vm_kek vm1)" "the re-run used the pending KEK"
  for d in d0 d1 d2 d3; do
    assert_eq "p1 $pending" "$(token_kek "$T/$d.img")" "token of $d"
  done
  assert_eq none "$(pending_rekey)"
  stop_daemon
  start_daemon
  data_intact d0 d1 d2 d3
}

# A disk that cannot be reached keeps the rekey pending (one clear error,
# old KEK kept); once it is back, a re-run finishes.
test_rekey_with_a_missing_disk_stays_pending() {
  trap cleanup_loops EXIT
  start_daemon
  make_vm_with_data d0 d1
  local old
  old=$(vm_kek vm1)
  mv "$T/d1.img" "$T/d1.away"
  expect_exit 5 vc vm rekey vm1
  assert_contains "$ERR" "1 of 2 disk(s) still carry the old KEK"
  assert_contains "$ERR" "run 'vcryptctl vm rekey vm1' again"
  local pending
  pending=$(pending_rekey)
  assert_eq "p1 $pending" "$(token_kek "$T/d0.img")" "d0 carries the new KEK"
  assert_eq "p1 $old" "$(token_kek "$T/d1.away")" "d1 untouched"
  expect_exit 7 vc vm rekey vm1 --provider other
  assert_contains "$ERR" "unfinished rekey"
  mv "$T/d1.away" "$T/d1.img"
  vc vm rekey vm1 >/dev/null
  assert_eq "$pending" "$(vm_kek vm1)"
  assert_eq "p1 $pending" "$(token_kek "$T/d1.img")"
  data_intact d0 d1
}
