# The standard key provider end to end: vcryptd + a real pykmip-server on
# loopback + real dm-crypt. Each test runs its own KMS (fresh database).

add_kms_provider() {  # [extra servers before the real one]
  vc provider add standard kms --kms "${1:+$1,}127.0.0.1:$KMS_PORT" --ca "$KMS/certs/ca.pem" \
    --cert "$KMS/certs/client.pem" --key "$KMS/certs/client-key.pem" >/dev/null
}

# A fresh KMS, vcryptd, provider "kms" and VM vm1 on it.
kms_vm() {
  kms_start
  start_daemon
  add_kms_provider
  vc vm create vm1 --provider kms >/dev/null
}

# True if the bytes of file $1 occur in any file under the paths given.
bytes_found_in() {
  local needle=$1; shift
  /usr/bin/python3 - "$needle" "$@" <<'PY'
import os, sys
needle = open(sys.argv[1], "rb").read()
assert len(needle) == 32, len(needle)
for top in sys.argv[2:]:
    paths = [top] if os.path.isfile(top) else [os.path.join(d, f) for d, _, fs in os.walk(top) for f in fs]
    for p in paths:
        with open(p, "rb") as f:
            if needle in f.read():
                print(p); sys.exit(0)
sys.exit(1)
PY
}

test_kms_vm_two_disks_roundtrip_and_kek_nowhere_on_disk() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_vm
  vc volume create vm1 d0 --file "$T/d0.img" --size 40M >/dev/null
  vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
  local p0 p1 id0 id1
  p0=$(vc open vm1/d0); p1=$(vc open vm1/d1)
  write_pattern "$p0" 4 d0.sha
  write_pattern "$p1" 4 d1.sha
  vc close vm1/d0 >/dev/null; vc close vm1/d1 >/dev/null
  stop_daemon
  start_daemon                                   # empty KEK cache
  vc status --json | grep -q '"kek_cache": \[\]' || fail "cache not empty after restart"
  p0=$(vc open vm1/d0); p1=$(vc open vm1/d1)
  assert_eq "$(cat "$T/d0.sha")" "$(read_sha "$p0" 4)" "d0 data"
  assert_eq "$(cat "$T/d1.sha")" "$(read_sha "$p1" 4)" "d1 data"
  vc close vm1/d0 >/dev/null; vc close vm1/d1 >/dev/null
  id0=$(cryptsetup token export --token-id 0 "$T/d0.img" | sed -E 's/.*"kek":\{"data":\{\},"id":"([^"]*)".*/\1/')
  id1=$(cryptsetup token export --token-id 0 "$T/d1.img" | sed -E 's/.*"kek":\{"data":\{\},"id":"([^"]*)".*/\1/')
  [[ -n $id0 && $id0 != *'{'* ]] || fail "no KEK ID in token: $(cryptsetup token export --token-id 0 "$T/d0.img")"
  assert_eq "$id0" "$id1" "both disks carry the same KEK ID"
  assert_eq "$id0" "$(vc vm show vm1 --json | sed -n 's/.*"kek_id": "\(.*\)".*/\1/p' | head -1)"
  assert_eq ACTIVE "$(kms_key state "$id0")" "KEK state on the KMS"
  kms_key get "$id0" "$T/kek.bin"
  if found=$(bytes_found_in "$T/kek.bin" "$T/state" "$T/d0.img" "$T/d1.img"); then
    fail "KEK bytes found in $found"
  fi
  # Sanity check of the search itself: it does find the key where it is.
  cp "$T/kek.bin" "$T/state/canary"
  bytes_found_in "$T/kek.bin" "$T/state" >/dev/null || fail "search does not work"
  rm "$T/state/canary" "$T/kek.bin"

  # Max age (docs/providers.md): the KEK revoked on the KMS while d0 is
  # open; past the provider's KEK cache maximum age a new open fails with
  # "revoked" (audited), and the open mapping keeps running.
  vc provider set kms --kek-cache-max-age 2s >/dev/null
  p0=$(vc open vm1/d0)
  kms_key revoke "$id0"
  assert_eq DEACTIVATED "$(kms_key state "$id0")" "KEK state after revoke"
  sleep 2.2
  expect_exit 8 vc open vm1/d1
  assert_contains "$ERR" "KEK $id0 of provider 'kms': revoked on the KMS (state Deactivated)"
  # Evicted by the open that found it too old, or by the 30 s sweep before.
  grep -Eq "op=kek.evict request=(open|housekeeping) vm=vm1 .*kek_id=$id0 reason=max-age" "$T/vcryptd.log" ||
    fail "no kek.evict reason=max-age in the audit log"
  grep -q "op=kek.fetch request=open vm=vm1 disk=d1 .*source=provider result=key_unavailable error=.*revoked on the KMS" "$T/vcryptd.log" ||
    fail "no failed kek.fetch in the audit log"
  [[ ! -e /dev/mapper/vcrypt-vm1-d1 ]] || fail "a refused open left a mapping"
  assert_eq "$(cat "$T/d0.sha")" "$(read_sha "$p0" 4)" "d0 still readable after the revocation"
  vc close vm1/d0 >/dev/null
}

# vm1/d0 on the KMS provider "kms"; then the KMS is killed and vcryptd
# restarted (nothing cached): vm1/d0 cannot be opened until kms_start 1.
kms_volume_then_kms_down() {
  kms_vm
  vc volume create vm1 d0 --file "$T/d0.img" --size 40M >/dev/null
  stop_daemon
  kms_kill
  start_daemon
}

test_kms_unreachable_then_back() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_volume_then_kms_down
  expect_exit 8 vc open vm1/d0
  assert_contains "$ERR" "127.0.0.1:$KMS_PORT"
  assert_eq "" "$(vcrypt_mappings)" "nothing mapped while the KMS is down"
  kms_start 1                                    # same database
  assert_eq /dev/mapper/vcrypt-vm1-d0 "$(vc open vm1/d0)"
  vc close vm1/d0 >/dev/null
}

# While the KMS is down, status says why the volume is locked (naming the
# server); open --all fails with 8; both recover once the KMS is back.
test_kms_down_status_shows_locked_reason() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_volume_then_kms_down
  expect_exit 8 vc open vm1/d0
  local s line
  s=$(vol_state vm1 d0)
  [[ $s == "locked|key_unavailable|"*"127.0.0.1:$KMS_PORT"*"|20"* ]] || fail "status: $s"
  line=$(vc status | grep '^vm1/d0 ')
  assert_contains "$line" " locked "
  assert_contains "$line" "(key unavailable: "
  assert_contains "$line" "127.0.0.1:$KMS_PORT"
  log "$line"
  expect_exit 8 vc open --all
  assert_contains "$ERR" "vcryptctl: vm1/d0: "
  assert_contains "$ERR" "127.0.0.1:$KMS_PORT"
  assert_eq "" "$(vcrypt_mappings)" "nothing mapped while the KMS is down"
  kms_start 1                                    # same database
  assert_eq "vm1/d0: opened /dev/mapper/vcrypt-vm1-d0" "$(vc open --all)"
  assert_eq "unlocked|||" "$(vol_state vm1 d0)" "reason cleared"
  vc close vm1/d0 >/dev/null
}

test_kms_failover_past_dead_server_and_provider_show() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_start
  start_daemon
  # First server: nothing listens there.
  add_kms_provider "127.0.0.1:1"
  vc vm create vm1 --provider kms >/dev/null
  local show
  show=$(vc provider show kms --json)
  assert_contains "$show" '"state": "error"'
  assert_contains "$show" '"state": "ok"'
}

test_kms_provider_add_refuses_untrusted_or_unreachable_cluster() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_start
  start_daemon
  expect_exit 8 vc provider add standard k1 --kms 127.0.0.1:1 --ca "$KMS/certs/ca.pem" \
    --cert "$KMS/certs/client.pem" --key "$KMS/certs/client-key.pem"
  # A server whose certificate comes from a CA we do not trust.
  expect_exit 8 vc provider add standard k2 --kms "127.0.0.1:$KMS_PORT" \
    --ca "$KMS/certs/other-ca.pem" --cert "$KMS/certs/client.pem" --key "$KMS/certs/client-key.pem"
  assert_contains "$ERR" "certificate"
  vc provider list --json | grep -q '"providers": \[\]' || fail "a provider was saved"
  [[ -z $(ls "$T/state/providers") ]] || fail "provider files left: $(ls -a "$T/state/providers")"
}

test_kms_delete_destroy_key() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_vm
  local id
  id=$(vc vm show vm1 --json | sed -n 's/.*"kek_id": "\(.*\)".*/\1/p' | head -1)
  vc vm delete vm1 --destroy-key >/dev/null
  assert_eq missing "$(kms_key state "$id")" "KEK destroyed on the KMS"
  # The default keeps the key (as vSphere does).
  vc vm create vm2 --provider kms >/dev/null
  id=$(vc vm show vm2 --json | sed -n 's/.*"kek_id": "\(.*\)".*/\1/p' | head -1)
  vc vm delete vm2 >/dev/null
  assert_eq ACTIVE "$(kms_key state "$id")" "KEK kept by default"
}

test_kms_boot_storm_fetches_each_kek_once_batched() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_start
  start_daemon
  add_kms_provider
  local v d
  for v in 1 2 3 4; do
    vc vm create "vm$v" --provider kms >/dev/null
    for d in 0 1; do vc volume create "vm$v" "d$d" --file "$T/vm$v-d$d.img" --size 20M >/dev/null; done
  done
  stop_daemon
  start_daemon
  local pids=()
  for v in 1 2 3 4; do for d in 0 1; do vc open "vm$v/d$d" >/dev/null & pids+=($!); done; done
  for p in "${pids[@]}"; do wait "$p" || fail "an open failed"; done
  assert_eq 8 "$(vcrypt_mappings | wc -l)" "all mapped"
  local show msgs conns
  show=$(vc provider show kms --json)
  msgs=$(sed -n 's/.*"kmip_messages_sent": \([0-9]*\).*/\1/p' <<<"$show")
  conns=$(sed -n 's/.*"tls_connections_made": \([0-9]*\).*/\1/p' <<<"$show")
  log "8 volumes of 4 VMs: $msgs KMIP messages (incl. version discovery), $conns TLS connection(s)"
  assert_eq 1 "$conns" "one TLS session"
  # 4 distinct KEKs, each fetched once: at most 4 Get messages + 1 discovery.
  (( msgs <= 5 )) || fail "too many KMIP messages: $msgs"
  for v in 1 2 3 4; do for d in 0 1; do vc close "vm$v/d$d" >/dev/null; done; done
}

# Provider change by shallow rekey: native -> standard (a real
# pykmip-server) -> native. Each step re-wraps every DEK under a KEK of the
# new provider; data stays; after the way back, --revoke-old destroys the
# KMS key and the volumes open with the KMS gone.
test_provider_change_native_to_kms_and_back() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_start
  start_daemon
  vc provider add native p1 >/dev/null
  add_kms_provider
  vc vm create vm1 --provider p1 >/dev/null
  local d p kid
  for d in d0 d1; do
    vc volume create vm1 $d --file "$T/$d.img" --size 40M >/dev/null
    p=$(vc open vm1/$d)
    write_pattern "$p" 4 $d.sha
    vc close vm1/$d >/dev/null
  done
  local out
  out=$(vc vm rekey vm1 --provider kms)
  assert_contains "$out" "of provider 'kms'"
  kid=$(vc --json vm show vm1 | /usr/bin/python3 -c 'import json,sys; j=json.load(sys.stdin); print(j["provider"], j["kek_id"])')
  assert_eq kms "${kid%% *}" "VM's provider"
  kid=${kid#* }
  assert_eq ACTIVE "$(kms_key state "$kid")" "new KEK on the KMS"
  for d in d0 d1; do assert_eq "kms $kid" "$(token_kek "$T/$d.img")" "token of $d"; done
  stop_daemon; start_daemon                     # cold cache: the KEK comes from the KMS
  for d in d0 d1; do
    p=$(vc open vm1/$d)
    assert_eq "$(cat "$T/$d.sha")" "$(read_sha "$p" 4)" "data of $d on kms"
    vc close vm1/$d >/dev/null
  done
  out=$(vc vm rekey vm1 --provider p1 --revoke-old)
  assert_contains "$out" "old KEK revoked and destroyed"
  assert_eq missing "$(kms_key state "$kid")" "old KMS key destroyed"
  for d in d0 d1; do
    [[ $(token_kek "$T/$d.img") == "p1 "* ]] || fail "token of $d: $(token_kek "$T/$d.img")"
  done
  kms_kill
  stop_daemon; start_daemon
  for d in d0 d1; do
    p=$(vc open vm1/$d)
    assert_eq "$(cat "$T/$d.sha")" "$(read_sha "$p" 4)" "data of $d back on native, KMS gone"
    vc close vm1/$d >/dev/null
  done
}

# unregister evicts the KEK: with the KMS gone, opening the volume by path
# must go back to the provider and fails; register rebuilds the VM from the
# header once the KMS is back; delete --erase --destroy-key leaves a
# header no key opens and no key on the KMS.
test_unregister_evicts_register_from_header_delete_erase() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_vm
  vc volume create vm1 d0 --file "$T/d0.img" --size 40M >/dev/null
  local p kid
  p=$(vc open vm1/d0)
  write_pattern "$p" 4 d0.sha
  vc close vm1/d0 >/dev/null
  kid=$(token_kek "$T/d0.img" | cut -d' ' -f2)
  cached() { vc --json status | /usr/bin/python3 -c 'import json,sys; print(" ".join(e["provider"] + "/" + e["kek_id"] for e in json.load(sys.stdin)["kek_cache"]))'; }
  assert_eq "kms/$kid" "$(cached)" "cached KEKs before unregister"
  vc vm unregister vm1 >/dev/null
  assert_eq "" "$(cached)" "cached KEKs after unregister"
  kms_kill
  expect_exit 8 vc open "$T/d0.img"
  assert_contains "$ERR" "127.0.0.1:$KMS_PORT"
  kms_start 1
  assert_eq "" "$(vc --json vm list | /usr/bin/python3 -c 'import json,sys; print(" ".join(v["vm"] for v in json.load(sys.stdin)["vms"]))')" "a failed open registers nothing"
  local out
  out=$(vc vm register vm1 --from "$T/d0.img")
  assert_contains "$out" "registered VM 'vm1' with provider 'kms' (KEK $kid), 1 disk(s)"
  p=$(vc open vm1/d0)
  assert_eq "$(cat "$T/d0.sha")" "$(read_sha "$p" 4)" "data after register"
  expect_exit 7 vc vm delete vm1 --erase --destroy-key 7<"$p"
  vc close vm1/d0 >/dev/null
  out=$(vc vm delete vm1 --erase --destroy-key)
  assert_contains "$out" "key material erased from 1 volume(s)"
  assert_eq missing "$(kms_key state "$kid")" "KEK destroyed on the KMS"
  local tokens slots
  tokens=$(cryptsetup luksDump --dump-json-metadata "$T/d0.img" | /usr/bin/python3 -c 'import json,sys; m=json.load(sys.stdin); print(len(m["tokens"]), len(m["keyslots"]))')
  assert_eq "0 0" "$tokens" "tokens and keyslots left after --erase"
  expect_exit 9 vc open "$T/d0.img"
  expect_exit 9 vc vm register vm1 --from "$T/d0.img"
}

# The KMS answers but no longer has the key (here: a KMS started on a fresh
# database): locked, with the KMS's own answer as the reason.
test_locked_reason_key_not_found_on_kms() {
  trap 'stop_daemon; kms_kill' EXIT
  kms_volume_then_kms_down
  kms_start 0                                    # same certs, empty database
  expect_exit 8 vc open vm1/d0
  local s
  s=$(vol_state vm1 d0)
  [[ $s == "locked|key_unavailable|"*"Item Not Found"* ]] || fail "status: $s"
  assert_eq "" "$(vcrypt_mappings)"
}
