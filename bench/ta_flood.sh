#!/bin/bash
# Benchmark: a real host's attestation latency while a flood of requests
# hits the Trust Authority's unauthenticated /v1/nonce, against the same
# attestation with the services idle, in the same run (issue 13, section
# 5: goal flood/idle <= 2).
#
# Runs on the host (no device-mapper needed): starts a software TPM
# (swtpm) and the Trust Authority's services (vcrypt-ta, TLS on 127.0.0.1,
# default limits) with the test environment of the integration tests
# (tests/integration/trusted_env.sh), then bench/ta_flood.cc, which
# alternates idle and flooded blocks of attestations and prints the median
# of each and their ratio. The flood comes from SOURCES loopback addresses
# (127.0.0.2...); with 10 of them at 500 req/s each stays at 50/s, under
# the per-client rate limit, so every request is served: the worst case
# for the service, short of more addresses than the rate limit can tell
# apart. SOURCES=1 shows the rate limiter's part instead.
#
# The flood runs on the same machine as the services and the host, so it
# also takes CPU from both: an attacker elsewhere costs them less.
#
#   bench/ta_flood.sh [BUILD_DIR] [RATE (500)] [SOURCES (10)] [ROUNDS (8)] [BLOCKS (3)] [RAMP (1)]
#
# TA_BUILD=DIR runs the Trust Authority's services of another build (an
# older one, for a before/after figure) against this build's benchmark.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
RATE=${2:-500}
SOURCES=${3:-10}
ROUNDS=${4:-8}
BLOCKS=${5:-3}
RAMP=${6:-1}
export VCRYPT_BUILD=${TA_BUILD:-$BUILD}
fail() { echo "ta_flood.sh: $*" >&2; exit 1; }
skip() { fail "$*"; }
if [[ -f $BUILD/build.ninja || -f $BUILD/Makefile ]]; then
  cmake --build "$BUILD" --target vcrypt_ta_flood vcrypt-ta >/dev/null
fi
[[ -x $VCRYPT_BUILD/trustauthority/vcrypt-ta ]] || fail "no vcrypt-ta in $VCRYPT_BUILD"
BIN=$BUILD/bench/vcrypt_ta_flood
[[ -x $BIN ]] || fail "$BIN not found (configure $BUILD with cmake first)"

source "$ROOT/tests/integration/trusted_env.sh"
ta_bench_env ta-flood
"$BIN" --attestation "https://127.0.0.1:$AS_PORT" --kps "https://127.0.0.1:$KPS_PORT" \
  --ca "$T/pki/ca.pem" --tcti "$TCTI" --host "$TA_HOST" --work "$T/work" \
  --rate "$RATE" --sources "$SOURCES" --rounds "$ROUNDS" --blocks "$BLOCKS" --ramp "$RAMP"
echo "files in the Trust Authority's state directory after the run: $(find "$T/ta" -type f | wc -l)"
