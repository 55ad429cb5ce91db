"""A throwaway certificate authority and a server certificate for the simulated WinRM host.

`generate_tls(directory)` writes `ca.pem` (the bundle a client trusts), `server.pem` and
`server-key.pem` (what the HTTPS listener serves). The server certificate covers 127.0.0.1, ::1 and
localhost (plus any extra names given), so clients can verify it exactly as they verify a real
WinRM HTTPS listener: by CA bundle and host name.
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


@dataclass(frozen=True)
class TLSFiles:
    ca_cert: Path
    """PEM: the CA certificate; give it to clients as their CA bundle."""
    server_cert: Path
    """PEM: the server certificate (leaf only)."""
    server_key: Path
    """PEM: the server's private key (unencrypted)."""
    client_cert: Path | None = None
    """PEM: a client certificate (clientAuth) from the same CA, when asked for (certificate auth)."""
    client_key: Path | None = None

    @property
    def server_pair(self) -> tuple[str, str]:
        """(cert_pem_path, key_pem_path) as `WSManServer.start(tls=...)` expects."""
        return str(self.server_cert), str(self.server_key)


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "hyperv-operator simulator"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def generate_tls(
    directory: str | Path,
    *,
    extra_dns_names: tuple[str, ...] = (),
    extra_ips: tuple[str, ...] = (),
    valid_days: int = 30,
    ca_common_name: str = "hyperv-operator simulator CA",
    client_common_name: str | None = None,
) -> TLSFiles:
    """Create a CA and a server certificate for loopback; write them as PEM files under `directory`."""
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)
    not_after = now + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = _name(ca_common_name)
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    alt_names += [x509.DNSName(n) for n in extra_dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ("127.0.0.1", "::1", *extra_ips)]
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    files = TLSFiles(out / "ca.pem", out / "server.pem", out / "server-key.pem")
    if client_common_name is not None:
        client_key = ec.generate_private_key(ec.SECP256R1())
        client_cert = (
            x509.CertificateBuilder()
            .subject_name(_name(client_common_name))
            .issuer_name(ca_name)
            .public_key(client_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256())
        )
        files = TLSFiles(files.ca_cert, files.server_cert, files.server_key, out / "client.pem", out / "client-key.pem")
        assert files.client_cert is not None and files.client_key is not None
        files.client_cert.write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
        files.client_key.write_bytes(
            client_key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        files.client_key.chmod(0o600)
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    files.server_key.chmod(0o600)
    return files
