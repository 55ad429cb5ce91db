"""The admission webhook's transport: kopf's WebhookServer with a certificate, and its CA bundle.

Two ways to get the certificate:
- self-signed (default): at start the operator makes a CA and a serving certificate for the
  webhook Service's DNS names (and any addresses given), keeps them in a private temporary folder,
  and writes the CA into `caBundle` of the ValidatingWebhookConfiguration shipped in manifests/
  (a strategic-merge PATCH of that one object; RBAC allows `patch` on that name only);
- cert-manager: `--webhook-cert-dir` points at the mounted Secret (tls.crt, tls.key) and
  cert-manager's CA injector fills `caBundle` (annotation `cert-manager.io/inject-ca-from`);
  the operator then does not patch the configuration (`--webhook-configuration ''`).
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

logger = logging.getLogger("hyperv_operator.webhook")

VALIDATE_VM_ID = "validate-vm"
"""kopf serves a handler at /<id>: the configuration's path (or URL) ends with it."""
DEFAULT_CONFIGURATION = "hyperv-operator"
VM_WEBHOOK_NAME = "virtualmachines.validate.hyperv-operator.io"
"""The webhook's name in the ValidatingWebhookConfiguration (manifests/webhook/)."""
DEFAULT_SERVICE_NAMES = (
    "hyperv-operator-webhook.hyperv-operator-system.svc",
    "hyperv-operator-webhook.hyperv-operator-system.svc.cluster.local",
)


@dataclass(frozen=True)
class WebhookCertificate:
    cert_file: str
    key_file: str
    ca_pem: bytes


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def generate_self_signed(names: tuple[str, ...], *, valid_days: int = 365) -> WebhookCertificate:
    """A throwaway CA and a serving certificate for `names` (DNS names or IP addresses), mode 0600."""
    folder = tempfile.mkdtemp(prefix="hyperv-operator-webhook-")
    os.chmod(folder, 0o700)
    now = datetime.datetime.now(datetime.UTC)
    start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=valid_days)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hyperv-operator webhook CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = [
        x509.IPAddress(ipaddress.ip_address(n)) if _is_ip(n) else x509.DNSName(n) for n in names
    ]
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = Path(folder) / "tls.crt", Path(folder) / "tls.key"
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM) + ca_pem)
    fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return WebhookCertificate(str(cert_file), str(key_file), ca_pem)


def from_cert_dir(folder: str) -> WebhookCertificate:
    """cert-manager's Secret mounted as a folder: tls.crt, tls.key, ca.crt (ca.crt optional)."""
    base = Path(folder)
    ca = base / "ca.crt"
    return WebhookCertificate(str(base / "tls.crt"), str(base / "tls.key"), ca.read_bytes() if ca.exists() else b"")


def ca_bundle_patch(ca_pem: bytes, webhook_names: tuple[str, ...]) -> dict[str, object]:
    """Strategic-merge patch setting caBundle on the named webhooks (merged by name, rest untouched)."""
    bundle = base64.b64encode(ca_pem).decode()
    return {"webhooks": [{"name": name, "clientConfig": {"caBundle": bundle}} for name in webhook_names]}


def inject_ca_bundle(configuration: str, ca_pem: bytes, webhook_names: tuple[str, ...]) -> None:
    """PATCH caBundle into the ValidatingWebhookConfiguration (kubernetes client, blocking)."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    admission = kubernetes.client.AdmissionregistrationV1Api()
    admission.patch_validating_webhook_configuration(
        configuration, ca_bundle_patch(ca_pem, webhook_names),
        _content_type="application/strategic-merge-patch+json",
    )
    logger.info("CA bundle written into ValidatingWebhookConfiguration %s", configuration)
