"""Throwaway X.509 material for the demo, the simulator and the tests.

Real deployments get their certificates from cert-manager or Deckhouse; this module only exists so the
project can run end to end on a laptop with real TLS and no external tooling.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

PrivateKey = ec.EllipticCurvePrivateKey


@dataclass(frozen=True)
class Issued:
    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    def write(self, cert_path: Path, key_path: Path) -> None:
        cert_path.write_bytes(self.cert_pem)
        key_path.touch(mode=0o600)
        key_path.write_bytes(self.key_pem)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _name(common_name: str, organization: str | None = None) -> x509.Name:
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization:
        attrs.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attrs)


def make_ca(common_name: str, *, days: int = 3650) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    name = _name(common_name, "apiproxy")
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def _san(names: list[str]) -> x509.SubjectAlternativeName:
    entries: list[x509.GeneralName] = []
    for name in names:
        if name.startswith("spiffe://"):
            entries.append(x509.UniformResourceIdentifier(name))
            continue
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return x509.SubjectAlternativeName(entries)


def make_leaf(
    ca: Issued,
    common_name: str,
    *,
    names: list[str] | None = None,
    server: bool = True,
    client: bool = False,
    days: int = 365,
    not_before: datetime.datetime | None = None,
    organization: str | None = None,
) -> Issued:
    """A leaf certificate signed by ``ca``; ``names`` become DNS/IP/URI SANs.

    ``organization`` is the subject's O, which kube-apiserver reads as the client's group (an admin
    client certificate carries ``system:masters``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (_now() - datetime.timedelta(minutes=5))
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organization))
        .issuer_name(ca.cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    if names:
        builder = builder.add_extension(_san(names), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


@dataclass(frozen=True)
class ServingFiles:
    """Paths of a CA and a server certificate signed by it, as written by :func:`write_serving_bundle`."""

    ca_file: Path
    cert_file: Path
    key_file: Path


def write_serving_bundle(
    directory: Path,
    prefix: str,
    *,
    names: list[str] | None = None,
    ca: Issued | None = None,
) -> ServingFiles:
    """Write ``<prefix>-ca.crt``, ``<prefix>.crt`` and ``<prefix>.key`` for a loopback server."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = ca or make_ca(f"{prefix} CA")
    leaf = make_leaf(ca, prefix, names=names or ["localhost", "127.0.0.1", "::1"])
    files = ServingFiles(
        ca_file=directory / f"{prefix}-ca.crt",
        cert_file=directory / f"{prefix}.crt",
        key_file=directory / f"{prefix}.key",
    )
    files.ca_file.write_bytes(ca.cert_pem)
    leaf.write(files.cert_file, files.key_file)
    return files
