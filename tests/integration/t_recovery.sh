# Recovery keys (docs/recovery.md) against real dm-crypt: the key printed
# once opens the volume with a stock `cryptsetup open`, with neither
# vcryptd nor its key provider around; after `remove` it opens nothing.

recovery_key_of() {  # VM/DISK: adds a recovery key, prints it
  vc --json volume recovery-key add "$1" |
    /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)["recovery_key"])'
}

test_recovery_key_opens_without_vcrypt_or_provider() {
  trap cleanup_loops EXIT
  start_daemon
  setup_vm
  local p key
  p=$(vc open vm1/d0)
  write_pattern "$p" 4 d0.sha
  vc close vm1/d0 >/dev/null
  key=$(recovery_key_of vm1/d0)
  [[ $key =~ ^[a-z]{5}(-[a-z]{5}){7}$ ]] || fail "unexpected recovery key format"
  # No vcryptd, and no key provider: the state directory (the native
  # primary key) is out of reach.
  stop_daemon
  mv "$T/state" "$T/state.away"
  printf '%s' "$key" | cryptsetup open --type luks2 --key-file - "$T/d0.img" vcrypt-rectest ||
    fail "cryptsetup open with the recovery key failed"
  assert_eq "$(cat "$T/d0.sha")" "$(read_sha /dev/mapper/vcrypt-rectest 4)" "data opened by the recovery key"
  cryptsetup close vcrypt-rectest
  if printf 'wrong-key' | cryptsetup open --test-passphrase --key-file - "$T/d0.img" 2>/dev/null; then
    fail "a wrong key opened the volume"
  fi
  # Removed: the key opens nothing any more, the volume still opens
  # through vcrypt.
  mv "$T/state.away" "$T/state"
  start_daemon
  vc volume recovery-key remove vm1/d0 >/dev/null
  if printf '%s' "$key" | cryptsetup open --test-passphrase --key-file - "$T/d0.img" 2>/dev/null; then
    fail "the removed recovery key still opens the volume"
  fi
  p=$(vc open vm1/d0)
  assert_eq "$(cat "$T/d0.sha")" "$(read_sha "$p" 4)" "data through vcrypt after the removal"
  vc close vm1/d0 >/dev/null
}
