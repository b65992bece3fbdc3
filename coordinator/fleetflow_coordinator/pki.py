"""A development certificate authority: ``fleetflow certs`` (with the ``cryptography`` package).

It makes what a fleet needs for TLS in a minute: a CA, a server certificate
for the coordinator's host names and addresses, and client certificates for
workers and clients (their common name is the identity the coordinator's auth
file gives roles to). Keys are ECDSA P-256 and are written 0600; the CA's key
stays in the directory so more certificates can be issued later. For a real
deployment use your organisation's CA instead: the coordinator only needs a
certificate and key (PEM) and, for mutual TLS, the CA bundle clients' certificates
chain to.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["Authority", "write_private"]

#: Names a coordinator certificate always covers, so local clients need no override.
LOCAL_NAMES = ("localhost", "127.0.0.1", "::1")


def write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` readable by its owner only (0600), replacing it.

    Raises:
        OSError: the file cannot be written.
    """
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)  # an existing file keeps its old mode through O_CREAT
    os.replace(tmp, path)


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


class Authority:
    """A CA kept as ``ca.pem`` and ``ca-key.pem`` in a directory.

    Args:
        directory: Where the CA lives; created (0700) if missing.
        days: Validity of the CA and of certificates it issues, days.
    """

    def __init__(self, directory: Path, days: int = 365) -> None:
        self.directory = directory
        self.days = days
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        cert_path, key_path = directory / "ca.pem", directory / "ca-key.pem"
        if cert_path.exists() and key_path.exists():
            self.cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{key_path}: not an EC key made by `fleetflow certs`")
            self.key = key
            self.created = False
        else:
            self.key = ec.generate_private_key(ec.SECP256R1())
            name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fleetflow development CA")])
            self.cert = (
                self._builder(name, self.key.public_key(), name)
                .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                .add_extension(
                    x509.KeyUsage(
                        digital_signature=True, content_commitment=False,
                        key_encipherment=False, data_encipherment=False, key_agreement=False,
                        key_cert_sign=True, crl_sign=True, encipher_only=False,
                        decipher_only=False,
                    ),
                    critical=True,
                )
                .sign(self.key, hashes.SHA256())
            )  # fmt: skip
            write_private(key_path, self._key_pem(self.key))
            cert_path.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))
            self.created = True

    @property
    def ca_path(self) -> Path:
        """The CA bundle (``ca.pem``) clients and workers verify the coordinator with."""
        return self.directory / "ca.pem"

    def _builder(
        self, subject: x509.Name, public_key: ec.EllipticCurvePublicKey, issuer: x509.Name
    ) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=self.days))
        )

    @staticmethod
    def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def issue(
        self, stem: str, common_name: str, *, hosts: tuple[str, ...] = (), server: bool = False
    ) -> tuple[Path, Path]:
        """Issue a certificate and key as ``<stem>.pem`` and ``<stem>-key.pem``.

        Args:
            stem: File name stem in the CA's directory.
            common_name: The subject's CN: the identity the auth file names.
            hosts: DNS names and IP addresses the certificate is valid for
                (server certificates; :data:`LOCAL_NAMES` are always added).
            server: A server certificate (the coordinator) rather than a client one.

        Returns:
            ``(certificate path, key path)``.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(subject, key.public_key(), self.cert.subject)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            names = list(dict.fromkeys((*hosts, *LOCAL_NAMES)))
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san(n) for n in names]), critical=False
            )
        cert = builder.sign(self.key, hashes.SHA256())
        cert_path = self.directory / f"{stem}.pem"
        key_path = self.directory / f"{stem}-key.pem"
        write_private(key_path, self._key_pem(key))
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, key_path
