#!/bin/bash
# Makes the test PKI for KMIP/TLS tests in DIR (created if missing):
#
#   ca.pem                        CA "vcrypt-test-ca": the trust anchor of
#                                 both the client and the KMS server
#   server.pem, server-key.pem    server cert from ca.pem,
#                                 subjectAltName=IP:127.0.0.1,DNS:localhost
#                                 (and $MAKE_CERTS_EXTRA_SAN, e.g.
#                                 "IP:10.77.0.1", if set),
#                                 EKU serverAuth
#   client.pem, client-key.pem    client cert from ca.pem, CN=vcrypt-host,
#                                 EKU clientAuth (PyKMIP requires it and uses
#                                 the CN as the owner identity)
#   other-ca.pem                  a second, unrelated CA "vcrypt-other-ca"
#   other-server.pem, -key.pem    server cert from other-ca.pem, same SAN
#                                 (so only the issuer makes it wrong)
#   other-client.pem, -key.pem    client cert from other-ca.pem, same CN
#
# Keys are EC P-256 (fast, and accepted by PyKMIP's TLS 1.2 cipher list),
# unencrypted, mode 0600 (the CA keys are kept as ca-key.pem and
# other-ca-key.pem so a test can issue more certificates). Certificates are
# valid for 10 years from now.
#
# Self-contained (only needs openssl), so the VM end-to-end tests can reuse
# it. Usage: make-certs.sh DIR
set -euo pipefail

if [[ $# -ne 1 ]]; then
  echo "usage: $0 DIR" >&2
  exit 2
fi
dir=$1
mkdir -p "$dir"
cd "$dir"
umask 077

# Runs openssl quietly (it chats on stderr), but shows why if it fails.
ossl() {
  local out
  if ! out=$(openssl "$@" 2>&1); then
    echo "make-certs.sh: openssl $1 failed: $out" >&2
    exit 1
  fi
}

ext=$(mktemp "${TMPDIR:-/tmp}/vcrypt-certs-ext.XXXXXX")
trap 'rm -f "$ext"' EXIT

# make_ca NAME CN
make_ca() {
  ossl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$1-key.pem" -out "$1.pem" -days 3650 -subj "/CN=$2" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -addext "subjectKeyIdentifier=hash"
}

# make_leaf NAME CN CA_NAME EXTENSIONS...
make_leaf() {
  local name=$1 cn=$2 ca=$3
  shift 3
  printf '%s\n' "$@" >"$ext"
  ossl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$name-key.pem" -out "$name.csr" -subj "/CN=$cn"
  ossl x509 -req -in "$name.csr" -CA "$ca.pem" -CAkey "$ca-key.pem" \
    -CAcreateserial -out "$name.pem" -days 3650 -sha256 \
    -extfile "$ext"
  rm -f "$name.csr"
}

server_ext=(
  "basicConstraints=critical,CA:FALSE"
  "keyUsage=critical,digitalSignature,keyAgreement"
  "extendedKeyUsage=serverAuth"
  "subjectAltName=IP:127.0.0.1,DNS:localhost${MAKE_CERTS_EXTRA_SAN:+,$MAKE_CERTS_EXTRA_SAN}"
)
client_ext=(
  "basicConstraints=critical,CA:FALSE"
  "keyUsage=critical,digitalSignature,keyAgreement"
  "extendedKeyUsage=clientAuth"
)

make_ca ca vcrypt-test-ca
make_leaf server localhost ca "${server_ext[@]}"
make_leaf client vcrypt-host ca "${client_ext[@]}"

make_ca other-ca vcrypt-other-ca
make_leaf other-server localhost other-ca "${server_ext[@]}"
make_leaf other-client vcrypt-host other-ca "${client_ext[@]}"

rm -f ./*.srl
chmod 0644 ./*.pem
chmod 0600 ./*-key.pem
