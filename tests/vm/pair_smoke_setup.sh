# tests/vm/pair_smoke_setup.sh - pair.sh --setup file of tests/vm/pair_smoke.sh
# (sourced as root in each guest's overlay root before systemd, and so
# before libvirtd, starts: libvirtd looks for hook scripts only then).
#
# Installs /etc/libvirt/hooks/qemu: a hook that records each call in
# /vmout/hooks/NAME/ (NAME = a or b):
#   NNN.args    its arguments, one per line
#   NNN.stdin   what libvirt wrote on its stdin (the domain XML)
#   log         "NNN SHA256-OF-STDIN EXIT-STATUS ARGS..." per call
#   count       the number of the last call
# Call numbers are claimed with O_EXCL creates, so concurrent calls (of
# several domains) cannot share one.
# It prints nothing on stdout (for "migrate begin" libvirt would take that
# as a replacement domain XML). While /run/vcrypt-smoke-refuse-migrate
# exists it fails "migrate begin" with exit 1 and a one-line message on
# stderr, as a hook that refuses an incoming migration would.

pair_smoke_setup() {
	local dir=/vmout/hooks/$VCRYPT_PAIR_NAME
	rm -rf "$dir" && mkdir -p "$dir" /etc/libvirt/hooks || return
	# Under TCG every process start costs ~0.2 s, and libvirtd waits for
	# the hook: builtins but for bash itself and sha256sum.
	cat >/etc/libvirt/hooks/qemu <<-EOF || return
	#!/bin/bash
	# Recording hook of tests/vm/pair_smoke.sh (test only).
	dir=$dir
	n=0
	[[ -s \$dir/count ]] && n=\$(<"\$dir/count")
	# Claim the next call number: with noclobber, > is an O_EXCL create.
	while :; do
		n=\$((10#\$n + 1))
		printf -v f '%s/%03d' "\$dir" "\$n"
		(set -o noclobber; : >"\$f.args") 2>/dev/null && break
	done
	IFS= read -r -d '' xml || true
	printf '%s' "\$xml" >"\$f.stdin"
	printf '%s\n' "\$@" >"\$f.args"
	rc=0
	if [[ \$2 == migrate && \$3 == begin && -e /run/vcrypt-smoke-refuse-migrate ]]; then
		echo "pair-smoke test hook on vcrypt-$VCRYPT_PAIR_NAME: incoming migration of \$1 refused" >&2
		rc=1
	fi
	sum=\$(printf '%s' "\$xml" | sha256sum)
	printf '%03d %s %s %s\n' "\$n" "\${sum%% *}" "\$rc" "\$*" >>"\$dir/log"
	printf '%s\n' "\$n" >"\$dir/count"
	exit \$rc
	EOF
	chmod 0755 /etc/libvirt/hooks/qemu
}

pair_smoke_setup
