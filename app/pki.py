"""Local TLS material: a CA and a 127.0.0.1 server certificate kept in MODELGATE_HOME/tls.

The issuer and the gateway serve HTTPS with the server certificate; clients (MSAL, the panel,
the CLI, tests) trust the CA file. Everything is generated on first use and reused afterwards.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class TlsMaterial:
    """Paths of the local CA certificate and the server certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path


def ensure_tls(home: Path) -> TlsMaterial:
    """Return the instance's TLS material, generating the CA and server certificate if missing."""
    tls_dir = Path(home) / "tls"
    tls_dir.mkdir(parents=True, exist_ok=True)
    material = TlsMaterial(
        ca_cert=tls_dir / "ca.pem",
        server_cert=tls_dir / "server.pem",
        server_key=tls_dir / "server-key.pem",
    )
    if material.ca_cert.exists() and material.server_cert.exists() and material.server_key.exists():
        return material

    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "modelgate local CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True,
                crl_sign=True, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )

    # Write the key first with 0600 so it is never world-readable, even for an instant.
    _write_private(material.server_key, server_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ))
    material.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    material.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return material


def _write_private(path: Path, data: bytes) -> None:
    """Write bytes to a file created with mode 0600, replacing it atomically."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.replace(tmp, path)
