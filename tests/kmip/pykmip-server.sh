#!/bin/bash
# Starts and stops a PyKMIP 0.10 server (Debian python3-pykmip) for tests.
#
#   pykmip-server.sh start DIR PORT [CERTSET]
#   pykmip-server.sh stop DIR
#   pykmip-server.sh kill DIR         SIGKILL at once: a crashed KMS, and a
#                                     fast teardown for tests (PyKMIP's
#                                     graceful stop takes 10-20 s)
#   pykmip-server.sh pid DIR          prints the server's pid (for SIGSTOP)
#
# DIR holds everything of one server instance:
#   DIR/certs/        the test PKI; made with make-certs.sh (next to this
#                     script) if DIR/certs/ca.pem does not exist yet
#   DIR/server.conf   the generated [server] config
#   DIR/server.log    PyKMIP's log (DEBUG: every request/response as TTLV hex)
#   DIR/server.out    stdout/stderr of the process (tracebacks before logging)
#   DIR/pykmip.db     the SQLite database, deleted on every start (fresh state)
#                     unless PYKMIP_KEEP_DB=1
#   DIR/policies/     the (empty) operation policy directory PyKMIP requires
#   DIR/server.pid    pid of the server, which leads its own process group
#
# CERTSET selects the server's identity: "default" (certs/server.pem, trusts
# certs/ca.pem) or "other" (certs/other-server.pem, trusts
# certs/other-ca.pem: a server no vcrypt test client trusts, and which
# rejects the default client certificate).
#
# The server listens on 127.0.0.1:PORT (PYKMIP_ADDRESS overrides the
# address: the two-host VM test serves the other host), TLS 1.2, client certificates
# required. start returns once the log says "Starting connection service..."
# (bounded by PYKMIP_START_TIMEOUT seconds, default 90; ~12 s in a TCG guest).
# stop sends SIGTERM and waits (PyKMIP needs 10-20 s), then SIGKILLs the
# process group after PYKMIP_STOP_TIMEOUT seconds (default 40).
#
# Python's multiprocessing (used by PyKMIP) needs a writable /dev/shm; inside
# a minimal VM mount a tmpfs there first. The server must run under Debian's
# /usr/bin/python3 (a pyenv python first on PATH lacks the kmip module).
#
# PYKMIP_PYTHON and PYKMIP_SERVER override /usr/bin/python3 and
# /usr/bin/pykmip-server.
#
# Self-contained: no paths outside DIR and this script's directory.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PYTHON=${PYKMIP_PYTHON:-/usr/bin/python3}
SERVER=${PYKMIP_SERVER:-/usr/bin/pykmip-server}

die() {
  echo "pykmip-server.sh: $*" >&2
  exit 1
}

usage() {
  echo "usage: $0 start DIR PORT [default|other] | stop DIR | kill DIR | pid DIR" >&2
  exit 2
}

# Prints the last lines of the server's log and output, for error messages.
log_tail() {
  local dir=$1
  if [[ -s $dir/server.log ]]; then
    echo "--- last lines of $dir/server.log:"
    tail -n 20 "$dir/server.log"
  fi
  if [[ -s $dir/server.out ]]; then
    echo "--- last lines of $dir/server.out:"
    tail -n 20 "$dir/server.out"
  fi
}

# True if PID is alive and is the server of DIR: its command line names
# DIR/server.conf (guards against pid reuse; a zombie has an empty cmdline,
# so it does not count).
is_server() {
  local pid=$1 dir=$2
  [[ -n $pid ]] && grep -qaF -- "$dir/server.conf" "/proc/$pid/cmdline" 2>/dev/null
}

# DIR as an absolute path (as written into server.conf and the cmdline).
abs_dir() {
  if [[ -d $1 ]]; then (cd "$1" && pwd); else echo "$1"; fi
}

# True if any live (not zombie) process is left in process group PGID. The
# server runs under setsid, so its group holds only it and the
# multiprocessing helpers it forked (manager, policy monitor).
group_alive() {
  local pgid=$1 stat line rest state pgrp
  for stat in /proc/[0-9]*/stat; do
    { read -r line <"$stat"; } 2>/dev/null || continue  # may have exited
    # comm (field 2) may contain spaces: fields after the last ')' are
    # state, ppid, pgrp, ...
    rest=${line##*) }
    read -r state _ pgrp _ <<<"$rest"
    [[ $pgrp == "$pgid" && $state != Z ]] && return 0
  done
  return 1
}

cmd_start() {
  local dir=$1 port=$2 certset=${3:-default}
  if ! [[ $port =~ ^[1-9][0-9]{0,4}$ ]] || ((port > 65535)); then
    die "invalid port '$port'"
  fi
  [[ -x $SERVER ]] || die "$SERVER not found (apt-get install python3-pykmip)"
  [[ -x $PYTHON ]] || die "$PYTHON not found"
  [[ -d /dev/shm && -w /dev/shm ]] ||
    die "/dev/shm is missing or not writable (Python multiprocessing needs it; mount a tmpfs there)"

  mkdir -p "$dir"
  dir=$(abs_dir "$dir")
  if [[ -f $dir/server.pid ]] && is_server "$(cat "$dir/server.pid")" "$dir"; then
    die "a server is already running for $dir (pid $(cat "$dir/server.pid"))"
  fi
  [[ -f $dir/certs/ca.pem ]] || "$here/make-certs.sh" "$dir/certs"

  local cert key ca
  case $certset in
    default) cert=server ca=ca ;;
    other) cert=other-server ca=other-ca ;;
    *) die "unknown CERTSET '$certset' (default or other)" ;;
  esac
  key=$cert-key

  mkdir -p "$dir/policies"
  # PYKMIP_KEEP_DB=1 keeps the database: a KMS that comes back after an
  # outage with the keys it had.
  [[ ${PYKMIP_KEEP_DB:-0} == 1 ]] || rm -f "$dir/pykmip.db"
  rm -f "$dir/server.log"* "$dir/server.out" "$dir/server.pid"
  cat >"$dir/server.conf" <<EOF
[server]
hostname=${PYKMIP_ADDRESS:-127.0.0.1}
port=$port
certificate_path=$dir/certs/$cert.pem
key_path=$dir/certs/$key.pem
ca_path=$dir/certs/$ca.pem
auth_suite=TLS1.2
policy_path=$dir/policies
enable_tls_client_auth=True
logging_level=DEBUG
database_path=$dir/pykmip.db
EOF

  # setsid: the server and its multiprocessing helpers form one process
  # group that stop can kill as a whole. All fds are redirected so that the
  # server never holds a caller's pipe open (ctest would wait for it).
  setsid "$PYTHON" "$SERVER" -f "$dir/server.conf" -l "$dir/server.log" \
    </dev/null >>"$dir/server.out" 2>&1 &
  local pid=$!
  # Not this shell's job any more: no "Killed" notice if startup fails.
  disown "$pid"
  echo "$pid" >"$dir/server.pid"

  local timeout=${PYKMIP_START_TIMEOUT:-90} waited=0
  while ! grep -q "Starting connection service" "$dir/server.log" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$dir/server.pid"
      die "pykmip-server exited during startup
$(log_tail "$dir")"
    fi
    # A failed start (e.g. the port is taken) does not end the process: its
    # multiprocessing helpers keep it alive. Detect it from the log.
    if grep -q "Server failed to bind" "$dir/server.log" 2>/dev/null ||
      grep -q "^Traceback" "$dir/server.out" 2>/dev/null; then
      kill -KILL -- "-$pid" 2>/dev/null || true
      rm -f "$dir/server.pid"
      die "pykmip-server failed to start on ${PYKMIP_ADDRESS:-127.0.0.1}:$port (port in use?)
$(log_tail "$dir")"
    fi
    if ((waited >= timeout * 10)); then
      kill -KILL -- "-$pid" 2>/dev/null || true
      rm -f "$dir/server.pid"
      die "pykmip-server not ready after ${timeout}s
$(log_tail "$dir")"
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
}

cmd_stop() {
  local dir
  dir=$(abs_dir "$1")
  [[ -f $dir/server.pid ]] || return 0
  local pid
  pid=$(cat "$dir/server.pid")
  if is_server "$pid" "$dir"; then
    kill -TERM "$pid" 2>/dev/null || true
    # A test may have left it stopped (SIGSTOP); SIGTERM waits for SIGCONT.
    kill -CONT -- "-$pid" 2>/dev/null || true
    local timeout=${PYKMIP_STOP_TIMEOUT:-40} waited=0
    # is_server, not kill -0: an exited server may linger as a zombie when
    # its new parent (init) is slow to reap it.
    while is_server "$pid" "$dir" && ((waited < timeout * 10)); do
      sleep 0.1
      waited=$((waited + 1))
    done
  fi
  # Whatever is left of the group (a hung server, orphaned helpers) is
  # killed; the group id is the recorded pid (setsid).
  if group_alive "$pid"; then
    sleep 1
    if group_alive "$pid"; then
      kill -KILL -- "-$pid" 2>/dev/null || true
    fi
  fi
  rm -f "$dir/server.pid"
}

cmd_kill() {
  local dir
  dir=$(abs_dir "$1")
  [[ -f $dir/server.pid ]] || return 0
  local pid waited=0
  pid=$(cat "$dir/server.pid")
  # The group id is the recorded pid (setsid); killing the group takes the
  # multiprocessing helpers too, which would otherwise be orphaned.
  kill -KILL -- "-$pid" 2>/dev/null || true
  while group_alive "$pid" && ((waited < 100)); do
    sleep 0.05
    waited=$((waited + 1))
  done
  rm -f "$dir/server.pid"
}

cmd_pid() {
  local dir pid
  dir=$(abs_dir "$1")
  [[ -f $dir/server.pid ]] || die "no server running for $dir"
  pid=$(cat "$dir/server.pid")
  is_server "$pid" "$dir" || die "no server running for $dir (stale pid $pid)"
  echo "$pid"
}

[[ $# -ge 2 ]] || usage
case $1 in
  start)
    [[ $# -ge 3 && $# -le 4 ]] || usage
    cmd_start "$2" "$3" "${4:-default}"
    ;;
  stop)
    [[ $# -eq 2 ]] || usage
    cmd_stop "$2"
    ;;
  kill)
    [[ $# -eq 2 ]] || usage
    cmd_kill "$2"
    ;;
  pid)
    [[ $# -eq 2 ]] || usage
    cmd_pid "$2"
    ;;
  *) usage ;;
esac
