#!/bin/bash
# A KEK revoked on the KMS stops new uses once the provider's KEK cache
# maximum age has passed (docs/providers.md, "How long a KEK stays
# cached"), against a real pykmip-server. One vcryptd on this machine, one
# LUKS2 image file per disk: `volume create --file` wraps a new DEK under
# the VM's KEK (a use of the KEK, from the cache or the KMS) without
# device-mapper. The same with real mappings runs in the VM harness
# (tests/integration/t_kmip.sh, "max age").
#
#   1. provider add standard ... --kek-cache-max-age 3s; provider show
#      and status show the maximum and each cached KEK's age
#   2. the KEK is revoked on the KMS (PyKMIP's own client)
#   3. within the maximum age the cached KEK is still used (source=cache)
#   4. past it: `volume create` fails, exit 8, one line saying "revoked";
#      the audit log has kek.evict reason=max-age and the failed kek.fetch
#   5. provider set ... default / unlimited / a bad value; the setting
#      survives a restart of vcryptd
#
# Needs root (vcryptd's socket admits root) and python3-pykmip; exits 77
# (ctest: skipped) without them. About 10 s on the host.
#   kek_max_age_test.sh BUILD_DIR
set -euo pipefail

BUILD=${1:?usage: kek_max_age_test.sh BUILD_DIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VCRYPTD=$BUILD/daemon/vcryptd
VCRYPTCTL=$BUILD/cli/vcryptctl

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || skip "needs root (vcryptd admits root callers)"
[[ -x /usr/bin/pykmip-server ]] || skip "pykmip-server not installed (apt-get install python3-pykmip)"
[[ -x $VCRYPTD && -x $VCRYPTCTL ]] || fail "vcryptd or vcryptctl not built in $BUILD"

W=$(mktemp -d /tmp/vcrypt-maxage-XXXXXX)
KMS=$W/kms
PID=
cleanup() {
  [[ -n $PID ]] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null || true
  "$HERE/pykmip-server.sh" kill "$KMS" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT
fail_with_log() {
  echo "FAIL: $*"
  tail -12 "$W/vcryptd.log" 2>/dev/null | sed 's/^/  vcryptd.log: /'
  exit 1
}

KMS_PORT=
for _ in 1 2 3; do
  port=$((20000 + RANDOM % 20000))
  if "$HERE/pykmip-server.sh" start "$KMS" "$port" >"$W/kms-start.out" 2>&1; then
    KMS_PORT=$port
    break
  fi
done
[[ -n $KMS_PORT ]] || fail "pykmip-server did not start: $(cat "$W/kms-start.out")"
CERTS=$KMS/certs
kms_key() { /usr/bin/python3 "$HERE/../integration/kmip_key.py" "$CERTS" "$KMS_PORT" "$@"; }

start_vcryptd() {
  "$VCRYPTD" --state-dir "$W/state" --socket "$W/sock" >>"$W/vcryptd.log" 2>&1 &
  PID=$!
  local _
  for _ in $(seq 1 200); do
    vc status >/dev/null 2>&1 && return 0
    kill -0 "$PID" 2>/dev/null || fail_with_log "vcryptd died"
    sleep 0.05
  done
  fail_with_log "vcryptd did not come up"
}
vc() { "$VCRYPTCTL" --socket "$W/sock" "$@"; }
json() {  # EXPR: evaluates EXPR on the JSON on stdin (as j)
  /usr/bin/python3 -c 'import json, sys; j = json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"
}

start_vcryptd
out=$(vc provider add standard kms --kms "127.0.0.1:$KMS_PORT" --ca "$CERTS/ca.pem" \
  --cert "$CERTS/client.pem" --key "$CERTS/client-key.pem" --kek-cache-max-age 3s) ||
  fail_with_log "provider add: $out"
[[ $(vc --json provider show kms | json 'j["kek_cache_max_age"], j["kek_cache_max_age_source"]') == "('3s', 'set')" ]] ||
  fail "provider show: $(vc --json provider show kms)"

# 1. A VM whose KEK is cached from vm create; the first disk uses it.
vc vm create vm1 --provider kms >/dev/null || fail_with_log "vm create"
t0=$(date +%s%N)
vc volume create vm1 d0 --file "$W/d0.img" --size 20M >/dev/null || fail_with_log "volume create d0"
kid=$(vc --json vm show vm1 | json 'j["kek_id"]')
st=$(vc --json status)
[[ $(json 'len(j["kek_cache"]), j["kek_cache"][0]["kek_id"], j["kek_cache"][0]["max_age"]' <<<"$st") == "(1, '$kid', '3s')" ]] ||
  fail "status: $st"
[[ $(json 'j["kek_cache"][0]["age_seconds"] <= 3' <<<"$st") == True ]] || fail "age in status: $st"
vc status | grep -q "^  VM vm1: KEK $kid of provider kms, fetched [0-9]*s ago (max age 3s)$" ||
  fail "status text: $(vc status)"

# 2. The KMS admin revokes the KEK; PyKMIP still hands it out on Get.
kms_key revoke "$kid"
[[ $(kms_key state "$kid") == DEACTIVATED ]] || fail "the KEK is not revoked: $(kms_key state "$kid")"

# 3. Within the maximum age: the cached KEK serves (no KMS round trip).
vc volume create vm1 d1 --file "$W/d1.img" --size 20M >/dev/null ||
  fail_with_log "volume create d1 within the max age"
elapsed_ms=$((($(date +%s%N) - t0) / 1000000))
((elapsed_ms < 3000)) || fail "too slow to check the cache (${elapsed_ms} ms); rerun on an idle machine"
grep -q "op=kek.fetch request=volume.create vm=vm1 disk=d1 .*kek_id=$kid source=cache result=ok" "$W/vcryptd.log" ||
  fail_with_log "d1 did not use the cached KEK"

# 4. Past it: the KMS is asked again and says revoked.
sleep 3.2
rc=0
err=$(vc volume create vm1 d2 --file "$W/d2.img" --size 20M 2>&1 >/dev/null) || rc=$?
[[ $rc -eq 8 ]] || fail_with_log "volume create after the max age exited $rc: $err"
[[ $(grep -c . <<<"$err") -eq 1 ]] || fail "more than one line: $err"
[[ $err == "vcryptctl: KEK $kid of provider 'kms': revoked on the KMS (state Deactivated); vcrypt uses only Active keys" ]] ||
  fail "error line: $err"
[[ ! -e $W/d2.img ]] || fail "a failed volume create left $W/d2.img behind"
# Evicted by the use that found it too old, or by the 30 s sweep before.
grep -Eq "op=kek.evict request=(volume.create|housekeeping) vm=vm1 .*provider=kms kek_id=$kid reason=max-age result=ok" "$W/vcryptd.log" ||
  fail_with_log "no kek.evict reason=max-age in the audit log"
grep -q "op=kek.fetch request=volume.create vm=vm1 disk=d2 .*kek_id=$kid source=provider result=key_unavailable error=.*revoked on the KMS" "$W/vcryptd.log" ||
  fail_with_log "no failed kek.fetch in the audit log"
[[ $(vc --json status | json 'j["kek_cache"]') == "[]" ]] || fail "a revoked KEK is cached"
echo "after the max age: $err"

# 5. Settings: back to the default, unlimited, refused values; persisted.
[[ $(vc provider set kms --kek-cache-max-age default) == "provider 'kms': KEKs stay cached for 1h (the default)" ]] ||
  fail "provider set default"
vc provider set kms --kek-cache-max-age unlimited >/dev/null || fail "provider set unlimited"
rc=0
err=$(vc provider set kms --kek-cache-max-age 0s 2>&1) || rc=$?
[[ $rc -ne 0 && $err == *"is not 'unlimited' or a duration"* ]] || fail "0s accepted: $rc $err"
vc provider set kms --kek-cache-max-age 45m >/dev/null || fail "provider set 45m"
kill "$PID" && wait "$PID" 2>/dev/null || true
PID=
start_vcryptd
[[ $(vc --json provider show kms | json 'j["kek_cache_max_age"]') == 45m ]] ||
  fail "the setting did not survive a restart: $(vc --json provider show kms)"
echo "PASS"
