"""The tenancy glue: host resolution from kopf's indices, and the webhook's certificate material."""

from __future__ import annotations

import base64
import ipaddress
import socket
import ssl
import threading
from pathlib import Path
from typing import Any

from cryptography import x509

from hyperv_operator.handlers import resolve_host
from hyperv_operator.tenancy.webhook import ca_bundle_patch, generate_self_signed

HOST = {"address": "hv", "defaultVmPath": "\\\\FS\\VMS", "namespaceSelector": {"matchLabels": {"t": "1"}},
        "storage": {"baseRoots": ["\\\\FS\\BASES"], "vmRoots": ["\\\\FS\\VMS"]}}


def indices(**overrides: Any) -> dict[str, Any]:
    # kopf.Index maps a key to a store (an iterable of values): lists stand in for them.
    base: dict[str, Any] = {
        "hosts_by_name": {("team-a", "hv01"): [HOST]},
        "cluster_hosts_by_name": {"shared": [HOST]},
        "namespace_labels": {"team-a": [{"t": "1"}], "team-b": [{}]},
    }
    return {**base, **overrides}


def spec(kind: str | None, name: str, base: str = "\\\\FS\\BASES\\B.VHDX") -> dict[str, Any]:
    ref = {"name": name, **({"kind": kind} if kind else {})}
    return {"hostRef": ref, "baseVhd": base, "strategy": "Copy"}


def test_namespaced_host_is_the_default_and_reads_secrets_in_the_vm_namespace() -> None:
    resolved = resolve_host("team-a", spec(None, "hv01"), indices(), "ops")
    assert (resolved.refusal, resolved.secret_namespace, resolved.key) == (None, "team-a", "team-a/hv01")


def test_cluster_host_reads_secrets_in_the_operator_namespace() -> None:
    resolved = resolve_host("team-a", spec("ClusterHyperVHost", "shared"), indices(), "ops")
    assert (resolved.refusal, resolved.secret_namespace, resolved.key) == (None, "ops", "ClusterHyperVHost/shared")


def test_a_namespaced_host_of_another_namespace_is_not_found() -> None:
    resolved = resolve_host("team-b", spec(None, "hv01"), indices(), "ops")
    assert resolved.refusal is not None and resolved.refusal.reason == "HostNotFound"


def test_cluster_host_refuses_unlabelled_and_unknown_namespaces() -> None:
    for namespace in ("team-b", "team-z"):
        resolved = resolve_host(namespace, spec("ClusterHyperVHost", "shared"), indices(), "ops")
        assert resolved.refusal is not None and resolved.refusal.reason == "NamespaceNotAdmitted"


def test_paths_are_checked_for_namespaced_hosts_too() -> None:
    resolved = resolve_host("team-a", spec(None, "hv01", "\\\\attacker\\s\\b.vhdx"), indices(), "ops")
    assert resolved.refusal is not None and resolved.refusal.reason == "BaseOutsideAllowedRoots"


def test_ca_bundle_patch_merges_by_webhook_name() -> None:
    patch = ca_bundle_patch(b"PEM", ("a.b.c",))
    assert patch == {"webhooks": [{"name": "a.b.c", "clientConfig": {"caBundle": base64.b64encode(b"PEM").decode()}}]}


def test_self_signed_certificate_is_trusted_by_its_ca_for_its_names() -> None:
    cert = generate_self_signed(("127.0.0.1", "svc.example"))
    leaf = x509.load_pem_x509_certificate(Path(cert.cert_file).read_bytes())
    sans = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert ipaddress.ip_address("127.0.0.1") in sans.get_values_for_type(x509.IPAddress)
    assert "svc.example" in sans.get_values_for_type(x509.DNSName)
    # A real TLS handshake: the server serves the pair, the client trusts only the CA bundle.
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert.cert_file, cert.key_file)
    client_ctx = ssl.create_default_context(cadata=cert.ca_pem.decode())
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as raw, \
            client_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"x")
        assert tls.version()
    thread.join(timeout=5)
    listener.close()
