#!/bin/bash
# Benchmark: the trusted key provider's KEK unwrap with a cached attestation
# token vs a fresh attestation, in the same run (issue 6, "Performance").
#
# Runs on the host (no device-mapper needed): starts a software TPM
# (swtpm) and the Trust Authority's services (vcrypt-ta, TLS on 127.0.0.1)
# with the test environment of the integration tests
# (tests/integration/trusted_env.sh), then bench/trusted_bench.cc, which
# prints median/mean latency of each path and their ratio.
#
# swtpm is a software TPM: a hardware TPM's quote (an ECDSA signature in a
# slow chip, tens to hundreds of ms) makes the fresh path slower still, so
# the ratio here is a lower bound.
#
#   bench/trusted_bench.sh [BUILD_DIR] [ROUNDS]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${1:-$ROOT/build}
ROUNDS=${2:-20}
export VCRYPT_BUILD=$BUILD
fail() { echo "trusted_bench.sh: $*" >&2; exit 1; }
skip() { fail "$*"; }
if [[ -f $BUILD/build.ninja || -f $BUILD/Makefile ]]; then
  cmake --build "$BUILD" --target vcrypt_trusted_bench vcrypt-ta >/dev/null
fi
BIN=$BUILD/bench/vcrypt_trusted_bench
[[ -x $BIN ]] || fail "$BIN not found (configure $BUILD with cmake first)"

source "$ROOT/tests/integration/trusted_env.sh"
ta_bench_env trusted-bench
"$BIN" --attestation "https://127.0.0.1:$AS_PORT" --kps "https://127.0.0.1:$KPS_PORT" \
  --ca "$T/pki/ca.pem" --tcti "$TCTI" --host "$TA_HOST" --work "$T/work" \
  --rounds "$ROUNDS"
