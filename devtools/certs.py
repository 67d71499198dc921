"""A cluster's certificates for mutual TLS, made with the `cryptography` package (demo and tests only).

`make_cluster_tls(directory, identities)` writes a CA (`ca.pem`, `ca-key.pem`) and, for every identity, a
directory `directory/NAME/` holding `ca.pem`, `cert.pem` and `key.pem`: exactly what a process's `--tls-dir`
wants (exchange/shared/tls.py). Every certificate is valid for serving and for calling (server and client auth)
for the addresses given, so one identity serves a node's port and its calls to peers and the Sequencer.
An existing CA in `directory` is reused, so certificates made later (a restarted node) still verify.
"""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devtools.consul_acl import write_private
from exchange.shared.tls import CA_FILE, CERT_FILE, KEY_FILE

CA_KEY_FILE = "ca-key.pem"
VALID_DAYS = 365


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "p2p-exchange"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _write(path: Path, data: bytes, private: bool = False) -> None:
    if private:  # a private key: never world-readable, even between its creation and a chmod
        write_private(path, data)
    else:
        path.write_bytes(data)


def make_ca(directory: Path, common_name: str = "p2p-exchange cluster CA") -> tuple[x509.Certificate,
                                                                                      ec.EllipticCurvePrivateKey]:
    """The CA in `directory` (made there first if it is not yet)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
    if cert_path.exists() and key_path.exists():
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return x509.load_pem_x509_certificate(cert_path.read_bytes()), key
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False, data_encipherment=False,
                                     key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    _write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    _write(key_path, _pem_key(key), private=True)
    return cert, key


def make_identity(directory: Path, name: str, hosts: Iterable[str]) -> Path:
    """`directory/name/` with the CA certificate and a certificate + key for `name`, valid for `hosts`
    (IP addresses or DNS names); returns that directory (a `--tls-dir`)."""
    ca_cert, ca_key = make_ca(directory)
    key = ec.generate_private_key(ec.SECP256R1())
    alternative_names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            alternative_names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            alternative_names.append(x509.DNSName(host))
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                       critical=False)
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    target = directory / name
    target.mkdir(parents=True, exist_ok=True)
    _write(target / CA_FILE, ca_cert.public_bytes(serialization.Encoding.PEM))
    _write(target / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM))
    _write(target / KEY_FILE, _pem_key(key), private=True)
    return target


def make_cluster_tls(directory: Path, identities: Mapping[str, Iterable[str]]) -> dict[str, Path]:
    """A CA and one identity per entry of `identities` (name -> hosts); returns name -> its `--tls-dir`."""
    return {name: make_identity(directory, name, hosts) for name, hosts in identities.items()}
