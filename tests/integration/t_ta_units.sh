# The Trust Authority's systemd units (systemd/vcrypt-ta-*.service) run by
# a real systemd, set up as docs/trusted-admin.md tells an admin to: the
# binary where the unit's ExecStart looks for it, the sysusers.d user, the
# state directory initialised as that user, the options in
# /etc/vcrypt-ta/*.conf. Then a host (swtpm, vcryptd, a `trusted`
# provider) creates and reopens a real dm-crypt volume through them.
#
# Needs systemd as PID 1 (tests/vm/run.sh --systemd): elsewhere it skips
# (exit 77). Everything it installs lands in the VM's overlay root, never on
# the machine running the VM; it removes the units again for the tests that
# share the boot.

source "$(dirname "${BASH_SOURCE[0]}")/trusted_env.sh"

TA_UNITS=(vcrypt-ta-attestation.service vcrypt-ta-key-provider.service)

ta_units_cleanup() {
	cleanup_loops
	stop_daemon
	systemctl stop "${TA_UNITS[@]}" >/dev/null 2>&1 || true
	local u
	for u in "${TA_UNITS[@]}"; do rm -f "/etc/systemd/system/$u"; done
	systemctl daemon-reload || true
	systemctl reset-failed "${TA_UNITS[@]}" >/dev/null 2>&1 || true
	rm -rf /etc/vcrypt-ta /var/lib/vcrypt-ta
	tpm_stop
}

# Installs the built units, the binary and the sysusers.d user.
ta_units_install() {
	local u exe
	for u in "${TA_UNITS[@]}"; do
		[[ -f $VCRYPT_BUILD/systemd/$u ]] || fail "$VCRYPT_BUILD/systemd/$u not built"
		install -m 0644 "$VCRYPT_BUILD/systemd/$u" /etc/systemd/system/
	done
	exe=$(sed -n 's/^ExecStart=\([^ ]*\) .*/\1/p' "/etc/systemd/system/${TA_UNITS[0]}")
	[[ $exe == /*/vcrypt-ta ]] || fail "unexpected ExecStart binary '$exe'"
	install -D -m 0755 "$VCRYPT_TA" "$exe"
	install -D -m 0644 "$(dirname "${BASH_SOURCE[0]}")/../../systemd/vcrypt-ta.sysusers" \
		/etc/sysusers.d/vcrypt-ta.conf
	systemd-sysusers /etc/sysusers.d/vcrypt-ta.conf || fail "systemd-sysusers failed"
	id vcrypt-ta >/dev/null || fail "no user vcrypt-ta"
	systemctl daemon-reload
}

# The admin's files: TLS certificate and key readable by the services'
# group only, the primary key file owned by the user, the options.
ta_units_configure() {
	install -d -m 0750 -g vcrypt-ta /etc/vcrypt-ta
	install -m 0644 "$T/pki/server.pem" /etc/vcrypt-ta/tls.pem
	install -m 0640 -g vcrypt-ta "$T/pki/server.key" /etc/vcrypt-ta/tls.key
	install -m 0600 -o vcrypt-ta -g vcrypt-ta "$T/primary.key" /etc/vcrypt-ta/primary.key
	AS_PORT=$((42000 + RANDOM % 10000))  # above tpm_start's ports
	KPS_PORT=$((AS_PORT + 1))
	local tls="--tls-cert /etc/vcrypt-ta/tls.pem --tls-key /etc/vcrypt-ta/tls.key"
	echo "VCRYPT_TA_OPTS=--listen 127.0.0.1:$AS_PORT $tls" \
		>/etc/vcrypt-ta/attestation-service.conf
	echo "VCRYPT_TA_OPTS=--listen 127.0.0.1:$KPS_PORT $tls --provider-id ta-kps --primary-key-file /etc/vcrypt-ta/primary.key" \
		>/etc/vcrypt-ta/key-provider-service.conf
}

# Waits until the current run of UNIT logged its "listening on" line.
ta_unit_listening() {  # unit
	local i id
	for i in $(seq 1 300); do
		id=$(systemctl show -p InvocationID --value "$1")
		[[ -n $id ]] && journalctl -q "_SYSTEMD_INVOCATION_ID=$id" -o cat --no-pager 2>/dev/null |
			grep -q '^listening on ' && return 0
		[[ $(systemctl show -p ActiveState --value "$1") == failed ]] && break
		sleep 0.1
	done
	systemctl status --no-pager "$1" || true
	journalctl -q -u "$1" -o cat --no-pager | tail -20
	fail "$1 is not listening"
}

test_ta_units_serve_a_host_and_stop_cleanly() {
	[[ -d /run/systemd/system ]] ||
		skip "needs systemd as PID 1 (run in tests/vm/run.sh --systemd)"
	[[ -x $VCRYPT_TA ]] || fail "$VCRYPT_TA not built"
	trap ta_units_cleanup EXIT
	ta_units_install
	tpm_start
	ta_pki
	head -c 32 /dev/urandom >"$T/primary.key"
	# The admin works as the services' user, on the directory the units
	# use; it reads the EK and PCR files from this test's directory.
	chmod 0711 "$T"
	umask 022
	install -d -m 0700 -o vcrypt-ta -g vcrypt-ta /var/lib/vcrypt-ta
	TA_RUNAS=vcrypt-ta TA_STATE=/var/lib/vcrypt-ta ta_admin_setup
	ta_units_configure
	systemctl start "${TA_UNITS[@]}" || fail "the units did not start"
	ta_unit_listening vcrypt-ta-attestation.service
	ta_unit_listening vcrypt-ta-key-provider.service

	local u pid
	for u in "${TA_UNITS[@]}"; do
		pid=$(systemctl show -p MainPID --value "$u")
		assert_eq vcrypt-ta "$(stat -c %U "/proc/$pid")" "$u runs as"
	done

	start_daemon
	vc provider add trusted ta --attestation "https://127.0.0.1:$AS_PORT" \
		--kps "https://127.0.0.1:$KPS_PORT" --ca "$T/pki/ca.pem" --tcti "$TCTI" \
		--host "$TA_HOST" >/dev/null
	vc vm create vm1 --provider ta >/dev/null
	vc volume create vm1 d0 --file "$T/d0.img" --size 40M >/dev/null
	local p
	p=$(vc open vm1/d0)
	write_pattern "$p" 4 d0.sha
	vc close vm1/d0 >/dev/null
	# Whatever the services wrote to their state directory is the user's.
	local foreign
	foreign=$(find /var/lib/vcrypt-ta ! -user vcrypt-ta)
	[[ -z $foreign ]] || fail "state files not owned by vcrypt-ta: $foreign"

	# Restarted services (their state survives in the StateDirectory) and a
	# fresh vcryptd (no cached KEK or token): attest and unwrap again.
	systemctl restart "${TA_UNITS[@]}"
	ta_unit_listening vcrypt-ta-attestation.service
	ta_unit_listening vcrypt-ta-key-provider.service
	stop_daemon
	start_daemon
	p=$(vc open vm1/d0)
	assert_eq "$(cat "$T/d0.sha")" "$(read_sha "$p" 4)" "d0 data"
	vc close vm1/d0 >/dev/null

	# SIGTERM from systemctl stop: a clean exit 0, not a failure.
	systemctl stop "${TA_UNITS[@]}"
	for u in "${TA_UNITS[@]}"; do
		assert_eq "success 0" "$(systemctl show -p Result --value "$u") $(systemctl show -p ExecMainStatus --value "$u")" \
			"$u stopped"
	done
}
