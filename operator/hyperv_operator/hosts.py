"""Connections to Hyper-V hosts: one client per HyperVHost, rebuilt when its spec or Secrets change.

Credentials come from Secrets in the host's namespace, are kept in memory only (client-certificate
files go to a private temporary folder, mode 0600) and never reach logs, status or events.

Secrets are cached (`SecretCache`): read from the API once per referenced Secret, then kept current
by the operator's Secret watch (`SecretCache.observe`, fed by a kopf event handler), so a reconcile
step costs no Secret GET and an edited Secret changes the credentials' fingerprint, which replaces
the host's client on its next use.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from hyperv_operator.api import HyperVHostSpec
from hyperv_operator.hyperv.client import HyperVClient

logger = logging.getLogger("hyperv_operator.hosts")


class HostConfigError(Exception):
    """The HyperVHost cannot be used as configured (missing Secret or key); retrying won't help."""


@dataclass(frozen=True)
class HostCredentials:
    username: str | None = None
    password: str | None = None
    client_cert_pem: bytes | None = None
    client_key_pem: bytes | None = None
    ca_bundle_pem: bytes | None = None
    keytab: bytes | None = None

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for part in (self.username, self.password):
            digest.update((part or "").encode() + b"\0")
        for blob in (self.client_cert_pem, self.client_key_pem, self.ca_bundle_pem, self.keytab):
            digest.update((blob or b"") + b"\0")
        return digest.hexdigest()


SecretReader = Callable[[str, str], Mapping[str, str] | None]
"""(namespace, name) -> the Secret's base64 `data`, or None if it does not exist."""

SecretKey = tuple[str, str]


class SecretCache:
    """(namespace, name) -> a Secret's `data` (None: it does not exist), read once, then watched.

    Only Secrets some HyperVHost asked for are kept: watch events for other Secrets are ignored, so
    memory does not grow with the cluster's Secrets. A watch event that arrives while the first read
    of that Secret is in flight wins over the read's (possibly older) answer.
    """

    def __init__(self, read: SecretReader) -> None:
        self._read = read
        self._data: dict[SecretKey, Mapping[str, str] | None] = {}
        self._reading: dict[SecretKey, int] = {}
        """Secrets being read now -> watch events seen for them meanwhile."""
        self.reads = 0
        """GETs sent to the API (observability and tests)."""

    async def get(self, namespace: str, name: str) -> Mapping[str, str] | None:
        key = (namespace, name)
        if key in self._data:
            return self._data[key]
        self._reading.setdefault(key, 0)
        self.reads += 1
        try:
            data = await asyncio.to_thread(self._read, namespace, name)
        finally:
            raced = self._reading.pop(key, 0)
        if key in self._data:  # a watch event (or a concurrent read) got there first: it is newer
            return self._data[key]
        if not raced:
            self._data[key] = data
        return data

    def observe(self, namespace: str, name: str, data: Mapping[str, str] | None) -> bool:
        """A watch event: the Secret now has `data` (None: deleted). True if a cached Secret changed."""
        key = (namespace, name)
        if key in self._reading:
            self._reading[key] += 1
        if key not in self._data:
            return False
        changed = self._data[key] != data
        self._data[key] = None if data is None else {str(k): str(v) for k, v in data.items()}
        return changed

    def forget(self, namespace: str, name: str) -> None:
        self._data.pop((namespace, name), None)

    def __len__(self) -> int:
        return len(self._data)

ClientFactory = Callable[[HyperVHostSpec, HostCredentials, str], HyperVClient]
"""(spec, credentials, private folder for cert files) -> a client for that host."""


def kubernetes_secret_reader() -> SecretReader:
    """Reads Secrets with the kubernetes client from the kubeconfig / in-cluster config."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    core = kubernetes.client.CoreV1Api()

    def read(namespace: str, name: str) -> Mapping[str, str] | None:
        try:
            secret = core.read_namespaced_secret(name, namespace)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return {str(k): str(v) for k, v in (secret.data or {}).items()}

    return read


def _decode(data: Mapping[str, str], key: str) -> bytes | None:
    value = data.get(key)
    return base64.b64decode(value) if value else None


async def load_credentials(spec: HyperVHostSpec, namespace: str, secrets: SecretCache) -> HostCredentials:
    username = password = None
    cert = key = ca = keytab = None
    if spec.credentials_secret:
        data = await secrets.get(namespace, spec.credentials_secret)
        if data is None:
            raise HostConfigError(f"credentials Secret {namespace}/{spec.credentials_secret} not found")
        if spec.auth == "certificate":
            cert, key = _decode(data, "tls.crt"), _decode(data, "tls.key")
            if not cert or not key:
                raise HostConfigError(
                    f"Secret {namespace}/{spec.credentials_secret} needs keys tls.crt and tls.key for certificate auth"
                )
        else:
            raw_user, raw_password = _decode(data, "username"), _decode(data, "password")
            if spec.auth in ("kerberos", "negotiate"):
                keytab = _decode(data, "keytab")  # a keytab instead of the password (Kerberos only)
            if not raw_user or (raw_password is None and keytab is None):
                needs = "username and password (or keytab)" if spec.auth in ("kerberos", "negotiate") else (
                    "username and password")
                raise HostConfigError(f"Secret {namespace}/{spec.credentials_secret} needs keys {needs}")
            username = raw_user.decode()
            password = raw_password.decode() if raw_password is not None and keytab is None else None
    elif spec.auth != "kerberos":
        raise HostConfigError(f"auth {spec.auth} needs credentialsSecretRef")
    if spec.ca_bundle_secret:
        data = await secrets.get(namespace, spec.ca_bundle_secret)
        if data is None:
            raise HostConfigError(f"CA bundle Secret {namespace}/{spec.ca_bundle_secret} not found")
        ca = _decode(data, "ca.crt")
        if not ca:
            raise HostConfigError(f"Secret {namespace}/{spec.ca_bundle_secret} has no key ca.crt")
    return HostCredentials(username, password, cert, key, ca, keytab)


@dataclass
class _Entry:
    fingerprint: str
    client: HyperVClient
    folder: str


class HostConnections:
    """host key ("namespace/name") -> client, reused across reconciles."""

    def __init__(self, factory: ClientFactory, read_secret: SecretReader) -> None:
        self._factory = factory
        self.secrets = SecretCache(read_secret)
        self._entries: dict[str, _Entry] = {}
        self._lock = asyncio.Lock()

    async def client_for(self, namespace: str, name: str, spec: HyperVHostSpec) -> HyperVClient:
        credentials = await load_credentials(spec, namespace, self.secrets)
        fingerprint = hashlib.sha256(repr(spec).encode() + credentials.fingerprint().encode()).hexdigest()
        key = f"{namespace}/{name}"
        async with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry.fingerprint == fingerprint:
                return entry.client
            if entry is not None:
                await self._drop(key)
            if spec.insecure_skip_tls_verify:
                logger.warning("HyperVHost %s skips TLS certificate verification (insecureSkipTlsVerify)", key)
            folder = tempfile.mkdtemp(prefix="hyperv-operator-host-")
            os.chmod(folder, 0o700)
            client = self._factory(spec, credentials, folder)
            self._entries[key] = _Entry(fingerprint, client, folder)
            return client

    async def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is None:
            return
        with contextlib.suppress(Exception):
            await entry.client.close()
        for file in os.listdir(entry.folder):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(entry.folder, file))
        with contextlib.suppress(OSError):
            os.rmdir(entry.folder)

    async def forget(self, namespace: str, name: str) -> None:
        async with self._lock:
            await self._drop(f"{namespace}/{name}")

    async def close(self) -> None:
        async with self._lock:
            for key in list(self._entries):
                await self._drop(key)


def write_private_file(folder: str, name: str, content: bytes) -> str:
    path = os.path.join(folder, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(content)
    return path


def host_spec_from_body(spec: Mapping[str, Any]) -> HyperVHostSpec:
    return HyperVHostSpec.from_dict(spec)


def winrm_client_factory(
    *, connection_timeout: float = 30.0, read_timeout: float = 30.0, operation_timeout: float = 20.0
) -> ClientFactory:
    """Production: a pypsrp WinRMClient per HyperVHost."""
    from hyperv_operator.api import Transport
    from hyperv_operator.hyperv.winrm import WinRMClient, WinRMSettings

    def build(spec: HyperVHostSpec, credentials: HostCredentials, folder: str) -> HyperVClient:
        cert_pem = key_pem = ca_bundle = None
        if credentials.client_cert_pem and credentials.client_key_pem:
            cert_pem = write_private_file(folder, "client.pem", credentials.client_cert_pem)
            key_pem = write_private_file(folder, "client-key.pem", credentials.client_key_pem)
        if credentials.ca_bundle_pem:
            ca_bundle = write_private_file(folder, "ca.pem", credentials.ca_bundle_pem)
        keytab = write_private_file(folder, "client.keytab", credentials.keytab) if credentials.keytab else None
        try:
            settings = WinRMSettings(
                server=spec.address,
                port=spec.effective_port,
                ssl=spec.transport is Transport.HTTPS,
                auth=spec.auth,
                username=credentials.username,
                password=credentials.password,
                keytab=keytab,
                cert_pem=cert_pem,
                key_pem=key_pem,
                ca_bundle=ca_bundle,
                cert_validation=not spec.insecure_skip_tls_verify,
                configuration_name=spec.configuration_name,
                connection_timeout=connection_timeout,
                read_timeout=read_timeout,
                operation_timeout=operation_timeout,
                allow_unencrypted=spec.allow_unencrypted_http,
                reconnection_backoff=0.5,
                max_connections=spec.max_connections,
            )
        except ValueError as exc:
            raise HostConfigError(str(exc)) from exc
        return WinRMClient(settings)

    return build
