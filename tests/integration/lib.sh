# Helpers for vcrypt integration tests. Sourced by tests/integration/run.sh
# inside the VM harness (root, real device-mapper). Each test_* function
# runs in its own subshell with `set -euo pipefail` and its own temp dir $T.

: "${VCRYPT_BUILD:?VCRYPT_BUILD must point at the build directory}"
VCRYPTD=$VCRYPT_BUILD/daemon/vcryptd
VCRYPTCTL=$VCRYPT_BUILD/cli/vcryptctl

fail() { echo "ASSERTION FAILED: $*" >&2; exit 1; }
# Ends the test as skipped (run.sh reports SKIP with the reason), e.g. when
# the guest lacks what it needs.
skip() { echo "SKIP: $*"; exit 77; }
log() { echo "  # $*"; }

assert_eq() {  # expected actual [message]
  [[ "$1" == "$2" ]] || fail "${3:-values differ}: expected '$1', got '$2'"
}
assert_contains() {  # haystack needle [message]
  [[ "$1" == *"$2"* ]] || fail "${3:-missing text}: '$2' not in: $1"
}
assert_not_contains() {
  [[ "$1" != *"$2"* ]] || fail "${3:-unexpected text}: '$2' found in: $1"
}

# Runs a command that must fail with exit code $1; its stderr must be one
# line. Leaves the stderr text in $ERR.
expect_exit() {
  local want=$1; shift
  local rc=0
  ERR=$("$@" 2>&1 >/dev/null) || rc=$?
  [[ $rc -eq $want ]] || fail "'$*' exited $rc, expected $want: $ERR"
  local lines
  lines=$(printf '%s\n' "$ERR" | grep -c . || true)
  [[ $lines -eq 1 ]] || fail "'$*' printed $lines lines on stderr, expected 1: $ERR"
}

vc() { "$VCRYPTCTL" --socket "$T/sock" "$@"; }

start_daemon() {  # [state dir]; $T/vcryptd.json, when present, is its --config
  local state=${1:-$T/state} config=()
  [[ -f $T/vcryptd.json ]] && config=(--config "$T/vcryptd.json")
  "$VCRYPTD" --state-dir "$state" --socket "$T/sock" "${config[@]}" >>"$T/vcryptd.log" 2>&1 &
  DAEMON_PID=$!
  for _ in $(seq 1 200); do
    [[ -S $T/sock ]] && vc status >/dev/null 2>&1 && return 0
    kill -0 "$DAEMON_PID" 2>/dev/null || { cat "$T/vcryptd.log"; fail "vcryptd died"; }
    sleep 0.05
  done
  fail "vcryptd did not come up"
}

stop_daemon() {
  [[ -n ${DAEMON_PID:-} ]] || return 0
  kill "$DAEMON_PID" 2>/dev/null || true
  wait "$DAEMON_PID" 2>/dev/null || true
  DAEMON_PID=
}

# Native provider p1, VM vm1, one file-backed disk d0 of $1 (default 40M).
setup_vm() {
  vc provider add native p1 >/dev/null
  vc vm create vm1 >/dev/null
  vc volume create vm1 d0 --file "$T/d0.img" --size "${1:-40M}" >/dev/null
}

vcrypt_mappings() { dmsetup ls 2>/dev/null | awk '$1 ~ /^vcrypt-/ {print $1}' | sort; }
loop_devices() { losetup -a 2>/dev/null | sort; }

# A loop device for image $1 that cleanup_loops detaches. Prints its path.
attach_loop() {
  local dev
  dev=$(losetup -f --show "$1") || fail "losetup $1"
  echo "$dev" >>"$T/loops"
  echo "$dev"
}
# Closes every vcrypt mapping (through vcryptd while it runs, then with
# dmsetup), stops vcryptd and detaches the loops attach_loop attached.
cleanup_loops() {
  local m
  for m in $(vcrypt_mappings); do
    [[ -n ${DAEMON_PID:-} ]] && vc close "/dev/mapper/$m" >/dev/null 2>&1 || true
  done
  stop_daemon
  for m in $(vcrypt_mappings); do dmsetup remove --retry "$m" >/dev/null 2>&1 || true; done
  if [[ -f $T/loops ]]; then
    while read -r d; do losetup -d "$d" 2>/dev/null || true; done <"$T/loops"
  fi
  udevadm settle --timeout=30 2>/dev/null || true
}

# Writes $2 MiB of random data to mapping $1 and stores its sha256 in $T/$3.
write_pattern() {
  head -c "$(($2 * 1024 * 1024))" /dev/urandom >"$T/pattern.bin"
  dd if="$T/pattern.bin" of="$1" bs=1M oflag=direct conv=fsync status=none
  sha256sum <"$T/pattern.bin" | cut -d' ' -f1 >"$T/$3"
}
read_sha() {  # mapping MiB
  dd if="$1" bs=1M count="$2" iflag=direct status=none | sha256sum | cut -d' ' -f1
}

# "STATE|CODE|MESSAGE|SINCE" of VM/DISK in `vcryptctl --json status`.
vol_state() {
  vc --json status | /usr/bin/python3 -c '
import json, sys
st = json.load(sys.stdin)
for vm in st["vms"]:
    for d in vm["disks"]:
        if vm["vm"] == sys.argv[1] and d["disk"] == sys.argv[2]:
            r = d.get("reason") or {}
            print("|".join([d["state"], r.get("code", ""), r.get("message", ""), r.get("since", "")]))
' "$1" "$2"
}
# A field of VM/DISK in `vcryptctl --json volume list`.
vol_field() {
  vc --json volume list | /usr/bin/python3 -c '
import json, sys
for d in json.load(sys.stdin)["volumes"]:
    if d["vm"] == sys.argv[1] and d["disk"] == sys.argv[2]:
        print(d.get(sys.argv[3], ""))
' "$1" "$2" "$3"
}

# "PROVIDER KEK_ID" of the vcrypt token in the LUKS2 header of $1, read by
# cryptsetup (not by vcrypt's code).
token_kek() {
  cryptsetup luksDump --dump-json-metadata "$1" | /usr/bin/python3 -c '
import json, sys
m = json.load(sys.stdin)
t = [t for t in m["tokens"].values() if t["type"] == "vcrypt"]
assert len(t) == 1, t
print(t[0]["provider"]["name"], t[0]["kek"]["id"])'
}

# A real pykmip-server on loopback (tests/kmip/pykmip-server.sh), one per
# test unless KMS/KMS_PORT are set.
KMIP_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/../kmip" && pwd)

kms_start() {  # [keep-db]
  KMS=${KMS:-$T/kms}
  KMS_PORT=${KMS_PORT:-$((20000 + RANDOM % 20000))}
  mkdir -p "$KMS"
  PYKMIP_KEEP_DB=${1:-0} "$KMIP_DIR/pykmip-server.sh" start "$KMS" "$KMS_PORT" >/dev/null
}
kms_kill() { "$KMIP_DIR/pykmip-server.sh" kill "$KMS" >/dev/null 2>&1 || true; }
kms_key() { /usr/bin/python3 "$(dirname "${BASH_SOURCE[0]}")/kmip_key.py" "$KMS/certs" "$KMS_PORT" "$@"; }

