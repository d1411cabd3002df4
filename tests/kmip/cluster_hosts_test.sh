#!/bin/bash
# Two hosts of a cluster, one KMS (docs/cluster.md, "Standard provider
# (KMIP)"): what PyKMIP's ownership rule means for a VM's KEK. Three
# vcryptd instances on this machine stand for three hosts, each with its own
# state directory, socket and client certificate, all against one real
# pykmip-server (tests/kmip/pykmip-server.sh) and one LUKS2 image file (the
# shared storage). Nothing here needs device-mapper: `volume create --file`
# writes a header into a plain file and `vm register --from` fetches the KEK
# and checks it against the LUKS2 digest without mapping anything.
#
#   host A   CN=vcrypt-host (certs/client.pem)     creates vm1 and its KEK
#   host B   CN=vcrypt-host, its own key pair       registers vm1: fetches
#            from the same CA                       the KEK (ok)
#   host C   CN=vcrypt-host-c, same CA              registers vm1: refused
#                                                   with Permission Denied
# Then: an operation policy file that redefines PyKMIP's "default" policy is
# thrown out by the server, so C is still refused (no policy file opens
# vcrypt's KEKs to another CN); B, being the owner too, destroys the KEK with
# `vm delete --destroy-key`, after which A cannot fetch it either.
#
# Needs root (vcryptd's socket admits root) and python3-pykmip; exits 77
# (ctest: skipped) without them. 4-10 s on the host (one pykmip-server).
#   cluster_hosts_test.sh BUILD_DIR
set -euo pipefail

BUILD=${1:?usage: cluster_hosts_test.sh BUILD_DIR}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
VCRYPTD=$BUILD/daemon/vcryptd
VCRYPTCTL=$BUILD/cli/vcryptctl

skip() { echo "SKIP: $*"; exit 77; }
fail() { echo "FAIL: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || skip "needs root (vcryptd admits root callers)"
[[ -x /usr/bin/pykmip-server ]] || skip "pykmip-server not installed (apt-get install python3-pykmip)"
[[ -x $VCRYPTD && -x $VCRYPTCTL ]] || fail "vcryptd or vcryptctl not built in $BUILD"

W=$(mktemp -d /tmp/vcrypt-cluster-XXXXXX)
KMS=$W/kms
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  "$HERE/pykmip-server.sh" kill "$KMS" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

# Shows the logs that explain a failure, then fails.
fail_with_logs() {
  echo "FAIL: $*"
  local f
  for f in "$W"/host-*/vcryptd.log; do
    [[ -f $f ]] && sed "s|^|  ${f#"$W"/}: |" "$f" | tail -8
  done
  grep -E "client identity|Processing operation|Policy '" "$KMS/server.log" 2>/dev/null |
    tail -8 | sed 's/^/  server.log: /'
  exit 1
}

# The KMS, with the test PKI of make-certs.sh (CA, server, client.pem with
# CN=vcrypt-host). A random port may be taken: try a few.
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

# A client certificate for CN $2 from the test CA, with its own key pair:
# $W/$1.pem, $W/$1-key.pem (the extensions of make-certs.sh's client cert).
issue_client_cert() {
  printf '%s\n' "basicConstraints=critical,CA:FALSE" \
    "keyUsage=critical,digitalSignature,keyAgreement" \
    "extendedKeyUsage=clientAuth" >"$W/ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$W/$1-key.pem" -out "$W/$1.csr" -subj "/CN=$2" 2>/dev/null
  openssl x509 -req -in "$W/$1.csr" -CA "$CERTS/ca.pem" -CAkey "$CERTS/ca-key.pem" \
    -CAcreateserial -CAserial "$W/ca.srl" -out "$W/$1.pem" -days 2 -sha256 \
    -extfile "$W/ext" 2>/dev/null
}
issue_client_cert host-b vcrypt-host
issue_client_cert host-c vcrypt-host-c
pubkey() { openssl pkey -in "$1" -pubout; }
[[ $(pubkey "$W/host-b-key.pem") != $(pubkey "$CERTS/client-key.pem") ]] ||
  fail "host B must have its own key pair"

# start_host NAME: a vcryptd with its own state directory and socket.
start_host() {
  mkdir -p "$W/host-$1"
  "$VCRYPTD" --state-dir "$W/host-$1/state" --socket "$W/host-$1/sock" \
    >>"$W/host-$1/vcryptd.log" 2>&1 &
  PIDS+=($!)
  local _
  for _ in $(seq 1 200); do
    on "$1" status >/dev/null 2>&1 && return 0
    kill -0 "${PIDS[-1]}" 2>/dev/null || fail_with_logs "vcryptd of host $1 died"
    sleep 0.05
  done
  fail_with_logs "vcryptd of host $1 did not come up"
}
on() {  # on HOST vcryptctl-args...
  local h=$1
  shift
  "$VCRYPTCTL" --socket "$W/host-$h/sock" "$@"
}
# add_kms HOST CERT KEY: the same provider (name, KMS, CA) on every host; only
# the client certificate differs. The provider's name is part of each
# volume's token, so it must be the same on every host.
add_kms() {
  on "$1" provider add standard kms --kms "127.0.0.1:$KMS_PORT" --ca "$CERTS/ca.pem" \
    --cert "$2" --key "$3" >/dev/null || fail_with_logs "provider add on host $1"
}
json_field() {  # FIELD: prints it from the JSON object on stdin
  /usr/bin/python3 -c 'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$1"
}
# expect_exit CODE HOST ARGS...: vcryptctl on HOST must fail with CODE and
# one line on stderr, left in $ERR.
expect_exit() {
  local want=$1 rc=0
  shift
  ERR=$(on "$@" 2>&1 >/dev/null) || rc=$?
  [[ $rc -eq $want ]] || fail_with_logs "'vcryptctl $*' exited $rc, expected $want: $ERR"
  [[ $(grep -c . <<<"$ERR") -eq 1 ]] || fail_with_logs "'vcryptctl $*' printed more than one line: $ERR"
}

start_host a
start_host b
start_host c
add_kms a "$CERTS/client.pem" "$CERTS/client-key.pem"
add_kms b "$W/host-b.pem" "$W/host-b-key.pem"
add_kms c "$W/host-c.pem" "$W/host-c-key.pem"

# Host A: vm1, its KEK on the KMS, one disk in an image file.
on a vm create vm1 --provider kms >/dev/null || fail_with_logs "vm create on A"
on a volume create vm1 d0 --file "$W/d0.img" --size 20M >/dev/null ||
  fail_with_logs "volume create on A"
kid=$(on a --json vm show vm1 | json_field kek_id)
[[ -n $kid ]] || fail "no KEK ID on host A"

# a) Host B, same CN, own key pair: the KEK comes from the KMS and unwraps
# the disk's DEK (register checks it against the LUKS2 digest).
out=$(on b vm register vm1 --from "$W/d0.img") || fail_with_logs "register on host B (same CN) failed"
[[ $out == "registered VM 'vm1' with provider 'kms' (KEK $kid), 1 disk(s)" ]] ||
  fail_with_logs "register on B: $out"
[[ $(on b --json vm show vm1 | json_field kek_id) == "$kid" ]] || fail "host B shows another KEK ID"
[[ $(on b --json vm show vm1 | json_field kek_cached) == True ]] || fail "host B has no KEK cached"
grep -q "op=kek.fetch request=vm.register vm=vm1 disk=d0 .*kek_id=$kid source=provider result=ok" \
  "$W/host-b/vcryptd.log" || fail_with_logs "host B did not fetch the KEK from the KMS"
grep -q "Session client identity: vcrypt-host$" "$KMS/server.log" ||
  fail_with_logs "the KMS did not see CN vcrypt-host"

# b) Host C, another CN from the same CA: the KMS answers Get with
# Permission Denied; register fails with exit 8 (key unavailable), one line,
# and leaves nothing registered or cached.
refused_on_c() {
  expect_exit 8 c vm register vm1 --from "$W/d0.img"
  [[ $ERR == "vcryptctl: KEK $kid of provider 'kms': KMS refused Get: Permission Denied"* ]] ||
    fail_with_logs "host C's error: $ERR"
  [[ $(on c --json vm list | json_field vms) == "[]" ]] || fail "host C registered something"
  [[ $(on c --json status | json_field kek_cache) == "[]" ]] || fail "host C cached a KEK"
}
refused_on_c
echo "host C (CN vcrypt-host-c): $ERR"
grep -q "Session client identity: vcrypt-host-c$" "$KMS/server.log" ||
  fail_with_logs "the KMS did not see CN vcrypt-host-c"

# c) PyKMIP keeps an object's Operation Policy Name for good, and vcrypt's
# keys get the reserved "default" (owner-only Get). A policy file that
# redefines "default" is thrown out (the server watches the directory and
# reloads within a second), so host C is still refused.
cat >"$KMS/policies/cluster.json" <<'EOF'
{
  "default": {"SYMMETRIC_KEY": {"GET": "ALLOW_ALL"}},
  "vcrypt-cluster": {
    "preset": {"SYMMETRIC_KEY": {"GET": "ALLOW_OWNER"}},
    "groups": {"vcrypt-hosts": {"SYMMETRIC_KEY": {"GET": "ALLOW_ALL"}}}
  }
}
EOF
for _ in $(seq 1 100); do
  grep -q "Policy 'default' overwrites a reserved policy and will be thrown out" \
    "$KMS/server.log" && grep -q "Loading policy: vcrypt-cluster" "$KMS/server.log" && break
  sleep 0.1
done
grep -q "Policy 'default' overwrites a reserved policy and will be thrown out" "$KMS/server.log" ||
  fail_with_logs "the KMS did not load the policy file"
refused_on_c

# Every host with the shared CN owns every KEK: B may revoke and destroy the
# key A created; then no host can fetch it.
on b vm delete vm1 --destroy-key >/dev/null || fail_with_logs "vm delete --destroy-key on B"
on a vm unregister vm1 >/dev/null || fail_with_logs "vm unregister on A"
expect_exit 8 a vm register vm1 --from "$W/d0.img"
[[ $ERR == *"Item Not Found"* ]] || fail_with_logs "host A after B destroyed the KEK: $ERR"
echo "host A after host B destroyed the KEK: $ERR"

echo "PASS: host B (same CN) fetched KEK $kid of host A; host C (other CN) refused, also with a policy file; B destroyed the KEK for all"
