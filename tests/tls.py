"""Throwaway TLS for loopback tests: a CA of its own, and a context for each side.

Both sides trust only what the test made, so a name the certificate does not
cover fails verification as it would against a real host.
"""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path


def tls_pair(hostname: str) -> tuple[bytes, bytes, bytes]:
    """A throwaway CA and a certificate for `hostname` (PEM: ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagepipe test CA")])

    def build(subject, public_key, extensions) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
        )
        for extension, critical in extensions:
            builder = builder.add_extension(extension, critical=critical)
        return builder.sign(ca_key, hashes.SHA256())

    ca = build(ca_name, ca_key.public_key(), [(x509.BasicConstraints(True, None), True)])
    leaf = build(
        x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]),
        key.public_key(),
        [(x509.SubjectAlternativeName([x509.DNSName(hostname)]), False)],
    )
    pem = serialization.Encoding.PEM
    key_pem = key.private_bytes(
        pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return ca.public_bytes(pem), leaf.public_bytes(pem), key_pem


def server_context(hostname: str, folder: Path) -> tuple[ssl.SSLContext, bytes]:
    """A server context presenting a certificate for `hostname`, and the CA (PEM) that signed it."""
    ca, cert, key = tls_pair(hostname)
    pem = folder / "cert.pem"
    pem.write_bytes(cert + key)  # load_cert_chain reads only from a file
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pem)
    return context, ca


def client_context(ca: bytes) -> ssl.SSLContext:
    """A client context that trusts `ca` alone."""
    return ssl.create_default_context(cadata=ca.decode())
