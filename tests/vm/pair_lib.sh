# tests/vm/pair_lib.sh - for the COMMAND that tests/vm/pair.sh runs in guest
# A: run commands in guest B, wait for both boots. Source it (bash).
# See tests/vm/README.md, "Two hosts"; the agent is tests/vm/pair_agent.sh.
#
#   on_b [-t SEC] CMD [ARGS...]
#       Runs CMD ARGS in guest B as root, in the caller's working directory
#       (both guests see the host root at the same paths), stdin /dev/null,
#       with B's job environment (PATH, VCRYPT_*, ...: not the caller's).
#       Prints its stdout on stdout and its stderr on stderr and returns its
#       exit status: 124 if it ran longer than SEC (default
#       $PAIR_ON_B_TIMEOUT, 120; it is then killed), 125 if B's agent is
#       gone or never answered. Arguments are quoted (printf %q): to run a
#       pipeline, `on_b bash -c '...'`.
#   pair_wait_b [SEC]
#       Waits (default 300 s) until B's agent serves. 0 or 125.
#   pair_wait_boot [SEC]
#       pair_wait_b, then waits until systemd finished booting in A and in
#       B (`systemctl is-system-running --wait`, both at once) and prints
#       "A: STATE" / "B: STATE". Returns non-zero unless both are "running"
#       (a "degraded" boot lists the failed units).
#
# Variables (set by pair.sh in both guests): VCRYPT_PAIR_NAME (a|b),
# VCRYPT_PAIR_SELF_IP, VCRYPT_PAIR_PEER_IP, VCRYPT_PAIR_DIR (the share both
# guests see; /vmout), VCRYPT_PAIR_DISK (the shared disk, same path in both),
# VCRYPT_PAIR_DISKS (all shared disks with pair.sh --disks N, space-separated).

PAIR_DIR=${VCRYPT_PAIR_DIR:-/vmout}
PAIR_RPC=$PAIR_DIR/rpc
PAIR_ON_B_TIMEOUT=${PAIR_ON_B_TIMEOUT:-120}
_pair_seq=0

# Sleep without starting a process (a sleep(1) costs ~0.2 s under TCG): read
# -t on a FIFO nobody writes. Opened once here, so that subshells (every
# $(on_b ...)) inherit it.
_pair_fifo=/run/vcrypt-pair-lib.$$.fifo
if mkfifo "$_pair_fifo" 2>/dev/null; then
	exec {_pair_fifo_fd}<>"$_pair_fifo"
	rm -f "$_pair_fifo"
fi
_pair_nap() {
	if [[ -n ${_pair_fifo_fd:-} ]]; then
		read -r -t "$1" -u "$_pair_fifo_fd" _
	else
		sleep "$1"
	fi
	return 0
}

pair_wait_b() {
	local limit=${1:-300} start=$SECONDS
	until [[ -e $PAIR_RPC/ready ]]; do
		if [[ -e $PAIR_RPC/b-exited ]]; then
			echo "pair: guest B is gone (status $(cat "$PAIR_RPC/b-exited" 2>/dev/null))" >&2
			return 125
		fi
		if ((SECONDS - start >= limit)); then
			echo "pair: guest B's agent did not start within $limit s" >&2
			return 125
		fi
		_pair_nap 0.1
	done
}

# Reads FILE whole into the variable NAME without a process (stops at a NUL).
_pair_slurp() {
	local -n _v=$1
	_v=
	[[ -s $2 ]] || return 0
	IFS= read -r -d '' _v <"$2" || true
}

on_b() {
	local t=$PAIR_ON_B_TIMEOUT
	if [[ ${1:-} == -t ]]; then
		t=${2:-}
		shift 2 || true
	fi
	(($#)) || { echo "on_b: no command" >&2; return 2; }
	[[ $t =~ ^[0-9]+$ && $t -gt 0 ]] || { echo "on_b: bad timeout: $t" >&2; return 2; }
	pair_wait_b || return
	_pair_seq=$((_pair_seq + 1))
	local id=a$BASHPID-$_pair_seq-$RANDOM f out err rc
	f=$PAIR_RPC/$id
	# No process start on this path (each costs ~0.2 s under TCG).
	{
		printf '# timeout %s\n' "$t"
		printf 'cd -- %q || exit 125\n' "$PWD"
		printf ' %q' "$@"
		printf '\n'
	} >"$f.req" || { echo "on_b: cannot write $f.req" >&2; return 125; }
	: >"$f.go" || { echo "on_b: cannot write $f.go" >&2; return 125; }
	# The agent kills the command after t s (and after 5 more with
	# SIGKILL); give the share some slack on top.
	local deadline=$((SECONDS + t + 15))
	until [[ -s $f.rc ]]; do
		if [[ -e $PAIR_RPC/b-exited ]]; then
			echo "on_b: guest B is gone (status $(<"$PAIR_RPC/b-exited")): $*" >&2
			return 125
		fi
		if ((SECONDS >= deadline)); then
			echo "on_b: no answer from guest B within $((t + 15)) s: $*" >&2
			: >"$f.done"
			return 125
		fi
		_pair_nap 0.02
	done
	_pair_slurp out "$f.out"
	_pair_slurp err "$f.err"
	_pair_slurp rc "$f.rc"
	: >"$f.done"  # the agent deletes the files
	printf '%s' "$out"
	printf '%s' "$err" >&2
	rc=${rc%$'\n'}
	[[ $rc =~ ^[0-9]+$ ]] || { echo "on_b: garbled status from guest B: $rc" >&2; return 125; }
	return "$rc"
}

pair_wait_boot() {
	local limit=${1:-300} a b rc=0 pid
	pair_wait_b "$limit" || return
	local f=/run/vcrypt-pair-boot.$BASHPID
	timeout "$limit" systemctl is-system-running --wait >"$f" 2>&1 &
	pid=$!
	b=$(on_b -t "$limit" systemctl is-system-running --wait 2>&1)
	wait "$pid"
	a=$(<"$f")
	rm -f "$f"
	echo "A: $a"
	echo "B: $b"
	if [[ $a != running ]]; then
		rc=1
		systemctl --failed --no-legend --plain 2>&1 | sed 's/^/A failed: /'
	fi
	if [[ $b != running ]]; then
		rc=1
		on_b systemctl --failed --no-legend --plain 2>&1 | sed 's/^/B failed: /'
	fi
	return "$rc"
}
