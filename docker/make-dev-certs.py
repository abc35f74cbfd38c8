"""Make a development CA, server and client certificates and an access token
for running ats-serve with TLS, mutual TLS and tokens (compose, Kubernetes,
or by hand). Needs the ``cryptography`` package (in the test extra).

    python docker/make-dev-certs.py                 # into docker/secrets/
    python docker/make-dev-certs.py OUT --name ats.example.org

Writes into OUT (private files 0600, others 0644; every file replaced
atomically, so a running server that reads them sees whole files):

    ca.pem, ca-key.pem          the development CA (kept: a second run issues from it)
    server.pem, server-key.pem  for ats-serve: localhost, 127.0.0.1, ::1, the compose
                                service "server", the Kubernetes Services, and every --name
    client.pem, client-key.pem  for ats-client (mutual TLS)
    prometheus.pem, prometheus-key.pem
                                for Prometheus scraping the metrics endpoint (mutual TLS)
    token                       an access token (kept: a second run reuses it)
    tokens.sha256               its SHA-256, for --auth-tokens-file: no secret

A second run renews the server and client certificates from the same CA (the
server picks them up without a restart); delete ca.pem or token for new ones.
This is a development CA: in production, use your own PKI (cert-manager, Vault, ...).
Never commit these files (docker/secrets/ is ignored by git and Docker).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import ipaddress
import os
import pathlib
import secrets
import tempfile
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_OUT = pathlib.Path(__file__).resolve().parent / "secrets"
# The names the server answers to in the compose stack and in docker/k8s (namespace "default").
SERVER_NAMES = (
    "localhost",
    "127.0.0.1",
    "::1",
    "server",
    "ats-server",
    "ats-server.default.svc",
    "ats-server.default.svc.cluster.local",
)
Key = ec.EllipticCurvePrivateKey


def new_key() -> Key:
    """A P-256 key: quick to make, and spoken by gRPC, Python's ssl and Prometheus alike."""
    return ec.generate_private_key(ec.SECP256R1())


def _builder(
    subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey, days: int
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # tolerate clock skew
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
    )


def make_ca(name: str = "ats development CA", days: int = 365) -> tuple[x509.Certificate, Key]:
    """A self-signed CA that may sign leaf certificates only."""
    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    usage = x509.KeyUsage(
        digital_signature=False,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=True,
        crl_sign=True,
        encipher_only=False,
        decipher_only=False,
    )
    cert = (
        _builder(name, subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: tuple[x509.Certificate, Key],
    common_name: str,
    *,
    server_names: Sequence[str] = (),
    days: int = 90,
) -> tuple[x509.Certificate, Key]:
    """A leaf certificate signed by ``ca``: for a server when ``server_names``
    (DNS names or IP addresses) are given, else for a client."""
    ca_cert, ca_key = ca
    key = new_key()
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    purpose = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        _builder(common_name, ca_cert.subject, key.public_key(), days)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([purpose]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if server_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in server_names]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256()), key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: Key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def token_hash(token: str) -> str:
    """The line of a tokens file that accepts ``token`` without holding it."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def write(path: pathlib.Path, data: bytes, mode: int) -> None:
    """Replace ``path`` atomically by ``data`` with ``mode``: readers never see half a file,
    and a private file is never readable by others, not even while written."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        os.unlink(temporary)
        raise


def make_all(out: pathlib.Path, names: Sequence[str] = (), days: int = 90) -> None:
    """Everything the module docstring lists, into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "ca.pem").is_file() and (out / "ca-key.pem").is_file():
        ca_cert = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
        ca_key = serialization.load_pem_private_key((out / "ca-key.pem").read_bytes(), password=None)
        assert isinstance(ca_key, ec.EllipticCurvePrivateKey), "ca-key.pem is not this script's key"
        ca = (ca_cert, ca_key)
    else:
        ca = make_ca()
        write(out / "ca-key.pem", key_pem(ca[1]), 0o600)
        write(out / "ca.pem", cert_pem(ca[0]), 0o644)
    for name, kind, server_names in (
        ("server", "ats-server", (*SERVER_NAMES, *names)),
        ("client", "ats-client", ()),
        ("prometheus", "prometheus", ()),
    ):
        cert, key = issue(ca, kind, server_names=server_names, days=days)
        write(out / f"{name}-key.pem", key_pem(key), 0o600)
        write(out / f"{name}.pem", cert_pem(cert), 0o644)
    if not (out / "token").is_file():
        # hex, not URL-safe base64: such a token may begin with "-", which a
        # command line (`ats-client --token TOKEN`) reads as an option
        write(out / "token", secrets.token_hex(32).encode() + b"\n", 0o600)
    token = (out / "token").read_text().strip()
    write(out / "tokens.sha256", f"# ats-serve --auth-tokens-file\n{token_hash(token)}\n".encode(), 0o644)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", nargs="?", type=pathlib.Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument(
        "--name", action="append", default=[], help="another DNS name or IP of the server (repeatable)"
    )
    parser.add_argument("--days", type=int, default=90, help="validity of the server and client certificates")
    args = parser.parse_args(argv)
    make_all(args.out, args.name, args.days)
    print(f"wrote the development CA, server and client certificates and a token to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
