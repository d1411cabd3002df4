#!/bin/bash
# Regenerates the captured KMIP traces in this directory (ours/*.response.hex
# and pykmip/*) from a real pykmip-server (Debian python3-pykmip 0.10).
#
#   1. build the unit tests and write vcrypt's request encodings:
#        VCRYPT_UPDATE_GOLDEN=1 build/tests/vcrypt_unit_tests \
#            --gtest_filter='KmipGolden.OurRequestsMatchGoldenFiles'
#   2. tests/kmip/golden/capture.sh [PORT]     (default port 15696)
#   3. re-run the unit tests: they decode every capture.
#
# Self-contained throwaway setup in a temp dir: a test CA, a server cert
# (subjectAltName IP:127.0.0.1,DNS:localhost) and a client cert with the
# clientAuth EKU, a fresh database, logging_level=DEBUG. The server is
# stopped (its process group killed) on exit. Needs /dev/shm (Python
# multiprocessing) and Debian's /usr/bin/python3. VCRYPT_CAPTURE_KEEP=1 keeps
# the temp dir (server log and config) for a look.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
port=${1:-15696}
PYTHON=/usr/bin/python3
work=$(mktemp -d /tmp/vcrypt-kmip-capture.XXXXXX)
server_pid=

cleanup() {
  if [[ -n $server_pid ]]; then
    # The server leads its own process group (setsid); PyKMIP's graceful
    # SIGTERM takes 10-20 s, and nothing here needs it to be graceful.
    kill -KILL -- "-$server_pid" 2>/dev/null || true
    wait "$server_pid" 2>/dev/null || true
  fi
  if [[ -n ${VCRYPT_CAPTURE_KEEP:-} ]]; then
    echo "capture.sh: kept $work" >&2
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT

for f in "$here"/ours/*.request.hex; do
  [[ -e $f ]] || {
    echo "capture.sh: no ours/*.request.hex; run step 1 (see the header)" >&2
    exit 1
  }
done

# --- test PKI -------------------------------------------------------------
certs=$work/certs
mkdir -p "$certs"
ext=$work/ext.cnf
openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
  -keyout "$certs/ca-key.pem" -out "$certs/ca.pem" -days 30 \
  -subj "/CN=vcrypt-golden-ca" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
leaf() {  # NAME CN EXTENSIONS...
  local name=$1 cn=$2
  shift 2
  printf '%s\n' "$@" >"$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$certs/$name-key.pem" -out "$work/$name.csr" \
    -subj "/CN=$cn" 2>/dev/null
  openssl x509 -req -in "$work/$name.csr" -CA "$certs/ca.pem" \
    -CAkey "$certs/ca-key.pem" -CAcreateserial -out "$certs/$name.pem" \
    -days 30 -sha256 -extfile "$ext" 2>/dev/null
}
leaf server localhost "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature,keyAgreement" \
  "extendedKeyUsage=serverAuth" "subjectAltName=IP:127.0.0.1,DNS:localhost"
leaf client vcrypt-golden "basicConstraints=critical,CA:FALSE" \
  "keyUsage=critical,digitalSignature,keyAgreement" \
  "extendedKeyUsage=clientAuth"

# --- server -------------------------------------------------------------------
mkdir -p "$work/policies"
cat >"$work/server.conf" <<EOF
[server]
hostname=127.0.0.1
port=$port
certificate_path=$certs/server.pem
key_path=$certs/server-key.pem
ca_path=$certs/ca.pem
auth_suite=TLS1.2
policy_path=$work/policies
enable_tls_client_auth=True
logging_level=DEBUG
database_path=$work/pykmip.db
EOF
setsid "$PYTHON" /usr/bin/pykmip-server -f "$work/server.conf" \
  -l "$work/server.log" </dev/null >"$work/server.out" 2>&1 &
server_pid=$!
for ((i = 0; i < 900; i++)); do
  grep -q "Starting connection service" "$work/server.log" 2>/dev/null && break
  kill -0 "$server_pid" 2>/dev/null || {
    cat "$work/server.out" "$work/server.log" >&2 || true
    echo "capture.sh: pykmip-server exited (port $port in use?)" >&2
    exit 1
  }
  sleep 0.1
done
grep -q "Starting connection service" "$work/server.log" || {
  echo "capture.sh: pykmip-server not ready after 90 s" >&2
  exit 1
}

"$PYTHON" "$here/capture.py" --port "$port" --certs "$certs" \
  --log "$work/server.log" --out "$here"
echo "capture.sh: done; traces in $here/ours and $here/pykmip"
