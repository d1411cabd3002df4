# The Trust Authority test environment, shared by tests/integration/
# t_trusted.sh and bench/trusted_bench.sh: a software TPM as the host's
# TPM, a test PKI for TLS, and the `vcrypt-ta` services on loopback set up
# as an admin would. Needs from the caller: $T (a scratch directory),
# $VCRYPT_BUILD, and fail/skip/assert_eq (tests/integration/lib.sh).

VCRYPT_TA=$VCRYPT_BUILD/trustauthority/vcrypt-ta
TA_HOST=kvm-host-1

# The admin commands run as $TA_RUNAS when set (the services' user), on
# the state directory $TA_STATE.
ta() { ${TA_RUNAS:+runuser -u "$TA_RUNAS" --} "$VCRYPT_TA" "$@"; }
ta_state() { echo "${TA_STATE:-$T/ta}"; }

# A test PKI for the services' TLS: CA + server certificate for 127.0.0.1.
ta_pki() {
  local d=$T/pki
  mkdir -p "$d"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -keyout "$d/ca.key" -out "$d/ca.pem" -subj /CN=vcrypt-test-ta-ca 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -keyout "$d/server.key" -out "$d/server.csr" -subj /CN=127.0.0.1 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$d/ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.pem" -CAkey "$d/ca.key" \
    -CAcreateserial -days 2 -extfile "$d/ext" -out "$d/server.pem" 2>/dev/null
}

# This host's TPM: a fresh swtpm on a random port ($TCTI).
tpm_start() {
  command -v swtpm >/dev/null || skip "swtpm is not installed"
  TPM_PORT=$((21000 + RANDOM % 20000))
  mkdir -p "$T/tpm"
  swtpm socket --tpm2 --tpmstate dir="$T/tpm" \
    --server type=tcp,port=$TPM_PORT,bindaddr=127.0.0.1 \
    --ctrl type=tcp,port=$((TPM_PORT + 1)),bindaddr=127.0.0.1 \
    --flags not-need-init,startup-clear --pid file="$T/swtpm.pid" --daemon
  TCTI="swtpm:host=127.0.0.1,port=$TPM_PORT"
  # vcryptd takes a simulator TCTI only when its own config allows it
  # (start_daemon passes $T/vcryptd.json).
  echo '{"allow_test_tcti": true}' >"$T/vcryptd.json"
  for _ in $(seq 1 100); do
    tpm2_getcap -T "$TCTI" properties-fixed >/dev/null 2>&1 && return 0
    sleep 0.1
  done
  fail "swtpm did not come up"
}
tpm_stop() { [[ -f $T/swtpm.pid ]] && kill "$(cat "$T/swtpm.pid")" 2>/dev/null || true; }

# Starts `vcrypt-ta SERVICE ARGS...`; sets ${VAR}_PID and ${VAR}_PORT
# (VAR = $1). The first start takes an ephemeral port, a restart the same
# port again (the host's provider has the URL).
ta_service_start() {
  local var=$1; shift
  local out=$T/$var.out port_var=${var}_PORT
  : >"$out"
  "$VCRYPT_TA" "$@" --listen "127.0.0.1:${!port_var:-0}" >"$out" 2>&1 &
  local pid=$! addr=
  for _ in $(seq 1 200); do
    addr=$(sed -n 's/^listening on //p' "$out" | head -1)
    [[ -n $addr ]] && break
    kill -0 "$pid" 2>/dev/null || { cat "$out"; fail "vcrypt-ta $1 died"; }
    sleep 0.05
  done
  [[ -n $addr ]] || fail "vcrypt-ta $1 did not come up"
  printf -v "${var}_PID" '%s' "$pid"
  printf -v "${var}_PORT" '%s' "${addr##*:}"
}
ta_service_stop() {  # VAR
  local pid_var=${1}_PID
  [[ -n ${!pid_var:-} ]] || return 0
  kill "${!pid_var}" 2>/dev/null || true
  wait "${!pid_var}" 2>/dev/null || true
  printf -v "$pid_var" '%s' ""
}

as_start() {
  ta_service_start AS attestation-service --state "$T/ta" \
    --tls-cert "$T/pki/server.pem" --tls-key "$T/pki/server.key"
}
kps_start() {  # extra args (primary key source; default: the key file)
  local src=("$@")
  [[ ${#src[@]} -gt 0 ]] || src=(--primary-key-file "$T/primary.key")
  ta_service_start KPS key-provider-service --state "$T/ta" --provider-id ta-kps \
    --tls-cert "$T/pki/server.pem" --tls-key "$T/pki/server.key" "${src[@]}"
}

# The Trust Authority set up as its admin would: state initialised, this
# host registered with its EK public key (read with tpm2-tools), the PCR
# values it has now approved as baseline "golden".
ta_admin_setup() {
  ta admin --state "$(ta_state)" init --pcrs sha256:0-7 >/dev/null
  tpm2_createek -T "$TCTI" -c "$T/ek.ctx" -G rsa -u "$T/ek.pub" >/dev/null
  tpm2_flushcontext -T "$TCTI" -t >/dev/null
  chmod 0644 "$T/ek.pub"   # tpm2-tools writes 0660; $TA_RUNAS reads it
  ta admin --state "$(ta_state)" host add "$TA_HOST" --ek-pub "$T/ek.pub" >/dev/null
  tpm2_pcrread -T "$TCTI" sha256:0,1,2,3,4,5,6,7 -o "$T/pcrs.bin" >/dev/null
  od -An -v -tx1 "$T/pcrs.bin" | tr -d ' \n' | fold -w64 >"$T/golden.txt"
  echo >>"$T/golden.txt"
  [[ $(grep -c . "$T/golden.txt") -eq 8 ]] || fail "PCR values read: $(cat "$T/golden.txt")"
  ta admin --state "$(ta_state)" baseline add golden --values "$T/golden.txt" >/dev/null
}


# TPM, PKI, the admin's setup and both services (primary key in a file).
ta_env_start() {
  tpm_start
  ta_pki
  ta_admin_setup
  head -c 32 /dev/urandom >"$T/primary.key"
  chmod 600 "$T/primary.key"
  as_start
  kps_start
}

# For the benchmarks (bench/*.sh): a scratch directory $T removed at exit
# with everything ta_env_start started, then ta_env_start.
ta_bench_env() {  # NAME
  T=$(mktemp -d "/tmp/vcrypt-$1.XXXXXX")
  ta_bench_cleanup() {
    ta_service_stop AS
    ta_service_stop KPS
    tpm_stop
    rm -rf "$T"
  }
  trap ta_bench_cleanup EXIT
  ta_env_start
}
