"""Certificates and keys for a fedveil federation (the ``cryptography`` library; nothing of Flower).

One CA per federation signs every TLS certificate: the SuperLink's server certificate, each
aggregator party's server certificate and the coordinator's client certificate (the only client
identity the parties accept, ``COORDINATOR_CN``). Used by ``deploy/keys.py`` (operators) and by
``privacy/secagg/crypten/launcher.py`` (a throwaway CA for local parties in simulation and tests).

Every private key is created with mode 0600 from the first byte (``os.open(..., 0o600)`` with
``O_EXCL``): there is no moment at which it is readable by others. Existing files are kept.
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

COORDINATOR_CN = "fedveil-coordinator"  # the client identity an aggregator party accepts
DAYS = 365


def write_private(path: str | os.PathLike, data: bytes) -> None:
    """Create ``path`` with mode 0600 and write ``data``; refuses to overwrite (O_EXCL)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)  # whatever the umask: 0600 exactly
        with os.fdopen(fd, "wb") as f:
            fd = -1
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    finally:
        if fd >= 0:
            os.close(fd)


def write_public(path: str | os.PathLike, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_ca(d: str | os.PathLike, name: str = "fedveil CA") -> None:
    """``d/ca.crt`` and ``d/ca.key`` (P-384), unless they exist."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    if (d / "ca.crt").exists():
        return
    key = ec.generate_private_key(ec.SECP384R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    write_private(d / "ca.key", _pem_key(key))
    write_public(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))


def make_cert(d: str | os.PathLike, name: str, common_name: str, hosts: list[str] = (), *, client: bool = False,
              ca_dir: str | os.PathLike | None = None) -> None:
    """``d/NAME.pem`` and ``d/NAME.key`` signed by ``ca_dir/ca.*`` (default ``d``), unless they exist.

    ``hosts`` become subject alternative names (IP addresses or DNS names: what clients dial);
    ``client=True`` makes a TLS client certificate (extended key usage clientAuth), else a server one.
    """
    d, ca_dir = Path(d), Path(ca_dir or d)
    d.mkdir(parents=True, exist_ok=True)
    if (d / f"{name}.pem").exists():
        return
    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH]),
            critical=False,
        )
    )
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    write_private(d / f"{name}.key", _pem_key(key))
    write_public(d / f"{name}.pem", cert.public_bytes(serialization.Encoding.PEM))


def make_node_key(d: str | os.PathLike, name: str) -> None:
    """A SuperNode authentication key pair: ``d/NAME.key`` (OpenSSH, P-384, 0600) and ``d/NAME.pub``."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    if (d / f"{name}.key").exists():
        return
    key = ec.generate_private_key(ec.SECP384R1())
    write_private(d / f"{name}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                                       serialization.NoEncryption()))
    write_public(d / f"{name}.pub", key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                                   serialization.PublicFormat.OpenSSH))


def make_party_tls(d: str | os.PathLike, world: int, hosts: list[str]) -> None:
    """A whole crypten TLS set in ``d``: CA, ``party-R.pem/key`` for R < world (SANs ``hosts``) and
    the coordinator's client certificate ``coordinator.pem/key`` (CN ``COORDINATOR_CN``)."""
    make_ca(d, "fedveil parties CA")
    for rank in range(world):
        make_cert(d, f"party-{rank}", f"fedveil-party-{rank}", hosts)
    make_cert(d, "coordinator", COORDINATOR_CN, client=True)
