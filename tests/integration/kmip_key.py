#!/usr/bin/python3
"""Test helper: asks a KMS directly (PyKMIP's own client, not vcrypt's code).

  kmip_key.py CERTDIR PORT get UID OUT    writes the key bytes of UID to OUT
  kmip_key.py CERTDIR PORT state UID      prints the key's State, or
                                          "missing" when the KMS has none
  kmip_key.py CERTDIR PORT revoke UID     revokes UID (reason: cessation of
                                          operation), as a KMS admin would
Runs under Debian's /usr/bin/python3 (python3-pykmip).
"""
import os
import sys

from kmip.core import enums
from kmip.pie.client import ProxyKmipClient
from kmip.pie.exceptions import KmipOperationFailure


def main():
    certs, port, op, uid = sys.argv[1:5]
    client = ProxyKmipClient(
        hostname="127.0.0.1", port=int(port),
        cert=os.path.join(certs, "client.pem"),
        key=os.path.join(certs, "client-key.pem"),
        ca=os.path.join(certs, "ca.pem"),
        kmip_version=enums.KMIPVersion.KMIP_1_2,
        config_file="/dev/null")
    with client:
        if op == "get":
            key = client.get(uid)
            fd = os.open(sys.argv[5], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, key.value)
            os.close(fd)
        elif op == "state":
            try:
                attrs = client.get_attributes(uid, ["State"])
                print(attrs[1][0].attribute_value.value.name)
            except KmipOperationFailure:
                print("missing")
        elif op == "revoke":
            client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
        else:
            sys.exit("unknown op " + op)


if __name__ == "__main__":
    main()
