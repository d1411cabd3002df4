# Volume life cycle against real dm-crypt.

test_roundtrip_across_daemon_restart() {
  start_daemon
  setup_vm 48M
  local path
  path=$(vc open vm1/d0)
  assert_eq /dev/mapper/vcrypt-vm1-d0 "$path"
  [[ -b $path ]] || fail "$path is not a block device"
  write_pattern "$path" 8 want.sha
  vc close vm1/d0 >/dev/null
  assert_eq "" "$(vcrypt_mappings)" "mapping gone after close"
  stop_daemon
  start_daemon                      # empty KEK cache, same state dir
  vc status --json | grep -q '"kek_cache": \[\]' || fail "cache not empty after restart"
  path=$(vc open vm1/d0)
  assert_eq "$(cat "$T/want.sha")" "$(read_sha "$path" 8)" "data after reopen"
  vc close vm1/d0 >/dev/null
}

test_raw_volume_holds_no_plaintext() {
  start_daemon
  setup_vm
  local path marker=VCRYPT-PLAINTEXT-MARKER-7f3a9c
  path=$(vc open vm1/d0)
  { yes "$marker" || true; } | head -c $((4 * 1024 * 1024)) >"$T/plain"
  dd if="$T/plain" of="$path" bs=1M oflag=direct conv=fsync status=none
  # Sanity: the marker is readable through the mapping...
  dd if="$path" of="$T/readback" bs=1M count=1 iflag=direct status=none
  grep -q -a "$marker" "$T/readback" || fail "marker not readable through the mapping"
  vc close vm1/d0 >/dev/null
  # ...and appears nowhere in the raw image.
  if grep -q -a "$marker" "$T/d0.img"; then fail "plaintext found in raw volume"; fi
}

test_luksdump_shows_token_and_no_keyslot() {
  start_daemon
  setup_vm
  local dump
  dump=$(cryptsetup luksDump "$T/d0.img")
  assert_contains "$dump" "Version:       	2"
  assert_contains "$dump" "Subsystem:     	vcrypt"
  assert_contains "$dump" "Label:         	vm1/d0"
  assert_contains "$dump" "vcrypt"
  # The Keyslots section is empty: the next section header follows directly.
  local slots
  slots=$(printf '%s\n' "$dump" | sed -n '/^Keyslots:/,/^Tokens:/p' | grep -cE '^\s+[0-9]+: ' || true)
  assert_eq 0 "$slots" "keyslot count"
  printf '%s\n' "$dump" | sed -n '/^Tokens:/,/^Digests:/p' | grep -qE '^\s+0: vcrypt' ||
    fail "token 0 of type vcrypt not shown: $dump"
  # The token JSON as cryptsetup exports it.
  local tok
  tok=$(cryptsetup token export --token-id 0 "$T/d0.img")
  assert_contains "$tok" '"vcrypt_version":1'
  assert_contains "$tok" '"alg":"A256GCM"'
}

test_dm_table_is_xts_aes_512_with_aesni() {
  start_daemon
  setup_vm
  local before after table
  crypto_refcnt() {
    awk '/^name/ {n=$3} /^driver/ {d=$3} /^refcnt/ {if (n=="xts(aes)" && d ~ /aesni|vaes/) print $3}' /proc/crypto | head -1
  }
  before=$(crypto_refcnt || true)
  vc open vm1/d0 >/dev/null
  table=$(dmsetup table --showkeys vcrypt-vm1-d0)
  # <start> <len> crypt <cipher> <key> <iv_offset> <dev> <offset> <#opt> <opts...>
  read -r _ _ target cipher key _ <<<"$table"
  assert_eq crypt "$target"
  assert_eq aes-xts-plain64 "$cipher"
  assert_eq 128 "${#key}" "hex key length (512-bit key)"
  assert_contains "$table" "sector_size:4096"
  # Auto workqueue bypass follows the storage under the image file; this
  # guest's /tmp is tmpfs, which has no rotational flag: no bypass.
  assert_not_contains "$table" "no_read_workqueue" "tmpfs-backed file: no bypass in auto mode"
  assert_not_contains "$table" "allow_discards" "discards are off by default"
  after=$(crypto_refcnt)
  [[ -n $after ]] || fail "no AES-NI xts(aes) driver in /proc/crypto"
  (( after > ${before:-1} )) || fail "xts-aes-aesni refcnt did not rise ($before -> $after)"
  log "xts(aes) aesni driver refcnt $before -> $after"
  vc close vm1/d0 >/dev/null
}

test_sector_size_512_and_discards() {
  start_daemon
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  vc volume create vm1 d0 --file "$T/d0.img" --size 40M --sector-size 512 >/dev/null
  vc open vm1/d0 --discards >/dev/null
  local table
  table=$(dmsetup table vcrypt-vm1-d0)
  assert_not_contains "$table" "sector_size:4096"
  assert_contains "$table" "allow_discards"
  assert_eq 512 "$(blockdev --getss /dev/mapper/vcrypt-vm1-d0)" "logical sector size"
  vc close vm1/d0 >/dev/null
}

test_unregister_closes_volumes_and_evicts_kek() {
  start_daemon
  setup_vm
  vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
  vc open vm1/d0 >/dev/null
  vc open vm1/d1 >/dev/null
  vc status --json | grep -q '"vm": "vm1"' || fail "vm1 missing from status"
  [[ $(vc status --json | grep -c '"kek_id"') -ge 2 ]] || fail "no cached KEK shown"
  vc vm unregister vm1 >/dev/null
  assert_eq "" "$(vcrypt_mappings)" "mappings closed by unregister"
  vc status --json | grep -q '"kek_cache": \[\]' || fail "KEK still cached after unregister"
  expect_exit 5 vc vm show vm1
  # The volumes remain usable: opening by path brings the VM back.
  vc open "$T/d0.img" >/dev/null
  vc vm show vm1 >/dev/null
  vc close "$T/d0.img" >/dev/null
}

test_disaster_recovery_from_backup() {
  start_daemon
  setup_vm
  local path
  path=$(vc open vm1/d0)
  write_pattern "$path" 4 want.sha
  vc close vm1/d0 >/dev/null
  echo "backup password" >"$T/pw"
  vc provider backup p1 --out "$T/p1.p12" --password-file "$T/pw" >/dev/null
  [[ $(stat -c %a "$T/p1.p12") == 600 ]] || fail "backup file mode"
  stop_daemon
  rm -rf "$T/state"                      # the host loses all its state
  start_daemon "$T/state2"
  expect_exit 8 vc open "$T/d0.img"      # no provider: key unavailable
  vc provider restore "$T/p1.p12" --name restored --password-file "$T/pw" >/dev/null
  path=$(vc open "$T/d0.img")
  assert_eq "$(cat "$T/want.sha")" "$(read_sha "$path" 4)" "data after recovery"
  vc close "$T/d0.img" >/dev/null
}

test_open_is_idempotent_and_concurrent_opens_make_one_mapping() {
  start_daemon
  setup_vm
  vc cache evict >/dev/null
  local i pids=()
  for i in 1 2 3 4 5 6; do
    vc open vm1/d0 >"$T/open.$i" 2>&1 &
    pids+=($!)
  done
  for p in "${pids[@]}"; do wait "$p" || fail "a concurrent open failed: $(cat "$T"/open.*)"; done
  assert_eq vcrypt-vm1-d0 "$(vcrypt_mappings)" "exactly one mapping"
  assert_eq /dev/mapper/vcrypt-vm1-d0 "$(vc open "$T/d0.img")" "open by path"
  vc close vm1/d0 >/dev/null
}

test_block_device_volume() {
  start_daemon
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  truncate -s 40M "$T/blk.img"
  local loop
  loop=$(losetup --find --show "$T/blk.img")
  local rc=0
  (
    vc volume create vm1 d0 --device "$loop" >/dev/null
    path=$(vc open vm1/d0)
    # Auto workqueue bypass follows the backing block device's flag.
    if [[ $(cat "/sys/block/${loop#/dev/}/queue/rotational") == 0 ]]; then
      assert_contains "$(dmsetup table vcrypt-vm1-d0)" "no_read_workqueue"
    else
      assert_not_contains "$(dmsetup table vcrypt-vm1-d0)" "no_read_workqueue"
    fi
    write_pattern "$path" 2 want.sha
    vc close vm1/d0 >/dev/null
    path=$(vc open vm1/d0)
    assert_eq "$(cat "$T/want.sha")" "$(read_sha "$path" 2)"
    vc close vm1/d0 >/dev/null
  ) || rc=$?
  losetup -d "$loop"
  return $rc
}

test_workqueue_bypass_setting() {
  local mode table
  for mode in on off; do
    "$VCRYPTD" --state-dir "$T/state" --socket "$T/sock" --bypass-workqueues "$mode" \
      >>"$T/vcryptd.log" 2>&1 &
    DAEMON_PID=$!
    for _ in $(seq 1 200); do vc status >/dev/null 2>&1 && break; sleep 0.05; done
    [[ -e $T/d0.img ]] || setup_vm
    vc open vm1/d0 >/dev/null
    table=$(dmsetup table vcrypt-vm1-d0)
    if [[ $mode == on ]]; then
      assert_contains "$table" "no_read_workqueue"
      assert_contains "$table" "no_write_workqueue"
    else
      assert_not_contains "$table" "workqueue"
    fi
    vc close vm1/d0 >/dev/null
    stop_daemon
  done
}

# open racing unregister: once unregister returns, no mapping of the VM
# exists, no KEK of it is cached and the VM is not back in the inventory,
# whichever of the two ran first. 25 rounds in CI (~100 s under TCG; the
# code before the fix failed at round 14); VCRYPT_TEST_RACE_ROUNDS=200 for
# the issue's full run (~460 s).
test_open_racing_unregister_leaves_nothing() {
  start_daemon
  setup_vm
  local rounds=${VCRYPT_TEST_RACE_ROUNDS:-25} i rc unregistered=0 opened_first=0
  for ((i = 0; i < rounds; i++)); do
    vc open vm1/d0 >/dev/null 2>&1 &
    local opener=$!
    rc=0
    vc vm unregister vm1 >/dev/null 2>"$T/unreg.err" || rc=$?
    wait $opener && opened_first=$((opened_first + 1)) || true
    if ((rc == 0)); then
      unregistered=$((unregistered + 1))
      [[ -z $(vcrypt_mappings) ]] || fail "round $i: mapping after unregister: $(vcrypt_mappings)"
      local st
      st=$(vc --json status)
      [[ $st != *'"vm": "vm1"'* ]] || fail "round $i: vm1 back after unregister: $st"
    else
      # Busy (udev still held the new mapping): close and try again.
      vc close vm1/d0 >/dev/null 2>&1 || true
      continue
    fi
    vc vm register vm1 --from "$T/d0.img" >/dev/null
  done
  log "$unregistered of $rounds rounds unregistered; the open won $opened_first times"
  ((unregistered >= rounds / 2)) || fail "only $unregistered of $rounds unregisters succeeded"
}

# A hung backing device (here a suspended dm-linear device under one
# volume) must not block the others: status and the open of another volume
# answer within 5 s; the hung volume's open fails within 5 s saying so; once
# the device is resumed it opens.
test_suspended_device_does_not_block_other_volumes() {
  trap 'dmsetup resume ittest-lin 2>/dev/null; cleanup_loops; dmsetup remove --retry ittest-lin 2>/dev/null || true' EXIT
  start_daemon
  setup_vm
  truncate -s 40M "$T/lin.img"
  local loop
  loop=$(attach_loop "$T/lin.img")
  dmsetup create ittest-lin --table "0 $(blockdev --getsz "$loop") linear $loop 0"
  vc volume create vm1 d1 --device /dev/mapper/ittest-lin >/dev/null
  dmsetup suspend ittest-lin
  local t0 ms rc
  for what in "status" "open vm1/d0"; do
    t0=$(date +%s%N)
    rc=0
    # shellcheck disable=SC2086
    timeout 30 "$VCRYPTCTL" --socket "$T/sock" $what >/dev/null 2>"$T/err" || rc=$?
    ms=$((($(date +%s%N) - t0) / 1000000))
    assert_eq 0 "$rc" "'$what' while ittest-lin is suspended: $(cat "$T/err")"
    ((ms < 5000)) || fail "'$what' took ${ms} ms while another volume's device is suspended"
    log "'$what' answered in ${ms} ms"
  done
  vc close vm1/d0 >/dev/null
  t0=$(date +%s%N)
  expect_exit 11 timeout 30 "$VCRYPTCTL" --socket "$T/sock" open vm1/d1
  ms=$((($(date +%s%N) - t0) / 1000000))
  assert_contains "$ERR" "does not respond"
  ((ms < 5000)) || fail "the open of the suspended volume took ${ms} ms to fail"
  dmsetup resume ittest-lin
  sleep 0.5
  vc open vm1/d1 >/dev/null
  vc close vm1/d1 >/dev/null
}
