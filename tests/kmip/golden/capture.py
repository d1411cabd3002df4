#!/usr/bin/python3
"""Captures KMIP traces from a running pykmip-server (see capture.sh).

Two phases, both against the same freshly started server:

  ours/  vcrypt's own request encodings (ours/NAME.request.hex, written by
         the unit test KmipGolden.OurRequestsMatchGoldenFiles with
         VCRYPT_UPDATE_GOLDEN=1) are sent raw over TLS, in SCENARIOS order,
         on one connection; each reply is stored as ours/NAME.response.hex.
         This runs first, on an empty database, so the server's unique
         identifiers are deterministic ("1", "2", ...), which the requests
         and the tests rely on.

  pykmip/  PyKMIP's own client (kmip.pie.ProxyKmipClient) does Create,
         Activate, Get, Locate, Revoke, Destroy and a Get of the destroyed
         key; request and response encodings are taken from the server's
         DEBUG log ("Request encoding: b'...'" / "Response encoding: ...")
         and stored as pykmip/NAME.{request,response}.hex.

Usage: capture.py --port P --certs DIR --log SERVER_LOG --out GOLDEN_DIR
Runs under Debian's /usr/bin/python3 (python3-pykmip).
"""

import argparse
import binascii
import os
import re
import socket
import ssl
import struct
import sys
import time

# Order matters: later scenarios use the objects earlier ones made.
SCENARIOS = [
    "discover_versions",
    "query",
    "create_activate_placeholder",
    "create",
    "activate",
    "get",
    "get_batch_continue",
    "get_batch_stop",
    "locate",
    "locate_none",
    "get_attributes",
    "destroy_active",
    "revoke",
    "destroy",
    "get_destroyed",
    "create_get_attributes_16",
    "revoke_compromise_destroy",
    "undo_rejected",
    "query_1_4",
]


def read_hex(path):
    with open(path) as f:
        text = "".join(l for l in f if not l.lstrip().startswith("#"))
    return binascii.unhexlify("".join(text.split()))


def write_hex(path, data, comment):
    h = binascii.hexlify(data).decode()
    with open(path, "w") as f:
        f.write("# " + comment + "\n")
        for i in range(0, len(h), 64):
            f.write(h[i:i + 64] + "\n")


def tls_context(certs):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(os.path.join(certs, "ca.pem"))
    ctx.load_cert_chain(os.path.join(certs, "client.pem"),
                        os.path.join(certs, "client-key.pem"))
    return ctx


def recv_exact(sock, n):
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise RuntimeError("connection closed after %d of %d bytes"
                               % (len(buf), n))
        buf += chunk
    return buf


def phase_ours(args):
    ours = os.path.join(args.out, "ours")
    ctx = tls_context(args.certs)
    with socket.create_connection(("127.0.0.1", args.port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            for name in SCENARIOS:
                req = read_hex(os.path.join(ours, name + ".request.hex"))
                s.sendall(req)
                head = recv_exact(s, 8)
                (length,) = struct.unpack(">I", head[4:8])
                resp = head + recv_exact(s, length)
                write_hex(os.path.join(ours, name + ".response.hex"), resp,
                          "pykmip-server 0.10 reply to ours/%s.request.hex "
                          "(tests/kmip/golden/capture.sh)" % name)
                print("ours/%s: %d-byte request, %d-byte response"
                      % (name, len(req), len(resp)))


def phase_pykmip(args):
    from kmip.core import enums
    from kmip.pie.client import ProxyKmipClient
    from kmip.pie.exceptions import KmipOperationFailure

    pyk = os.path.join(args.out, "pykmip")
    os.makedirs(pyk, exist_ok=True)
    start = log_size(args.log)
    names = []
    client = ProxyKmipClient(
        hostname="127.0.0.1", port=args.port,
        cert=os.path.join(args.certs, "client.pem"),
        key=os.path.join(args.certs, "client-key.pem"),
        ca=os.path.join(args.certs, "ca.pem"),
        kmip_version=enums.KMIPVersion.KMIP_1_2,
        config_file="/dev/null")
    with client:
        uid = client.create(
            enums.CryptographicAlgorithm.AES, 256, name="vcrypt-golden-pie",
            cryptographic_usage_mask=[
                enums.CryptographicUsageMask.ENCRYPT,
                enums.CryptographicUsageMask.DECRYPT,
                enums.CryptographicUsageMask.WRAP_KEY,
                enums.CryptographicUsageMask.UNWRAP_KEY])
        names.append("create")
        client.activate(uid)
        names.append("activate")
        client.get(uid)
        names.append("get")
        found = client.locate(attributes=[
            client.attribute_factory.create_attribute(
                enums.AttributeType.NAME, "vcrypt-golden-pie")])
        assert found == [uid], found
        names.append("locate")
        client.revoke(enums.RevocationReasonCode.CESSATION_OF_OPERATION, uid)
        names.append("revoke")
        client.destroy(uid)
        names.append("destroy")
        try:
            client.get(uid)
            raise RuntimeError("Get of a destroyed key succeeded")
        except KmipOperationFailure:
            pass
        names.append("get_destroyed")
    print("pykmip client: key %s" % uid)

    # The server logs asynchronously; wait until every exchange is there.
    deadline = time.time() + 30
    while True:
        with open(args.log, "rb") as f:
            f.seek(start)
            text = f.read().decode("utf-8", "replace")
        # The server reads (and logs) a request in two parts: the 8-byte
        # TTLV header, then the rest.
        parts = re.findall(r"Request encoding: b'([0-9a-f]*)'", text)
        reqs = [parts[i] + parts[i + 1] for i in range(0, len(parts) - 1, 2)]
        resps = re.findall(r"Response encoding: b'([0-9a-f]+)'", text)
        if len(reqs) >= len(names) and len(resps) >= len(names):
            break
        if time.time() > deadline:
            sys.exit("server log has %d requests / %d responses, expected %d"
                     % (len(reqs), len(resps), len(names)))
        time.sleep(0.2)
    for name, req, resp in zip(names, reqs, resps):
        comment = ("pykmip-server 0.10 DEBUG log, PyKMIP ProxyKmipClient %s "
                   "(tests/kmip/golden/capture.sh)" % name)
        write_hex(os.path.join(pyk, name + ".request.hex"),
                  binascii.unhexlify(req), comment)
        write_hex(os.path.join(pyk, name + ".response.hex"),
                  binascii.unhexlify(resp), comment)
        print("pykmip/%s: %d-byte request, %d-byte response"
              % (name, len(req) // 2, len(resp) // 2))


def log_size(path):
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--certs", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    phase_ours(args)
    phase_pykmip(args)


if __name__ == "__main__":
    main()
