#!/bin/bash
# Benchmark: KEK fetches from a KMS through the standard key provider (issue:
# "KEK fetch over one TLS session vs a new connection per fetch; fetch of 50
# distinct KEKs batched vs one by one: messages sent and time, as ratios in
# the same run").
#
# Runs on the host (no device-mapper, no VM): makes a test PKI
# (tests/kmip/make-certs.sh), starts a pykmip-server on 127.0.0.1
# (tests/kmip/pykmip-server.sh), and runs bench/kmip_bench.cc against it,
# which creates KEKS KEKs and measures, in one run:
#   (a) KEKS sequential fetches over one reused TLS session vs a new
#       connection (TLS client, handshake, DiscoverVersions) per fetch;
#   (b) KEKS distinct KEKs batched (GetKeks) vs one by one (GetKek), plus
#       from KEKS threads at once (coalesced);
# printing messages, connections, wall time and the ratios.
#
# PyKMIP is single-threaded Python logging every message at DEBUG level (the
# test script's configuration): absolute times are mostly server time.
# Compare the ratios.
#
#   bench/kmip_bench.sh [BUILD_DIR] [KEKS] [ROUNDS]
# BUILD_DIR defaults to build/; the bench target is (re)built there first.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
KEKS=${2:-50}
ROUNDS=${3:-5}
BIN=$BUILD/bench/vcrypt_kmip_bench
PYKMIP=$ROOT/tests/kmip/pykmip-server.sh

die() {
  echo "kmip_bench.sh: $*" >&2
  exit 1
}

[[ -x /usr/bin/pykmip-server ]] ||
  die "/usr/bin/pykmip-server not found (apt-get install python3-pykmip)"
if [[ -f $BUILD/build.ninja || -f $BUILD/Makefile ]]; then
  cmake --build "$BUILD" --target vcrypt_kmip_bench >/dev/null
fi
[[ -x $BIN ]] || die "$BIN not found (configure $BUILD with cmake first)"

D=$(mktemp -d /tmp/vcrypt-kmip-bench.XXXXXX)
cleanup() {
  "$PYKMIP" kill "$D/kms" || true
  rm -rf "$D"
}
trap cleanup EXIT

"$ROOT/tests/kmip/make-certs.sh" "$D/kms/certs"

# A free port can be taken between the probe and PyKMIP's bind: retry.
free_port() {
  /usr/bin/python3 -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}
started=
for _ in 1 2 3; do
  port=$(free_port)
  if "$PYKMIP" start "$D/kms" "$port" 2>"$D/start.err"; then
    started=1
    break
  fi
done
[[ -n $started ]] || die "cannot start pykmip-server: $(cat "$D/start.err")"

"$BIN" --server "127.0.0.1:$port" --certs "$D/kms/certs" --work "$D/work" \
  --keks "$KEKS" --rounds "$ROUNDS"
