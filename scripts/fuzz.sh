#!/bin/bash
# Builds the libFuzzer targets in fuzz/ (clang, libFuzzer + ASan + UBSan,
# -DVCRYPT_FUZZ=ON) and runs each for a bounded time.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
#   SECONDS  how long each target runs (default 60)
#   TARGET   ttlv   TTLV decoder + KMIP response parsing (fuzz/ttlv_fuzz.cc)
#            jws    attestation token verification (fuzz/jws_fuzz.cc)
#            quote  TPM quote / public area / credential (fuzz/quote_fuzz.cc)
#            eventlog  firmware event log and baseline policies
#                   (fuzz/eventlog_fuzz.cc)
#            default: all four, one after the other
#
#   scripts/fuzz.sh 60            # every target, 60 s each
#   scripts/fuzz.sh 300 quote     # one target, 5 minutes
#
# Environment:
#   VCRYPT_FUZZ_DIR    build dir (default build-fuzz/ in the repo); configured
#                      with CXX=clang++ CC=clang -DVCRYPT_FUZZ=ON if it is not
#                      already. Its corpus/<target>/ persists and grows
#                      between runs.
#   VCRYPT_FUZZ_JOBS   parallel fuzzing processes per target (default 1)
#   CMAKE_BUILD_PARALLEL_LEVEL  build parallelism (cmake's own variable)
#   CXX, CC            the compilers for a fresh build dir (default clang++,
#                      clang; libFuzzer needs libclang-rt-<version>-dev)
#
# Seeds (rebuilt in <dir>/seeds/<target>/ on every run):
#   ttlv   every golden vector in tests/kmip/golden/ (spec test cases and
#          the captured pykmip-server traces), with fuzz/kmip.dict
#   quote  the captured quote in tests/fixtures/tpm/: the raw files, and one
#          input per harness mode (see fuzz/quote_fuzz.cc) built from them
#   jws    fuzz/seeds/jws/: tokens signed with the harness key ('0' + token)
#          and header/payload pairs the harness signs ('1' + header 0xff
#          payload), valid and not, at the harness's fixed time
#   eventlog  fuzz/seeds/eventlog/: small boot logs ('\0' + log: one and
#          two banks, with and without StartupLocality) and baseline
#          documents ('\1' + JSON: each rule kind, a raw one)
#
# A crash, leak, UB report, timeout or broken invariant stops that target;
# libFuzzer writes the input to <dir>/artifacts/<target>/ and the next
# target still runs. Prints per target: seconds, executions, corpus size,
# findings (with the artifact and the command that reproduces it), and
# exits 1 if any target found something.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ALL_TARGETS=(ttlv jws quote eventlog)
usage() {
  echo "usage: $0 [SECONDS] [ttlv|jws|quote|eventlog ...]   (default: 60 s, all)" >&2
  exit 2
}

secs=60
targets=()
for arg in "$@"; do
  case $arg in
    -h | --help) usage ;;
    ttlv | jws | quote | eventlog) targets+=("$arg") ;;
    *)
      [[ $arg =~ ^[0-9]+$ && $arg -gt 0 ]] || usage
      secs=$arg
      ;;
  esac
done
((${#targets[@]})) || targets=("${ALL_TARGETS[@]}")

dir=${VCRYPT_FUZZ_DIR:-$ROOT/build-fuzz}
jobs=${VCRYPT_FUZZ_JOBS:-1}
[[ $jobs =~ ^[0-9]+$ && $jobs -gt 0 ]] || usage
export CXX=${CXX:-clang++} CC=${CC:-clang}

# --- configure (if needed) and build ----------------------------------------
cache=$dir/CMakeCache.txt
if [[ ! -f $cache ]] || ! grep -q '^VCRYPT_FUZZ:BOOL=ON$' "$cache"; then
  command -v "$CXX" >/dev/null || {
    echo "fuzz.sh: $CXX not found (apt-get install clang libclang-rt-14-dev)" >&2
    exit 1
  }
  if [[ -f $cache ]] && ! grep -q '^CMAKE_CXX_COMPILER:.*clang' "$cache"; then
    echo "fuzz.sh: $dir is configured with another compiler; remove it" >&2
    exit 1
  fi
  echo "fuzz.sh: configuring $dir ($CXX, -DVCRYPT_FUZZ=ON)"
  mkdir -p "$dir"
  cmake -S "$ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DVCRYPT_FUZZ=ON -DVCRYPT_BUILD_TESTS=OFF >"$dir/configure.log" 2>&1 || {
    cat "$dir/configure.log" >&2
    exit 1
  }
fi
dir=$(cd "$dir" && pwd)
echo "fuzz.sh: building ${targets[*]/#/vcrypt_fuzz_}"
cmake --build "$dir" --target "${targets[@]/#/vcrypt_fuzz_}"

# --- seeds ------------------------------------------------------------------
# Writes the seeds of target $1 into directory $2.
make_seeds() {
  local t=$1 out=$2
  if [[ -d $ROOT/fuzz/seeds/$t ]]; then
    cp "$ROOT"/fuzz/seeds/"$t"/* "$out"/
  fi
  case $t in
    ttlv)
      python3 - "$ROOT/tests/kmip/golden" "$out" <<'EOF'
import pathlib, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
for f in sorted(src.rglob("*.hex")):
    text = "".join(l for l in f.read_text().splitlines() if not l.startswith("#"))
    (out / f"{f.parent.name}_{f.stem}").write_bytes(bytes.fromhex("".join(text.split())))
EOF
      ;;
    quote)
      # Input format: fuzz/quote_fuzz.cc (first byte % 5 is the mode).
      python3 - "$ROOT/tests/fixtures/tpm" "$out" <<'EOF'
import pathlib, shutil, sys
src, out = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
r = lambda n: (src / n).read_bytes()
attest, sig, nonce, pcrs = r("attest.bin"), r("sig.bin"), r("nonce.bin"), r("pcrs.bin")
for n in ("attest.bin", "sig.bin", "ak.pub", "ek.pub"):
    shutil.copy(src / n, out / ("raw_" + n))  # whole-input parsers
be16 = lambda b: len(b).to_bytes(2, "big")
seeds = {
    # 0: the captured quote and signature, verified with the captured AK
    "mode0_captured": b"\x00" + be16(attest) + attest + sig,
    # 1: the captured attestation signed by the harness's AK, with the
    #    captured nonce and PCR values
    "mode1_resigned": b"\x01" + be16(attest) + attest + bytes([len(nonce)]) + nonce + pcrs,
    # 2: the captured quote unpatched (offset 0, length delta 0)
    "mode2_unpatched": b"\x02\x00\x00",
    # 2: its magic patched, and its tail cut by one byte
    "mode2_magic": b"\x02\x00\x00\xff\x54\x43\x48",
    "mode2_cut": b"\x02\x00\xff",
    # 3: the captured AK unpatched, and with its ECC point's x changed
    "mode3_unpatched": b"\x03\x00",
    "mode3_point": b"\x03\x1c\x00",
    # 4: the captured EK unpatched, MakeCredential for the captured AK Name
    "mode4_unpatched": b"\x04\x00\x00\x00",
    "mode4_name": b"\x04\x00\x00" + bytes([len(r("ak.name"))]) + r("ak.name"),
}
for name, data in seeds.items():
    (out / name).write_bytes(data)
EOF
      ;;
  esac
}

# --- run --------------------------------------------------------------------
# Per-target libFuzzer options.
target_flags() {
  case $1 in
    # KMIP replies vcrypt reads are well under 4 KiB.
    ttlv) echo "-max_len=4096 -dict=$ROOT/fuzz/kmip.dict" ;;
    # Past kMaxTokenSize (8 KiB), so the size limit is exercised too.
    jws) echo "-max_len=9000" ;;
    quote) echo "-max_len=4096" ;;
    # Logs of a few events; the 1 MiB limit is a unit test's job.
    eventlog) echo "-max_len=16384" ;;
  esac
}

export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:symbolize=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:symbolize=1
summary=()
failed=0
for t in "${targets[@]}"; do
  bin=$dir/fuzz/vcrypt_fuzz_$t
  corpus=$dir/corpus/$t seeds=$dir/seeds/$t arts=$dir/artifacts/$t
  logs=$dir/logs/$t
  rm -rf "$seeds" "$logs"
  mkdir -p "$corpus" "$seeds" "$arts" "$logs"
  make_seeds "$t" "$seeds"
  echo
  echo "fuzz.sh: $t: $secs s, $(find "$seeds" -type f | wc -l) seeds," \
    "corpus $corpus"
  stamp=$logs/start
  touch "$stamp"
  start=$(date +%s)
  set +e
  # -jobs writes fuzz-N.log into the current directory.
  # shellcheck disable=SC2046
  (cd "$logs" && "$bin" -max_total_time="$secs" -timeout=10 \
    -rss_limit_mb=2048 $(target_flags "$t") -artifact_prefix="$arts/" \
    -print_final_stats=1 \
    $( ((jobs > 1)) && echo "-jobs=$jobs -workers=$jobs") \
    "$corpus" "$seeds" >"$logs/fuzz.log" 2>&1)
  rc=$?
  set -e
  took=$(($(date +%s) - start))
  all_logs=("$logs"/*.log)
  # Final stats if libFuzzer printed them, else the last "#N" status line.
  execs=$(cat "${all_logs[@]}" |
    awk '/stat::number_of_executed_units/ {s += $2; f = 1}
         /^#[0-9]+/ {n = substr($1, 2)}
         END {print f ? s : n + 0}')
  new_arts=$(find "$arts" -type f -newer "$stamp" | sort)
  findings=$(printf '%s' "$new_arts" | grep -c . || true)
  ((rc == 0 || findings > 0)) || findings=1  # died without an artifact
  ncorpus=$(find "$corpus" -type f | wc -l)
  line="$t: $took s, $execs executions, corpus $ncorpus inputs, $findings findings"
  summary+=("$line")
  echo "fuzz.sh: $line"
  if ((findings)); then
    failed=1
    echo "fuzz.sh: $t FOUND a problem (libFuzzer exit $rc)"
    grep -hE '^(==[0-9]+==ERROR|SUMMARY|.*runtime error|ttlv_fuzz:|ALARM|Live Heap)' \
      "${all_logs[@]}" | head -n 10 | sed 's/^/  /'
    for a in $new_arts; do
      echo "  artifact:  $a"
      echo "  reproduce: ASAN_OPTIONS=$ASAN_OPTIONS UBSAN_OPTIONS=$UBSAN_OPTIONS $bin $a"
    done
    echo "  full log:  ${all_logs[*]}"
  fi
done

echo
echo "fuzz.sh: summary ($secs s per target)"
printf '  %s\n' "${summary[@]}"
if ((failed)); then
  echo "fuzz.sh: FINDINGS (see above)"
  exit 1
fi
echo "fuzz.sh: no findings"
