#!/usr/bin/env bash
# tests/vm/pair_agent.sh - guest B's job in tests/vm/pair.sh: runs the
# commands that guest A sends with on_b (tests/vm/pair_lib.sh) until
# pair.sh asks it to stop. See tests/vm/README.md, "Two hosts".
#
# The channel is a directory on the 9p share both guests mount (cache=none,
# so each sees the other's writes at once), $VCRYPT_PAIR_DIR/rpc:
#   ID.req    written by A: a bash script sourced in a subshell (builtins
#             cost no process start); first line "# timeout SEC"
#   ID.go     created by A once ID.req is complete
#   ID.out    its stdout;  ID.err  its stderr
#   ID.rc     its exit status (decimal, one write); 124 if it timed out
#   ID.done   created by A once it read the answer: this agent deletes ID.*
#   ready     written when this agent serves (its content: B's hostname)
#   stop      written by pair.sh when A's job ended: the agent exits 0
# Requests run concurrently, each in its own process group (killed with
# SIGTERM, SIGKILL 5 s later, when its timeout expires), with stdin
# /dev/null, as root, with this job's environment.
# Every process start costs ~0.2 s of emulated CPU under TCG, so the hot
# path uses none: glob, read -t on a FIFO as the sleep, `: >` to create.
set -u

rpc=${VCRYPT_PAIR_DIR:-/vmout}/rpc
mkdir -p "$rpc" || exit 125
fifo=/run/vcrypt-pair-agent.fifo
rm -f "$fifo"
mkfifo "$fifo" || exit 125
exec 8<>"$fifo"
nap() { read -r -t "$1" -u 8 _; }

serve() {  # ID: run $rpc/ID.req, answer in $rpc/ID.{out,err,rc}
	local id=$1 t=60 first rc pid wpid
	read -r first <"$rpc/$id.req" || true
	[[ $first =~ ^\#\ timeout\ ([0-9]+)$ ]] && t=${BASH_REMATCH[1]}
	# Job control: the request gets a process group of its own, which the
	# watchdog can kill whole.
	set -m
	(
		set +u
		exec 8<&-
		# shellcheck source=/dev/null
		source "$rpc/$id.req"
	) </dev/null >"$rpc/$id.out" 2>"$rpc/$id.err" &
	pid=$!
	set +m
	(
		nap "$t"
		: >"$rpc/$id.timeout"
		kill -TERM -- "-$pid" 2>/dev/null
		nap 5
		kill -KILL -- "-$pid" 2>/dev/null
	) &
	wpid=$!
	wait "$pid"
	rc=$?
	kill "$wpid" 2>/dev/null
	[[ -e $rpc/$id.timeout ]] && rc=124
	printf '%s\n' "$rc" >"$rpc/$id.rc"
}

printf '%s\n' "$(hostname)" >"$rpc/ready.tmp" && mv -f "$rpc/ready.tmp" "$rpc/ready"
echo "[pair-agent] serving $rpc"
shopt -s nullglob
# IDs already served / cleaned (kept: their files may outlive one pass).
declare -A taken=() cleaned=()
while [[ ! -e $rpc/stop ]]; do
	for go in "$rpc"/*.go; do
		id=${go##*/}
		id=${id%.go}
		[[ -n ${taken[$id]:-} ]] && continue
		taken[$id]=1
		serve "$id" &
	done
	done_ids=()
	for d in "$rpc"/*.done; do
		id=${d##*/}
		id=${id%.done}
		[[ -n ${cleaned[$id]:-} ]] && continue
		cleaned[$id]=1
		done_ids+=("$rpc/$id".{req,go,out,err,rc,timeout,done})
	done
	((${#done_ids[@]} == 0)) || rm -f -- "${done_ids[@]}" &
	nap 0.05
done
echo "[pair-agent] stop requested"
wait
exit 0
