"""The secrets a join string carries besides the account, each as one URL-safe parameter:
the broker's CA certificate (ca=) and, for a broker host joining a cluster, a member's node
name, Erlang cookie and TLS certificate (cluster=). account.py owns the URL around them."""

__all__ = ["encode_ca", "decode_ca", "encode_cluster", "decode_cluster"]


def encode_ca(path):
    """Return the CA certificate at path as base64url DER, for a join string."""
    import base64
    import ssl
    from pathlib import Path

    der = ssl.PEM_cert_to_DER_cert(Path(path).read_text())
    return base64.urlsafe_b64encode(der).decode().rstrip("=")


def decode_ca(text):
    """Return the PEM certificate carried by a join string's base64url DER. Raise ValueError
    if it is not a certificate."""
    import base64
    import ssl

    der = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if len(der) < 64 or der[0] != 0x30:  # an X.509 certificate is a DER SEQUENCE
        raise ValueError("not a DER certificate")
    pem = ssl.DER_cert_to_PEM_cert(der)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=pem)
    except ssl.SSLError as error:
        raise ValueError(str(error)) from None
    return pem


def encode_cluster(cluster):
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps(cluster).encode()).decode().rstrip("=")


def decode_cluster(text, bad):
    """The cluster= part of a join string: {node, cookie} and optionally {cert, key}. bad(part,
    why) raises the join string's UsageError."""
    import base64
    import binascii
    import json
    import re

    try:
        cluster = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error):
        cluster = None
    if not isinstance(cluster, dict) or not all(isinstance(cluster.get(key), str)
                                                for key in ("node", "cookie")):
        bad("cluster", "not a cluster node's data (copy the whole join string)")
    if not re.fullmatch(r"[\w.-]+@[\w.-]+", cluster["node"]):
        bad("cluster", "a node name that is not NAME@HOST")
    if not cluster["cookie"].strip() or any(c.isspace() or ord(c) < 32
                                            for c in cluster["cookie"].rstrip("\n")):
        bad("cluster", "an empty or invalid Erlang cookie")
    pem = [key for key in ("cert", "key") if isinstance(cluster.get(key), str)
           and cluster[key].startswith("-----BEGIN ")]
    if len(pem) == 1 or set(cluster) - {"node", "cookie", "cert", "key"} \
            or (len(pem) == 0 and ("cert" in cluster or "key" in cluster)):
        bad("cluster", "a certificate without its key, or unknown data")
    return cluster
