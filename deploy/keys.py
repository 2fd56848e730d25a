"""Certificates and SuperNode keys for a fedveil deployment (uses the `cryptography` library).

    python deploy/keys.py ca      DIR                      # DIR/ca.crt, DIR/ca.key
    python deploy/keys.py server  DIR HOST [HOST ...]      # DIR/server.pem, server.key signed by DIR/ca.*
    python deploy/keys.py node    DIR NAME                 # DIR/NAME.key (OpenSSH, P-384), DIR/NAME.pub

Keys are written with mode 0600. Existing files are kept (re-running is safe).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DAYS = 365


def write(path: Path, data: bytes, private: bool = False) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def pem_key(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def make_ca(d: Path) -> None:
    if (d / "ca.crt").exists():
        return
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedveil CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + datetime.timedelta(days=DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256()))
    write(d / "ca.key", pem_key(key), private=True)
    write(d / "ca.crt", cert.public_bytes(serialization.Encoding.PEM))


def make_server(d: Path, hosts: list[str]) -> None:
    if (d / "server.pem").exists():
        return
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((d / "ca.crt").read_bytes())
    key = ec.generate_private_key(ec.SECP384R1())
    names = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
            .issuer_name(ca.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write(d / "server.key", pem_key(key), private=True)
    write(d / "server.pem", cert.public_bytes(serialization.Encoding.PEM))


def make_node(d: Path, name: str) -> None:
    if (d / f"{name}.key").exists():
        return
    key = ec.generate_private_key(ec.SECP384R1())
    write(d / f"{name}.key", key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                               serialization.NoEncryption()), private=True)
    write(d / f"{name}.pub", key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH))


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("ca", "server", "node") or (argv[0] != "ca" and len(argv) < 3):
        print(__doc__, file=sys.stderr)
        return 2
    d = Path(argv[1])
    d.mkdir(parents=True, exist_ok=True)
    {"ca": lambda: make_ca(d), "server": lambda: make_server(d, argv[2:]), "node": lambda: make_node(d, argv[2])}[argv[0]]()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
