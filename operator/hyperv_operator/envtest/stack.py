"""The whole local stack the demo and the integration tests run: a simulated Hyper-V host behind
a real WinRM/HTTPS endpoint, the operator's RBAC, Secrets and a HyperVHost pointing at it.
"""

from __future__ import annotations

import base64
import json
import secrets
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hyperv_operator.envtest.controlplane import ControlPlane, repo_root
from hyperv_operator.simulator.host import SimulatedHost
from hyperv_operator.simulator.tls import TLSFiles, generate_tls
from hyperv_operator.simulator.wsman.server import WSManServer

SHARE = "\\\\FS\\VMSHARE"
BASE_VHD = SHARE + "\\BASE.VHDX"
VM_ROOT = SHARE + "\\VMs"
POST_BASE_SIZE = 8_996_782_080
"""The base in the Microsoft post: 8,996,782,080 bytes."""


@dataclass
class SimulatedHyperV:
    """A SimulatedHost with a read-only base on a share, served over WinRM/HTTPS with Basic auth."""

    base_size: int = POST_BASE_SIZE
    time_scale: float = 1.0
    copy_bytes_per_second: float = 75e6
    merge_bytes_per_second: float = 300e6
    guest_write_bytes_per_second: float = 1.5e6
    free_bytes: int = 2 * 10**12
    username: str = "hvadmin"
    password: str = field(default_factory=lambda: secrets.token_urlsafe(12))
    jea_configurations: tuple[str, ...] = ()
    """Session configurations served as JEA endpoints with the operator's role (besides Microsoft.PowerShell)."""
    host: SimulatedHost = field(init=False)
    server: WSManServer = field(init=False)
    tls: TLSFiles = field(init=False)
    workdir: Path = field(init=False)

    def start(self) -> SimulatedHyperV:
        self.workdir = Path(tempfile.mkdtemp(prefix="hyperv-sim-"))
        self.host = SimulatedHost(
            time_scale=self.time_scale,
            copy_bytes_per_second=self.copy_bytes_per_second,
            merge_bytes_per_second=self.merge_bytes_per_second,
            guest_write_bytes_per_second=self.guest_write_bytes_per_second,
            free_bytes=self.free_bytes,
        )
        self.host.add_folder(SHARE)
        self.host.add_folder(VM_ROOT)
        self.host.add_base_disk(BASE_VHD, self.base_size, acl_read_only=True)
        self.tls = generate_tls(self.workdir)
        self.server = WSManServer(self.host, username=self.username, password=self.password,
                                  jea_configurations=self.jea_configurations)
        self.server.start(host="127.0.0.1", port=0, tls=self.tls.server_pair)
        return self

    def stop(self) -> None:
        self.server.stop()

    @property
    def port(self) -> int:
        return int(self.server.port)

    @property
    def ca_pem(self) -> bytes:
        return self.tls.ca_cert.read_bytes()


def _b64(value: str | bytes) -> str:
    raw = value.encode() if isinstance(value, str) else value
    return base64.b64encode(raw).decode()


def host_objects(
    namespace: str,
    name: str,
    sim: SimulatedHyperV,
    *,
    password: str | None = None,
    ca_pem: bytes | None = None,
    port: int | None = None,
    max_concurrent_copies: int = 2,
) -> list[dict[str, Any]]:
    """The Secrets and the HyperVHost for `sim` (optionally with a wrong password/CA/port)."""
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-credentials", "namespace": namespace},
            "type": "Opaque",
            "data": {"username": _b64(sim.username), "password": _b64(password or sim.password)},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{name}-ca", "namespace": namespace},
            "type": "Opaque",
            "data": {"ca.crt": _b64(ca_pem or sim.ca_pem)},
        },
        {
            "apiVersion": "hyperv-operator.io/v1alpha1",
            "kind": "HyperVHost",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "address": "127.0.0.1",
                "port": port or sim.port,
                "transport": "https",
                "auth": "basic",
                "credentialsSecretRef": {"name": f"{name}-credentials"},
                "caBundleSecretRef": {"name": f"{name}-ca"},
                "defaultVmPath": VM_ROOT,
                "maxConcurrentCopies": max_concurrent_copies,
                # The base and Quick's checkpoint beside it are on the share root.
                "storage": {"baseRoots": [SHARE], "vmRoots": [SHARE]},
            },
        },
    ]


def apply_objects(plane: ControlPlane, objects: list[dict[str, Any]]) -> None:
    plane.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input_text=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects}),
    )


def ensure_namespace(plane: ControlPlane, namespace: str) -> None:
    apply_objects(plane, [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}])


def install_operator_rbac(plane: ControlPlane) -> None:
    """Everything `manifests/` installs (namespace, ServiceAccount, RBAC, Deployment, CRDs).

    No kubelet runs here, so the Deployment stays unscheduled; the operator runs as a local process
    authenticated as that ServiceAccount (the control plane's operator token), bound by exactly
    this RBAC.
    """
    # CRDs first, as `make deploy` does: the ClusterKopfPeering object in manifests/ needs its CRD
    # established before kubectl can map it.
    plane.apply_crds()
    plane.kubectl("apply", "--server-side", "--force-conflicts", "-k", str(repo_root() / "manifests"))
    # The webhook configuration points at a Service; with no pod network here the API server cannot
    # reach it (failurePolicy Fail would refuse every VirtualMachine). Tests that exercise the
    # webhook install it with a loopback URL (webhook_configuration_for_loopback); the controller
    # enforces the same rules without it.
    plane.kubectl("delete", "validatingwebhookconfiguration", "hyperv-operator", "--ignore-not-found")


PEERING = "hyperv-operator"
"""manifests/peering's ClusterKopfPeering, the default of `hyperv-operator run --peering`."""


def peers(plane: ControlPlane, name: str = PEERING) -> dict[str, dict[str, Any]]:
    """The replicas in the peering object's status, as kopf writes them: id -> {priority, lifetime, lastseen}."""
    result = plane.kubectl("get", "clusterkopfpeering", name, "-o", "json")
    status: dict[str, dict[str, Any]] = json.loads(result.stdout).get("status") or {}
    return status


def webhook_configuration_for_loopback(port: int) -> dict[str, Any]:
    """manifests/webhook's configuration, pointed at an operator serving its webhook on 127.0.0.1:port."""
    import yaml

    path = repo_root() / "manifests" / "webhook" / "validating_webhook.yaml"
    config: dict[str, Any] = yaml.safe_load(path.read_text())
    for hook in config["webhooks"]:
        service = hook["clientConfig"].pop("service")
        hook["clientConfig"]["url"] = f"https://127.0.0.1:{port}{service['path']}"
    return config
