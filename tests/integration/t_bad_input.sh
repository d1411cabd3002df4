# Bad input: one clear error line, the documented exit code, nothing left
# behind (run.sh also checks for stray mappings and loop devices).

test_missing_device_or_file() {
  start_daemon
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  expect_exit 5 vc volume create vm1 d0 --device /dev/nonexistent
  expect_exit 5 vc volume create vm1 d0 --file /nonexistent-dir/d0.img --size 40M
  expect_exit 5 vc open /dev/nonexistent
  expect_exit 5 vc volume create nosuchvm d0 --file "$T/x.img" --size 40M
  [[ ! -e $T/x.img ]] || fail "image file created for a missing VM"
  vc volume list vm1 --json | grep -q '"volumes": \[\]' || fail "inventory changed"
}

test_device_too_small() {
  start_daemon
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  expect_exit 12 vc volume create vm1 d0 --file "$T/small.img" --size 1M
  [[ ! -e $T/small.img ]] || fail "too-small image left behind"
  truncate -s 2M "$T/small2.img"
  expect_exit 12 vc volume create vm1 d0 --device "$T/small2.img"
  assert_eq 0 "$(tr -d '\0' <"$T/small2.img" | wc -c)" "small device modified"
}

test_existing_luks_or_filesystem_refused_without_force() {
  start_daemon
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  truncate -s 40M "$T/luks.img" "$T/ext4.img"
  head -c 64 /dev/urandom >"$T/key"
  cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$T/key" "$T/luks.img"
  local uuid_before
  uuid_before=$(cryptsetup luksUUID "$T/luks.img")
  expect_exit 6 vc volume create vm1 d0 --device "$T/luks.img"
  assert_contains "$ERR" "force"
  assert_eq "$uuid_before" "$(cryptsetup luksUUID "$T/luks.img")" "LUKS header untouched"
  mkfs.ext4 -q -F "$T/ext4.img"
  expect_exit 6 vc volume create vm1 d0 --device "$T/ext4.img"
  assert_eq ext4 "$(blkid -p -o value -s TYPE "$T/ext4.img")" "ext4 untouched"
  vc volume list vm1 --json | grep -q '"volumes": \[\]' || fail "inventory changed"
  # With --force it is formatted.
  vc volume create vm1 d0 --device "$T/ext4.img" --force >/dev/null
  assert_eq crypto_LUKS "$(blkid -p -o value -s TYPE "$T/ext4.img")"
  # Formatting an existing vcrypt volume again is refused too.
  vc vm create vm2 >/dev/null
  expect_exit 6 vc volume create vm2 d0 --device "$T/ext4.img"
}

test_open_plain_luks_volume_refused() {
  start_daemon
  vc provider add native p1 >/dev/null
  truncate -s 40M "$T/luks.img"
  head -c 64 /dev/urandom >"$T/key"
  cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
    --key-file "$T/key" "$T/luks.img"
  expect_exit 9 vc open "$T/luks.img"
  assert_contains "$ERR" "not a vcrypt volume"
  truncate -s 8M "$T/zero.img"
  expect_exit 9 vc open "$T/zero.img"
}

test_corrupted_token_refused() {
  start_daemon
  setup_vm
  local tok
  tok=$(cryptsetup token export --token-id 0 "$T/d0.img")
  # 1) unknown version
  cryptsetup token remove --token-id 0 "$T/d0.img"
  printf '%s' "${tok/\"vcrypt_version\":1/\"vcrypt_version\":99}" |
    cryptsetup token import --token-id 0 "$T/d0.img"
  expect_exit 9 vc open "$T/d0.img"
  assert_contains "$ERR" "99"
  # 2) a wrapped DEK with one character changed: authentication fails
  local ct new
  ct=$(printf '%s' "$tok" | sed -E 's/.*"dek":\{[^}]*"ct":"([^"]*)".*/\1/')
  if [[ ${ct:0:1} == A ]]; then new=B${ct:1}; else new=A${ct:1}; fi
  cryptsetup token remove --token-id 0 "$T/d0.img"
  printf '%s' "${tok/$ct/$new}" | cryptsetup token import --token-id 0 "$T/d0.img"
  expect_exit 13 vc open "$T/d0.img"
  # 3) not JSON we accept: a member missing
  cryptsetup token remove --token-id 0 "$T/d0.img"
  printf '%s' "${tok/\"disk\":\"d0\",/}" | cryptsetup token import --token-id 0 "$T/d0.img"
  expect_exit 9 vc open "$T/d0.img"
  # Restored, it opens again.
  cryptsetup token remove --token-id 0 "$T/d0.img"
  printf '%s' "$tok" | cryptsetup token import --token-id 0 "$T/d0.img"
  vc open vm1/d0 >/dev/null
  vc close vm1/d0 >/dev/null
}

test_token_moved_to_another_volume_does_not_unwrap() {
  start_daemon
  setup_vm
  vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
  local tok0
  tok0=$(cryptsetup token export --token-id 0 "$T/d0.img")
  cryptsetup token remove --token-id 0 "$T/d1.img"
  printf '%s' "${tok0/\"disk\":\"d0\"/\"disk\":\"d1\"}" | cryptsetup token import --token-id 0 "$T/d1.img"
  expect_exit 13 vc open "$T/d1.img"
}

test_missing_provider() {
  start_daemon
  setup_vm
  stop_daemon
  start_daemon "$T/other-state"
  expect_exit 8 vc open "$T/d0.img"
  assert_contains "$ERR" "p1"
  expect_exit 5 vc vm create vm9           # no provider configured at all
  expect_exit 5 vc vm create vm9 --provider nope
}

test_bad_names_refused() {
  start_daemon
  vc provider add native p1 >/dev/null
  local long
  long=$(printf 'v%.0s' $(seq 1 46))
  for name in "a/b" ".." "a..b" "has space" "tab	x" "$long" "_ok/../x"; do
    expect_exit 12 vc vm create "$name"
  done
  vc vm create vm1 >/dev/null
  for disk in "d-1" ".." "x y" "$(printf 'd%.0s' $(seq 1 44))"; do
    expect_exit 12 vc volume create vm1 "$disk" --file "$T/n.img" --size 40M
  done
  [[ ! -e $T/n.img ]] || fail "file created for a bad name"
  expect_exit 2 vc open "a/b/c"
  expect_exit 12 vc open "../d0"
}

test_close_in_use_refused() {
  start_daemon
  setup_vm
  local path
  path=$(vc open vm1/d0)
  exec 7<"$path"
  expect_exit 7 vc close vm1/d0
  assert_contains "$ERR" "in use"
  expect_exit 7 vc vm unregister vm1
  assert_eq vcrypt-vm1-d0 "$(vcrypt_mappings)" "still mapped"
  vc vm show vm1 >/dev/null               # unregister changed nothing
  exec 7<&-
  vc close vm1/d0 >/dev/null
  expect_exit 5 vc close vm1/d0           # not open any more
}

test_daemon_not_running() {
  expect_exit 3 "$VCRYPTCTL" --socket "$T/nothing.sock" status
  assert_contains "$ERR" "vcryptd is not running"
}

test_unauthorised_uid_refused() {
  start_daemon
  chmod 0755 "$T"
  # File permissions stop a stranger first (socket is 0600)...
  expect_exit 4 setpriv --reuid 65534 --regid 65534 --clear-groups "$VCRYPTCTL" --socket "$T/sock" status
  # ...and with the file opened up, SO_PEERCRED still refuses.
  chmod 0666 "$T/sock"
  expect_exit 4 setpriv --reuid 65534 --regid 65534 --clear-groups "$VCRYPTCTL" --socket "$T/sock" status
  assert_contains "$ERR" "not allowed"
}

test_second_daemon_on_same_socket_refused() {
  start_daemon
  local rc=0
  "$VCRYPTD" --state-dir "$T/state" --socket "$T/sock" >/dev/null 2>&1 || rc=$?
  assert_eq 7 "$rc" "second vcryptd exit code"
  vc status >/dev/null                    # the first one still answers
}

# close (whoever asks) closes only what vcrypt made: a vcrypt-* mapping of
# a volume with a vcrypt token. Other dm-crypt devices on the host, even
# one named like a vcrypt mapping, are not vcryptd's.
test_close_only_closes_mappings_vcrypt_made() {
  trap 'cryptsetup close other 2>/dev/null; cryptsetup close vcrypt-vm9-d9 2>/dev/null; stop_daemon' EXIT
  start_daemon
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  vc volume create vm1 d0 --file "$T/d0.img" --size 40M >/dev/null
  truncate -s 40M "$T/a.img" "$T/b.img"
  head -c 64 /dev/urandom >"$T/key"
  for f in a b; do
    cryptsetup luksFormat -q --type luks2 --pbkdf pbkdf2 --pbkdf-force-iterations 1000 \
      --key-file "$T/key" "$T/$f.img"
  done
  cryptsetup open --key-file "$T/key" "$T/a.img" other
  cryptsetup open --key-file "$T/key" "$T/b.img" vcrypt-vm9-d9
  expect_exit 9 vc close /dev/mapper/other
  assert_contains "$ERR" "not a vcrypt volume"
  expect_exit 9 vc close "$T/a.img"
  expect_exit 9 vc close /dev/mapper/vcrypt-vm9-d9
  [[ -e /dev/mapper/other && -e /dev/mapper/vcrypt-vm9-d9 ]] || fail "vcryptd closed a mapping it did not make"
  # Its own mappings it closes, by name and by volume.
  vc open vm1/d0 >/dev/null
  vc close /dev/mapper/vcrypt-vm1-d0 >/dev/null
  vc open vm1/d0 >/dev/null
  vc close vm1/d0 >/dev/null
  [[ ! -e /dev/mapper/vcrypt-vm1-d0 ]] || fail "vcrypt-vm1-d0 still open"
}

# Roles with a real device-mapper (docs/protocol.md, "Roles"): the
# operator group opens and closes, the monitor group only looks, neither
# exports a key.
test_roles_operator_opens_monitor_only_looks() {
  echo '{"operator_group": "operator", "monitor_group": "staff"}' >"$T/vcryptd.json"
  start_daemon
  chmod 755 "$T"
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  vc volume create vm1 d0 --file "$T/d0.img" --size 40M >/dev/null
  echo "a password" >"$T/pw" && chmod 644 "$T/pw"
  local op mon
  op=$(getent group operator | cut -d: -f3)
  mon=$(getent group staff | cut -d: -f3)
  as_op() { setpriv --reuid=65534 --regid=65534 --groups="$op" -- "$VCRYPTCTL" --socket "$T/sock" "$@"; }
  as_mon() { setpriv --reuid=65534 --regid=65534 --groups="$mon" -- "$VCRYPTCTL" --socket "$T/sock" "$@"; }
  expect_exit 4 as_mon open vm1/d0
  assert_contains "$ERR" "operator role"
  [[ ! -e /dev/mapper/vcrypt-vm1-d0 ]] || fail "the monitor group opened a volume"
  as_op open vm1/d0 >/dev/null
  [[ -e /dev/mapper/vcrypt-vm1-d0 ]] || fail "the operator group could not open"
  as_mon status >/dev/null
  expect_exit 4 as_mon close vm1/d0
  as_op close vm1/d0 >/dev/null
  [[ ! -e /dev/mapper/vcrypt-vm1-d0 ]] || fail "the operator group could not close"
  expect_exit 4 as_op provider backup p1 --out /tmp/vcrypt-never.p12 --password-file "$T/pw"
  [[ ! -e /tmp/vcrypt-never.p12 ]] || fail "a backup was written for the operator group"
  expect_exit 4 setpriv --reuid=65534 --regid=65534 --clear-groups -- "$VCRYPTCTL" --socket "$T/sock" status
}
