"""HTTPS for the teachable camera: browsers give the camera only to a secure origin, so a
phone on the same network needs ``https://``.

    files = certificate_for(None, None, host="0.0.0.0")   # made on first use, then reused
    files.cert, files.key, files.fingerprint               # SHA-256 of the certificate

With ``--tls-cert/--tls-key`` the given pair is used (checked to match). Otherwise a
self-signed certificate (an ECDSA P-256 key, valid for a year, naming localhost, this
machine's name and its addresses) is made once into ``cache_dir()/tls/`` and reused, so
a phone that accepted it once keeps accepting it; it is remade when it expires or does
not match its key. The browser warns about any self-signed certificate: the user checks
that the SHA-256 fingerprint it shows is the one ``edgetune serve`` printed. Both files
are written atomically (edgetune.files.atomic_write: a crash leaves the old pair or the
new one) and are readable by the owner only (0600).

Needs the ``cryptography`` package (the ``serve`` extra).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
from dataclasses import dataclass
from pathlib import Path

from edgetune import paths
from edgetune.errors import EdgetuneError
from edgetune.files import atomic_write

__all__ = ["TlsFiles", "certificate_for", "fingerprint", "local_addresses", "self_signed"]

CERT_NAME, KEY_NAME = "cert.pem", "key.pem"
VALID_DAYS = 365
RENEW_BEFORE = datetime.timedelta(days=7)


@dataclass(frozen=True)
class TlsFiles:
    cert: Path
    key: Path
    fingerprint: str  # SHA-256 of the certificate (DER), AA:BB:... as browsers show it
    self_signed: bool
    created: bool = False  # made just now


def _x509():
    try:
        from cryptography import x509
    except ImportError:
        raise EdgetuneError("HTTPS needs the cryptography package: pip install "
                            "'edgetune[serve]'") from None
    return x509


def fingerprint(cert_pem: bytes) -> str:
    """The SHA-256 fingerprint of a PEM certificate, as browsers show it."""
    from cryptography.hazmat.primitives import hashes

    cert = _x509().load_pem_x509_certificate(cert_pem)
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def local_addresses(host: str | None = None) -> list[str]:
    """The addresses a phone may use to reach this machine: loopback, the bound host if
    it is an address, and the machine's own (no packet is sent: a UDP socket is only
    connected to learn which address the default route uses)."""
    found = ["127.0.0.1", "::1"]
    if host:
        try:
            ipaddress.ip_address(host.strip("[]"))
            found.append(host.strip("[]"))
        except ValueError:
            pass
    try:
        found += [info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None)]
    except OSError:
        pass
    for probe in ("192.0.2.1", "2001:db8::1"):  # documentation addresses, never reached
        family = socket.AF_INET6 if ":" in probe else socket.AF_INET
        try:
            with socket.socket(family, socket.SOCK_DGRAM) as s:
                s.connect((probe, 9))
                found.append(s.getsockname()[0])
        except OSError:
            pass
    unique = []
    for address in found:
        address = address.split("%")[0]
        if address not in unique and not ipaddress.ip_address(address).is_unspecified:
            unique.append(address)
    return unique


def self_signed(directory: Path, host: str | None = None) -> tuple[Path, Path]:
    """Make a self-signed certificate and its key in `directory` (module docstring)."""
    x509 = _x509()
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgetune serve"),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "edgetune (self-signed)")])
    names = [x509.DNSName("localhost")]
    machine = socket.gethostname()
    if machine and machine != "localhost":
        names.append(x509.DNSName(machine))
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in local_addresses(host)]
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(key, hashes.SHA256()))
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    # the key first: a crash between the two leaves a pair that does not match, which
    # the next start remakes
    key_path = atomic_write(directory / KEY_NAME, key_pem)  # mkstemp: 0600
    os.chmod(key_path, 0o600)
    cert_path = atomic_write(directory / CERT_NAME, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


def _usable(cert: Path, key: Path, renew: bool) -> str | None:
    """Why this pair cannot serve (None when it can)."""
    x509 = _x509()
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificate(cert.read_bytes())
    except (OSError, ValueError) as e:
        return f"cannot read the certificate {cert}: {e}"
    try:
        private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        return f"cannot read the private key {key} (it must be PEM, without a password): {e}"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(serialization.Encoding.PEM, public) != \
            private.public_key().public_bytes(serialization.Encoding.PEM, public):
        return f"the key {key} does not belong to the certificate {cert}"
    if renew:
        now = datetime.datetime.now(datetime.timezone.utc)
        if certificate.not_valid_after_utc - RENEW_BEFORE < now:
            return f"the certificate {cert} expires on {certificate.not_valid_after_utc:%Y-%m-%d}"
    return None


def certificate_for(cert: str | os.PathLike | None, key: str | os.PathLike | None, *,
                    host: str | None = None,
                    directory: str | os.PathLike | None = None) -> TlsFiles:
    """The certificate and key to serve HTTPS with: the given pair (both or neither), or
    the self-signed one in `directory` (default ``cache_dir()/tls``), made when missing,
    expiring or broken."""
    if (cert is None) != (key is None):
        raise EdgetuneError("give both --tls-cert and --tls-key (or neither, for a "
                            "self-signed certificate)")
    if cert is not None:
        cert, key = Path(cert), Path(key)
        problem = _usable(cert, key, renew=False)
        if problem:
            raise EdgetuneError(f"{problem}; pass a PEM certificate and its unencrypted "
                                f"PEM key, or leave both out for a self-signed certificate")
        return TlsFiles(cert, key, fingerprint(cert.read_bytes()), self_signed=False)
    folder = Path(directory) if directory is not None else paths.cache_dir() / "tls"
    cert, key = folder / CERT_NAME, folder / KEY_NAME
    created = not (cert.is_file() and key.is_file()) or _usable(cert, key, renew=True) is not None
    if created:
        cert, key = self_signed(folder, host)
    return TlsFiles(cert, key, fingerprint(cert.read_bytes()), self_signed=True,
                    created=created)
