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

# --- deep rekey ---------------------------------------------------------------

# Digests and segments of image $1 (what a deep rekey must change).
digests_of() {
  cryptsetup luksDump --dump-json-metadata "$1" | /usr/bin/python3 -c '
import json, sys
m = json.load(sys.stdin)
print(json.dumps(m["digests"], sort_keys=True))'
}
# "KEYSLOTS TOKEN-TYPES REQUIREMENTS" of image $1, read by cryptsetup.
header_leftovers() {
  cryptsetup luksDump --dump-json-metadata "$1" | /usr/bin/python3 -c '
import json, sys
m = json.load(sys.stdin)
types = sorted(t["type"] for t in m["tokens"].values())
reqs = m["config"].get("requirements", {}).get("mandatory", [])
print(len(m["keyslots"]), ",".join(types), ",".join(reqs) or "-")'
}

test_deep_rekey_offline_changes_dek_keeps_data() {
  trap cleanup_loops EXIT
  start_daemon
  make_vm_with_data d0 d1
  local d old new
  old=$(vm_kek vm1)
  declare -A dig cipher
  for d in d0 d1; do
    dig[$d]=$(digests_of "$T/$d.img")
    cipher[$d]=$(ciphertext_sha "$T/$d.img")
  done
  local out
  out=$(vc --json vm rekey vm1 --deep)
  assert_contains "$out" '"type":"disk.progress"' "progress events with --json"
  assert_contains "$out" '"deep": true'
  new=$(vm_kek vm1)
  [[ $new != "$old" ]] || fail "the VM's KEK did not change"
  for d in d0 d1; do
    assert_eq "p1 $new" "$(token_kek "$T/$d.img")" "token of $d after"
    [[ $(digests_of "$T/$d.img") != "${dig[$d]}" ]] || fail "LUKS2 digest of $d unchanged: same DEK"
    [[ $(ciphertext_sha "$T/$d.img") != "${cipher[$d]}" ]] || fail "ciphertext of $d unchanged"
    assert_eq "0 vcrypt -" "$(header_leftovers "$T/$d.img")" "keyslots, tokens, requirements of $d"
  done
  assert_eq none "$(pending_rekey)"
  data_intact d0 d1
  stop_daemon
  start_daemon
  data_intact d0 d1
}

# A recovery key holds the old DEK: a deep rekey refuses before creating
# anything, naming the way out.
test_deep_rekey_refused_with_recovery_key() {
  trap cleanup_loops EXIT
  start_daemon
  make_vm_with_data d0
  vc volume recovery-key add vm1/d0 >/dev/null
  local old
  old=$(vm_kek vm1)
  expect_exit 7 vc vm rekey vm1 --deep
  assert_contains "$ERR" "recovery-key remove vm1/d0"
  assert_eq "$old" "$(vm_kek vm1)"
  assert_eq none "$(pending_rekey)"
  assert_eq "1 vcrypt,vcrypt-recovery -" "$(header_leftovers "$T/d0.img")"
}

# vcryptd and its reencryption helper are killed (-9) in the middle of
# reencrypting a 256 MiB volume. The header then records an unfinished
# reencryption; the volume must still open with its data intact, and
# vcryptd finishes the rekey by itself at its next start.
test_deep_rekey_killed_mid_reencryption_resumes() {
  trap cleanup_loops EXIT
  start_daemon
  setup_vm 272M
  local p
  p=$(vc open vm1/d0)
  write_pattern "$p" 256 d0.sha
  vc close vm1/d0 >/dev/null
  local old
  old=$(vm_kek vm1)
  # The test hook slows each reencrypted chunk down, so the kill below
  # lands in the middle whatever the speed of this machine.
  stop_daemon
  VCRYPT_TEST_REENCRYPT_CHUNK_DELAY_MS=300 start_daemon
  vc --json vm rekey vm1 --deep >"$T/events" 2>&1 &
  local cli=$!
  # Wait for a tenth of the data, then kill the helper and vcryptd.
  local done_pct=0
  for _ in $(seq 1 3000); do
    done_pct=$(/usr/bin/python3 -c '
import json, sys
pct = 0
for line in open(sys.argv[1]):
    try: e = json.loads(line)["event"]
    except Exception: continue
    if e.get("type") == "disk.progress" and e["total_bytes"]:
        pct = 100 * e["done_bytes"] // e["total_bytes"]
print(pct)' "$T/events")
    [[ $done_pct -ge 10 ]] && break
    kill -0 $cli 2>/dev/null || fail "rekey ended before it could be killed: $(cat "$T/events")"
    sleep 0.5
  done
  [[ $done_pct -ge 10 ]] || fail "reencryption did not progress: $(tail -3 "$T/events")"
  pkill -9 -f -- '--reencrypt-helper' || fail "no reencryption helper running"
  kill -9 "$DAEMON_PID"
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=
  wait $cli 2>/dev/null || true
  log "killed at ${done_pct}% of 256 MiB"
  local left
  left=$(header_leftovers "$T/d0.img")
  assert_contains "$left" "online-reencrypt" "header records the unfinished reencryption"
  assert_contains "$left" "vcrypt-reencrypt" "the marker is still there"
  [[ $(pending_rekey) != none ]] || fail "no pending rekey in the inventory"
  # vcryptd at start resumes and finishes it.
  start_daemon
  for _ in $(seq 1 3000); do
    [[ $(pending_rekey) == none ]] && break
    sleep 0.2
  done
  assert_eq none "$(pending_rekey)" "vcryptd finished the rekey at start"
  assert_contains "$(cat "$T/vcryptd.log")" "finished the interrupted deep rekey of VM 'vm1'"
  [[ $(vm_kek vm1) != "$old" ]] || fail "the VM's KEK did not change"
  assert_eq "0 vcrypt -" "$(header_leftovers "$T/d0.img")" "nothing left in the header"
  p=$(vc open vm1/d0)
  assert_eq "$(cat "$T/d0.sha")" "$(read_sha "$p" 256)" "data after the resumed reencryption"
  vc close vm1/d0 >/dev/null
}

# Online deep rekey: the volume stays open and a writer keeps writing
# numbered rounds of a known pattern to it during the whole reencryption.
# Afterwards (closed, reopened with the new DEK) every block holds the
# last round written: nothing lost, nothing torn.
test_deep_rekey_online_with_writer() {
  trap cleanup_loops EXIT
  start_daemon
  setup_vm 80M
  local p
  p=$(vc open vm1/d0)
  # Blocks 0..31 (1 MiB each); round r writes "r:i:" repeated into block
  # i, fsyncs, then records r in $T/round.
  cat >"$T/writer.py" <<'PY'
import os, sys, time
dev, stop, done = sys.argv[1], sys.argv[2], sys.argv[3]
fd = os.open(dev, os.O_WRONLY)
r = 0
while True:
    r += 1
    for i in range(32):
        pat = f"{r}:{i}:".encode()
        block = (pat * (1048576 // len(pat) + 1))[:1048576]
        os.pwrite(fd, block, i * 1048576)
    os.fsync(fd)
    open(done, "w").write(str(r))
    if os.path.exists(stop):
        break
PY
  /usr/bin/python3 "$T/writer.py" "$p" "$T/stop" "$T/round" &
  local writer=$!
  while [[ ! -s $T/round ]]; do sleep 0.2; done
  local out
  out=$(vc vm rekey vm1 --deep)
  assert_contains "$out" "rekeyed VM 'vm1'"
  local during
  during=$(cat "$T/round")
  touch "$T/stop"
  wait $writer || fail "the writer failed during the online reencryption"
  local rounds
  rounds=$(cat "$T/round")
  log "writer completed $rounds rounds, $during of them before the rekey returned"
  [[ $during -ge 2 ]] || fail "the writer did not write during the rekey ($during rounds)"
  assert_eq "0 vcrypt -" "$(header_leftovers "$T/d0.img")"
  vc close vm1/d0 >/dev/null
  p=$(vc open vm1/d0)
  /usr/bin/python3 - "$p" "$rounds" <<'PY' || fail "pattern not intact after the online deep rekey"
import os, sys
dev, r = sys.argv[1], int(sys.argv[2])
fd = os.open(dev, os.O_RDONLY | os.O_DIRECT)
import mmap
buf = mmap.mmap(-1, 1048576)
for i in range(32):
    os.preadv(fd, [buf], i * 1048576)
    pat = f"{r}:{i}:".encode()
    want = (pat * (1048576 // len(pat) + 1))[:1048576]
    if bytes(buf) != want:
        print(f"block {i} does not hold round {r}", file=sys.stderr)
        sys.exit(1)
PY
  vc close vm1/d0 >/dev/null
}

# open and close never wait for a running deep rekey: an open of the open
# volume answers at once (it is mapped), a close answers within seconds
# (busy) instead of after the whole reencryption, and status answers.
test_open_and_close_do_not_wait_for_a_deep_rekey() {
  trap cleanup_loops EXIT
  VCRYPT_TEST_REENCRYPT_CHUNK_DELAY_MS=500 start_daemon
  setup_vm 80M
  vc open vm1/d0 >/dev/null
  vc --json vm rekey vm1 --deep >"$T/events" 2>&1 &
  local cli=$!
  for _ in $(seq 1 600); do
    grep -q '"disk.progress"' "$T/events" && break
    kill -0 $cli 2>/dev/null || fail "the rekey ended early: $(cat "$T/events")"
    sleep 0.1
  done
  grep -q '"disk.progress"' "$T/events" || fail "no reencryption started"
  local t0 ms out
  t0=$(date +%s%N)
  out=$(vc open vm1/d0)
  ms=$((($(date +%s%N) - t0) / 1000000))
  assert_eq /dev/mapper/vcrypt-vm1-d0 "$out"
  ((ms < 3000)) || fail "open of an open volume waited ${ms} ms for the deep rekey"
  t0=$(date +%s%N)
  vc status >/dev/null
  ms=$((($(date +%s%N) - t0) / 1000000))
  ((ms < 3000)) || fail "status waited ${ms} ms"
  t0=$(date +%s%N)
  expect_exit 7 vc close vm1/d0
  ms=$((($(date +%s%N) - t0) / 1000000))
  ((ms < 15000)) || fail "close waited ${ms} ms for the deep rekey"
  kill -0 $cli 2>/dev/null || fail "the rekey was over before the checks: they proved nothing"
  log "during the deep rekey: open answered at once, close in ${ms} ms (busy)"
  wait $cli || fail "the deep rekey failed: $(tail -3 "$T/events")"
  vc close vm1/d0 >/dev/null
}
