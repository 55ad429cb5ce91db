"""Domain hosts for the integration suite: simulated Hyper-V hosts that accept Kerberos (a real MIT
KDC), CredSSP and client certificates, behind which the base lives on a file server across the second
hop; plus the Secrets and HyperVHosts that point the operator at them with each auth.
"""

from __future__ import annotations

import base64
import secrets
from dataclasses import dataclass, field
from typing import Any

from hyperv_operator.envtest.kdc import KDC
from hyperv_operator.envtest.stack import SHARE, VM_ROOT, SimulatedHyperV
from hyperv_operator.simulator.host import SimulatedHost
from hyperv_operator.simulator.identity import SecondHop
from hyperv_operator.simulator.tls import generate_tls
from hyperv_operator.simulator.wsman.server import WSManServer

CERT_USER = "hvcert"
SERVICE = "HTTP/localhost"
"""The hosts are reached as `localhost`: the service principal the client asks the KDC for."""


@dataclass
class DomainHyperV(SimulatedHyperV):
    """A SimulatedHyperV whose WinRM endpoint accepts kerberos/negotiate, ntlm, credssp, certificate and
    basic, with the second hop enforced for `\\\\FS`. `delegation`: the host may delegate Kerberos to FS
    (`Enable-SmbDelegation -SmbServer FS -SmbClient <host>` was run)."""

    kdc: KDC | None = None
    delegation: bool = True
    host_name: str = "HV01"
    password: str = field(default_factory=lambda: "Aa1-" + secrets.token_urlsafe(12))

    def start(self) -> DomainHyperV:
        import tempfile
        from pathlib import Path

        assert self.kdc is not None, "DomainHyperV needs the KDC"
        self.workdir = Path(tempfile.mkdtemp(prefix="hyperv-sim-domain-"))
        self.host = SimulatedHost(
            time_scale=self.time_scale, copy_bytes_per_second=self.copy_bytes_per_second,
            merge_bytes_per_second=self.merge_bytes_per_second,
            guest_write_bytes_per_second=self.guest_write_bytes_per_second, free_bytes=self.free_bytes,
            host_name=self.host_name,
        )
        self.host.add_folder(SHARE)
        self.host.add_folder(VM_ROOT)
        from hyperv_operator.envtest.stack import BASE_VHD

        self.host.add_base_disk(BASE_VHD, self.base_size, acl_read_only=True)
        self.host.second_hop = SecondHop(host_name=self.host_name, file_servers={"FS"})
        if self.delegation:
            self.host.second_hop.enable_smb_delegation("FS")
        self.tls = generate_tls(self.workdir, client_common_name=CERT_USER)
        self.server = WSManServer(
            self.host, username=self.username, password=self.password, ntlm=True, credssp=True,
            kerberos_keytab=str(self.kdc.keytab(SERVICE)), client_ca=str(self.tls.ca_cert),
            client_certificates={CERT_USER: f"{self.host_name}\\{CERT_USER}"}, machine=self.host_name,
        )
        self.server.start(host="127.0.0.1", port=0, tls=self.tls.server_pair)
        return self


def _b64(raw: bytes | str) -> str:
    return base64.b64encode(raw.encode() if isinstance(raw, str) else raw).decode()


def domain_host_objects(
    namespace: str, name: str, sim: DomainHyperV, auth: str, *, principal: str = "", keytab: bytes | None = None,
    password: str | None = None,
) -> list[dict[str, Any]]:
    """The credentials Secret (keys per auth, see docs/domain-hosts.md), the CA Secret and the HyperVHost."""
    if auth == "certificate":
        assert sim.tls.client_cert is not None and sim.tls.client_key is not None
        data = {"tls.crt": _b64(sim.tls.client_cert.read_bytes()), "tls.key": _b64(sim.tls.client_key.read_bytes())}
    elif auth in ("kerberos", "negotiate") and keytab is not None:
        data = {"username": _b64(principal), "keytab": _b64(keytab)}
    elif auth in ("kerberos", "negotiate"):
        data = {"username": _b64(principal), "password": _b64(password or "")}
    else:
        data = {"username": _b64(sim.username), "password": _b64(sim.password)}
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-credentials", "namespace": namespace},
         "type": "Opaque", "data": data},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-ca", "namespace": namespace},
         "type": "Opaque", "data": {"ca.crt": _b64(sim.ca_pem)}},
        {"apiVersion": "hyperv-operator.io/v1alpha1", "kind": "HyperVHost",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"address": "localhost", "port": sim.port, "transport": "https", "auth": auth,
                  "credentialsSecretRef": {"name": f"{name}-credentials"},
                  "caBundleSecretRef": {"name": f"{name}-ca"}, "defaultVmPath": VM_ROOT,
                  "maxConcurrentCopies": 3,
                  "storage": {"baseRoots": [SHARE], "vmRoots": [SHARE]}}},
    ]
