# Volume states in status/vm show/volume list (unlocked, locked with the
# last failed open as reason, unavailable), open by name with a stale
# device path, open --all and the vcrypt-unlock-files helper, against real
# dm-crypt and udev.


# The line of VM/DISK in the human `vcryptctl status`.
status_line() { vc status | grep "^$1 "; }

wait_for_path() {  # path seconds
  local i
  for ((i = 0; i < $2 * 10; i++)); do
    [[ -e $1 ]] && return 0
    sleep 0.1
  done
  return 1
}

test_status_unlocked_locked_and_unavailable() {
  start_daemon
  setup_vm
  vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
  assert_eq "locked|||" "$(vol_state vm1 d0)" "a fresh volume"
  vc open vm1/d0 >/dev/null
  assert_eq "unlocked|||" "$(vol_state vm1 d0)"
  assert_eq /dev/mapper/vcrypt-vm1-d0 "$(vol_field vm1 d0 mapping)"
  assert_eq 0 "$(vol_field vm1 d0 open_count)"
  assert_contains "$(status_line vm1/d0)" "unlocked"
  assert_contains "$(status_line vm1/d0)" "/dev/mapper/vcrypt-vm1-d0"
  vc vm show vm1 --json | grep -q '"state": "unlocked"' || fail "vm show: not unlocked"
  vc close vm1/d0 >/dev/null
  assert_eq "locked|||" "$(vol_state vm1 d0)" "closed again"

  # The image file goes away: unavailable, then the failed open is the reason.
  mv "$T/d1.img" "$T/d1.moved"
  local s
  s=$(vol_state vm1 d1)
  [[ $s == "unavailable|not_found|image file $T/d1.img does not exist|20"* ]] || fail "status: $s"
  expect_exit 5 vc open vm1/d1
  assert_contains "$ERR" "$T/d1.img"
  s=$(vol_state vm1 d1)
  [[ $s == "unavailable|not_found|${ERR#vcryptctl: }|20"* ]] || fail "status after open: $s"
  assert_contains "$(status_line vm1/d1)" "unavailable"
  assert_contains "$(status_line vm1/d1)" "(not found: image file $T/d1.img"
  assert_eq "" "$(vcrypt_mappings)" "nothing mapped"
  # Back in place: locked with the last failure, cleared by a good open.
  mv "$T/d1.moved" "$T/d1.img"
  s=$(vol_state vm1 d1)
  [[ $s == "locked|not_found|"* ]] || fail "status with the file back: $s"
  vc open vm1/d1 >/dev/null
  assert_eq "unlocked|||" "$(vol_state vm1 d1)" "reason cleared by the open"
  vc close vm1/d1 >/dev/null
  assert_eq "locked|||" "$(vol_state vm1 d1)"
}

test_status_locked_reason_key_unavailable() {
  start_daemon
  setup_vm
  # The provider's files disappear behind vcryptd's back; after a restart
  # vcryptd no longer has it.
  stop_daemon
  rm -rf "$T/state/providers/p1"
  start_daemon
  expect_exit 8 vc open vm1/d0
  local s
  s=$(vol_state vm1 d0)
  [[ $s == "locked|key_unavailable|"*"'p1'"*"|20"* ]] || fail "status: $s"
  assert_contains "$(status_line vm1/d0)" "(key unavailable: "
  assert_contains "$(status_line vm1/d0)" ", since 20"
  # In memory only: gone after a restart, and never in the state files.
  if grep -rq "is not configured" "$T/state"; then fail "a reason was written to the state directory"; fi
  stop_daemon
  start_daemon
  assert_eq "locked|||" "$(vol_state vm1 d0)" "reason after a restart"
}

# A block device comes back under another name: open VM/DISK finds it
# through /dev/disk/by-uuid (udev), checks its header and moves the
# inventory there.
test_open_by_name_follows_moved_block_device() {
  trap cleanup_loops EXIT
  start_daemon
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  truncate -s 40M "$T/blk.img" "$T/other.img"
  local loop1 loop2 uuid path
  loop1=$(attach_loop "$T/blk.img")
  vc volume create vm1 d0 --device "$loop1" >/dev/null
  uuid=$(vol_field vm1 d0 uuid)
  path=$(vc open vm1/d0)
  write_pattern "$path" 2 want.sha
  vc close vm1/d0 >/dev/null
  losetup -d "$loop1"
  # Something else takes the old name; the volume comes back as another one.
  attach_loop "$T/other.img" >/dev/null
  loop2=$(attach_loop "$T/blk.img")
  [[ $loop2 != "$loop1" ]] || fail "the image came back as $loop1 again"
  udevadm settle --timeout=30
  wait_for_path "/dev/disk/by-uuid/$uuid" 10 || fail "udev made no /dev/disk/by-uuid/$uuid"
  assert_eq "$loop1" "$(vol_field vm1 d0 device)" "inventory before the open"
  path=$(vc open vm1/d0)
  assert_eq /dev/mapper/vcrypt-vm1-d0 "$path"
  assert_eq "$(cat "$T/want.sha")" "$(read_sha "$path" 2)" "data through the moved device"
  assert_eq "$loop2" "$(vol_field vm1 d0 device)" "inventory follows the device"
  grep -q "\"device\": \"$loop2\"" "$T/state/inventory.json" || fail "inventory file not updated"
  assert_eq "unlocked|||" "$(vol_state vm1 d0)"
  vc close vm1/d0 >/dev/null
  log "$loop1 -> $loop2 via /dev/disk/by-uuid/$uuid"

  # Neither the path nor the link: not found, with the reason recorded.
  losetup -d "$loop2"
  udevadm settle --timeout=30
  [[ ! -e /dev/disk/by-uuid/$uuid ]] || fail "udev kept /dev/disk/by-uuid/$uuid"
  expect_exit 5 vc open vm1/d0
  assert_contains "$ERR" "volume vm1/d0 (LUKS UUID $uuid) not found"
  assert_contains "$ERR" "/dev/disk/by-uuid/$uuid"
  local s
  s=$(vol_state vm1 d0)
  [[ $s == *"|not_found|${ERR#vcryptctl: }|"* ]] || fail "status: $s"
  assert_eq "$loop2" "$(vol_field vm1 d0 device)" "inventory unchanged"
}

test_open_all_and_file_backed() {
  trap cleanup_loops EXIT
  start_daemon
  setup_vm
  vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
  vc vm create vm2 --no-auto-unlock >/dev/null
  vc volume create vm2 d0 --file "$T/vm2.img" --size 40M >/dev/null
  vc vm create vm3 >/dev/null
  truncate -s 40M "$T/blk.img"
  local loop out
  loop=$(attach_loop "$T/blk.img")
  vc volume create vm3 d0 --device "$loop" >/dev/null

  out=$(vc open --all --file-backed)
  assert_eq "vm1/d0: opened /dev/mapper/vcrypt-vm1-d0
vm1/d1: opened /dev/mapper/vcrypt-vm1-d1" "$out"
  assert_eq "vcrypt-vm1-d0 vcrypt-vm1-d1" "$(vcrypt_mappings | tr '\n' ' ' | sed 's/ $//')"
  out=$(vc open --all)
  assert_contains "$out" "vm1/d0: already open /dev/mapper/vcrypt-vm1-d0"
  assert_contains "$out" "vm3/d0: opened /dev/mapper/vcrypt-vm3-d0"
  assert_not_contains "$out" "vm2" "--no-auto-unlock VM opened"
  assert_eq 3 "$(vcrypt_mappings | wc -l)"
  for v in vm1/d0 vm1/d1 vm3/d0; do vc close "$v" >/dev/null; done

  # One volume cannot open: the others do, one line for it, its exit code.
  rm "$T/d1.img"
  expect_exit 5 vc open --all
  assert_contains "$ERR" "vcryptctl: vm1/d1: image file $T/d1.img of volume vm1/d1 does not exist"
  assert_eq "vcrypt-vm1-d0 vcrypt-vm3-d0" "$(vcrypt_mappings | tr '\n' ' ' | sed 's/ $//')"
  out=$(vc --json open --all 2>/dev/null) && fail "open --all succeeded without d1.img"
  assert_contains "$out" '"failed": 1'
  assert_contains "$out" '"already_open": 2'
  local s
  s=$(vol_state vm1 d1)
  [[ $s == "unavailable|not_found|"* ]] || fail "status: $s"
  for v in vm1/d0 vm3/d0; do vc close "$v" >/dev/null; done
}

unlock() {  # start-all|stop-all [--file-backed]
  case $1 in
    start-all) "$VCRYPTCTL" --socket "$T/sock" unlock --all --marker-dir "$T/run" \
                 --deadline "${DEADLINE:-20}" "${@:2}" ;;
    stop-all) "$VCRYPTCTL" --socket "$T/sock" unlock --stop --all --marker-dir "$T/run" "${@:2}" ;;
    *) return 99 ;;
  esac
}

# ExecStart/ExecStop of vcrypt-unlock-files.service (`vcryptctl unlock
# --all`; its retries while a volume fails transiently are unit-tested in
# tests/unit/unlock_test.cc).
test_unlock_files_helper() {
  trap cleanup_loops EXIT
  mkdir -p "$T/run"
  start_daemon
  setup_vm
  vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
  truncate -s 40M "$T/blk.img"
  local loop
  loop=$(attach_loop "$T/blk.img")
  vc volume create vm1 blk --device "$loop" >/dev/null

  unlock start-all --file-backed 2>"$T/log" || fail "start-all failed: $(cat "$T/log")"
  assert_contains "$(cat "$T/log")" "file-backed volumes: opened vm1/d0 vm1/d1"
  assert_eq "vcrypt-vm1-d0 vcrypt-vm1-d1" "$(vcrypt_mappings | tr '\n' ' ' | sed 's/ $//')"
  unlock start-all --file-backed 2>"$T/log" || fail "second start-all failed"
  assert_contains "$(cat "$T/log")" "all open"
  # stop-all closes what start-all opened, nothing else.
  vc open vm1/blk >/dev/null
  unlock stop-all --file-backed 2>"$T/log"
  assert_contains "$(cat "$T/log")" "vm1/d0: closed"
  assert_eq vcrypt-vm1-blk "$(vcrypt_mappings)"
  vc close vm1/blk >/dev/null

  # vcryptd comes up late: retried.
  stop_daemon
  DEADLINE=60 unlock start-all --file-backed 2>"$T/log" &
  local pid=$! rc=0 i
  for ((i = 0; i < 300; i++)); do
    grep -q "retrying in" "$T/log" && break
    sleep 0.1
  done
  assert_contains "$(cat "$T/log")" "vcryptd is not running"
  start_daemon
  wait "$pid" || fail "start-all failed: $(cat "$T/log")"
  assert_contains "$(cat "$T/log")" "file-backed volumes: opened vm1/d0 vm1/d1"
  unlock stop-all --file-backed 2>/dev/null
  assert_eq "" "$(vcrypt_mappings)"

  # A volume that fails for good: no retry, the others open, its code.
  mv "$T/d1.img" "$T/d1.moved"
  local before
  before=$(grep -c "op=open_all" "$T/vcryptd.log")
  unlock start-all --file-backed 2>"$T/log" || rc=$?
  assert_eq 5 "$rc" "exit code"
  assert_eq $((before + 1)) "$(grep -c "op=open_all" "$T/vcryptd.log")" "open --all runs: no retry"
  assert_contains "$(cat "$T/log")" "vm1/d1: image file $T/d1.img of volume vm1/d1 does not exist"
  assert_eq vcrypt-vm1-d0 "$(vcrypt_mappings)"
  unlock stop-all --file-backed 2>/dev/null
  assert_eq "" "$(vcrypt_mappings)"
  mv "$T/d1.moved" "$T/d1.img"
  expect_exit 2 unlock start-all --bogus
}

# Both LUKS2 header copies overwritten: locked, reason invalid_volume
# naming the image; nothing mapped.
test_locked_reason_header_damaged() {
  trap cleanup_loops EXIT
  start_daemon
  setup_vm
  dd if=/dev/zero of="$T/d0.img" bs=4096 count=8 conv=notrunc status=none
  expect_exit 9 vc open vm1/d0
  local s
  s=$(vol_state vm1 d0)
  [[ $s == "locked|invalid_volume|"*"$T/d0.img"* ]] || fail "status: $s"
  assert_eq "" "$(vcrypt_mappings)"
}
