# The trusted key provider end to end (docs/trusted.md): a software TPM
# (swtpm) as this host's TPM, the Trust Authority's two services
# (`vcrypt-ta`, over TLS) on loopback, vcryptd with a `trusted` provider,
# and real dm-crypt volumes. The key provider service's primary key lives on
# a real pykmip-server in the end-to-end test; the other tests give it a
# primary key file to save the KMS's start-up time.

source "$(dirname "${BASH_SOURCE[0]}")/trusted_env.sh"

add_trusted_provider() {
  vc provider add trusted ta --attestation "https://127.0.0.1:$AS_PORT" \
    --kps "https://127.0.0.1:$KPS_PORT" --ca "$T/pki/ca.pem" --tcti "$TCTI" \
    --host "$TA_HOST" >/dev/null
}

# TPM, PKI, Trust Authority (primary key in a file), vcryptd, provider "ta".
trusted_setup() {
  [[ -x $VCRYPT_TA ]] || fail "$VCRYPT_TA not built"
  ta_env_start
  start_daemon
  add_trusted_provider
}
trusted_teardown() {
  cleanup_loops
  stop_daemon
  ta_service_stop AS
  ta_service_stop KPS
  tpm_stop
}

# The seed's flow: vm create attests and gets KEK ciphertext + plaintext,
# the disks' DEKs are wrapped under it, the KEK ciphertext goes in each
# volume's token; a later open (fresh vcryptd: no cached KEK, no token)
# attests again and unwraps the ciphertext. The primary key is on a KMS.
test_trusted_end_to_end_with_primary_key_on_kms() {
  trap 'trusted_teardown; kms_kill' EXIT
  [[ -x $VCRYPT_TA ]] || fail "$VCRYPT_TA not built"
  tpm_start
  ta_pki
  ta_admin_setup
  kms_start
  local uid
  uid=$(ta admin primary-key create --kms "127.0.0.1:$KMS_PORT" --kms-ca "$KMS/certs/ca.pem" \
    --kms-cert "$KMS/certs/client.pem" --kms-key "$KMS/certs/client-key.pem")
  [[ -n $uid ]] || fail "no primary key UID"
  as_start
  kps_start --primary-key "$uid" --kms "127.0.0.1:$KMS_PORT" --kms-ca "$KMS/certs/ca.pem" \
    --kms-cert "$KMS/certs/client.pem" --kms-key "$KMS/certs/client-key.pem"
  start_daemon
  add_trusted_provider
  vc vm create vm1 --provider ta >/dev/null
  vc volume create vm1 d0 --file "$T/d0.img" --size 40M >/dev/null
  vc volume create vm1 d1 --file "$T/d1.img" --size 40M >/dev/null
  local p0 p1
  p0=$(vc open vm1/d0); p1=$(vc open vm1/d1)
  write_pattern "$p0" 4 d0.sha
  write_pattern "$p1" 4 d1.sha
  vc close vm1/d0 >/dev/null; vc close vm1/d1 >/dev/null
  # Each volume's token holds the KPS's KEK ciphertext (not the KEK).
  local tok
  tok=$(cryptsetup token export --token-id 0 "$T/d0.img")
  assert_contains "$tok" '\"provider\":\"ta-kps\"' "KEK ciphertext in the token"
  assert_contains "$(vc provider show ta --json)" '"type": "trusted"'

  stop_daemon
  start_daemon                       # no cached KEK, no cached token
  p0=$(vc open vm1/d0); p1=$(vc open vm1/d1)
  assert_eq "$(cat "$T/d0.sha")" "$(read_sha "$p0" 4)" "d0 data"
  assert_eq "$(cat "$T/d1.sha")" "$(read_sha "$p1" 4)" "d1 data"
  vc close vm1/d0 >/dev/null; vc close vm1/d1 >/dev/null
  # Max age (docs/providers.md): the baseline withdrawn while d0 is open;
  # past the provider's KEK cache maximum age a new open goes back to the
  # key provider service, which refuses the token of a withdrawn baseline
  # (and a new attestation matches none); d0 keeps running.
  vc provider set ta --kek-cache-max-age 2s >/dev/null
  p0=$(vc open vm1/d0)
  ta admin --state "$(ta_state)" baseline remove golden >/dev/null
  sleep 2.2
  local rc=0 err
  err=$(vc open vm1/d1 2>&1 >/dev/null) || rc=$?
  [[ $rc -ne 0 ]] || fail "vm1/d1 opened after its baseline was withdrawn"
  assert_contains "$err" "baseline"
  grep -Eq "op=kek.evict request=(open|housekeeping) vm=vm1 .*provider=ta .*reason=max-age" "$T/vcryptd.log" ||
    fail "no kek.evict reason=max-age in the audit log"
  grep -q "op=kek.fetch request=open vm=vm1 disk=d1 .*source=provider result=.*baseline" "$T/vcryptd.log" ||
    fail "no failed kek.fetch in the audit log"
  [[ ! -e /dev/mapper/vcrypt-vm1-d1 ]] || fail "a refused open left a mapping"
  assert_eq "$(cat "$T/d0.sha")" "$(read_sha "$p0" 4)" "d0 still readable after the withdrawal"
  vc close vm1/d0 >/dev/null
  ta admin --state "$(ta_state)" baseline add golden --values "$T/golden.txt" >/dev/null
  vc open vm1/d1 >/dev/null || fail "vm1/d1 after the baseline is back"
  vc close vm1/d1 >/dev/null
  # Unregistering the VM evicts its KEK from vcryptd's cache, as for the
  # other providers.
  vc status --json | grep -q '"kek_cache": \[\]' && fail "KEK not cached after the opens"
  vc vm unregister vm1 >/dev/null
  vc status --json | grep -q '"kek_cache": \[\]' || fail "KEK still cached after unregister"
  [[ -z $(vcrypt_mappings) ]] || fail "mappings left: $(vcrypt_mappings)"
}

# Either service down: a clear error naming it, exit 8 (key unavailable),
# and nothing created or mapped.
test_trusted_services_down_nothing_created_or_mapped() {
  trap trusted_teardown EXIT
  trusted_setup
  vc vm create vm1 --provider ta >/dev/null
  vc volume create vm1 d0 --file "$T/d0.img" --size 40M >/dev/null
  vc close vm1/d0 >/dev/null 2>&1 || true
  local before
  vm_names() { vc vm list --json | grep '"vm":' | tr -d ' '; }
  before=$(vm_names)

  ta_service_stop KPS
  expect_exit 8 vc vm create vm2 --provider ta
  assert_contains "$ERR" "127.0.0.1:$KPS_PORT" "error names the key provider service"
  assert_eq "$before" "$(vm_names)" "no VM created with the KPS down"

  kps_start
  ta_service_stop AS
  stop_daemon
  start_daemon                       # no cached token: must attest
  expect_exit 8 vc vm create vm3 --provider ta
  assert_contains "$ERR" "127.0.0.1:$AS_PORT" "error names the attestation service"
  expect_exit 8 vc open vm1/d0
  [[ -z $(vcrypt_mappings) ]] || fail "mapped with the attestation service down"
  assert_eq "$before" "$(vm_names)" "no VM created with the AS down"

  as_start                           # back: works again, no restart needed
  vc vm create vm4 --provider ta >/dev/null
  local p
  p=$(vc open vm1/d0)
  [[ -b $p ]] || fail "not opened once the services are back"
  vc close vm1/d0 >/dev/null
}

# A PCR extended after the baseline was approved (another boot
# configuration): attestation is denied, nothing opens.
test_trusted_pcr_extended_after_baseline_denied() {
  trap trusted_teardown EXIT
  trusted_setup
  vc vm create vm1 --provider ta >/dev/null
  vc volume create vm1 d0 --file "$T/d0.img" --size 40M >/dev/null
  vc close vm1/d0 >/dev/null 2>&1 || true
  stop_daemon
  tpm2_pcrextend -T "$TCTI" "7:sha256=$(printf 'b%.0s' $(seq 64))"
  start_daemon
  expect_exit 8 vc open vm1/d0
  assert_contains "$ERR" "baseline"
  [[ -z $(vcrypt_mappings) ]] || fail "mapped after a PCR change"
  expect_exit 8 vc vm create vm2 --provider ta
}
