"""The operator's API: names, and typed views of VirtualMachine and HyperVHost objects.

The CRDs in `crds/` are the validating source of truth (the API server rejects bad specs); these
types only read what the server already accepted, applying the documented defaults.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

GROUP = "hyperv-operator.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
VM_KIND = "VirtualMachine"
VM_PLURAL = "virtualmachines"
HOST_KIND = "HyperVHost"
HOST_PLURAL = "hypervhosts"
CLUSTER_HOST_KIND = "ClusterHyperVHost"
CLUSTER_HOST_PLURAL = "clusterhypervhosts"
VM_CLASS_KIND = "VirtualMachineClass"
VM_CLASS_PLURAL = "virtualmachineclasses"
FINALIZER = f"{GROUP}/finalizer"
ANNOTATION_PREFIX = GROUP
UID_TAG_PREFIX = f"{GROUP}/uid="
"""The VM's Notes carry this tag with the Kubernetes uid, so a restarted operator adopts the VM."""


class Strategy(enum.StrEnum):
    DIFFERENCING = "Differencing"
    COPY = "Copy"
    QUICK = "Quick"


class PowerState(enum.StrEnum):
    RUNNING = "Running"
    OFF = "Off"


class DeletionPolicy(enum.StrEnum):
    DELETE = "Delete"
    RETAIN = "Retain"


_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {None: 1, "Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "k": 10**3, "M": 10**6,
            "G": 10**9, "T": 10**12}


def parse_memory(quantity: str | int) -> int:
    """A Kubernetes quantity ("1Gi", "512Mi", "2G", "1073741824") in bytes."""
    if isinstance(quantity, int):
        return quantity
    match = _QUANTITY.match(quantity.strip())
    if not match:
        raise ValueError(f"memory {quantity!r} is not a quantity like 1Gi or 512Mi")
    return int(match.group(1)) * _FACTORS[match.group(2)]


class Readiness(enum.StrEnum):
    """When Ready=True for a running VM (issue 14)."""

    RUNNING = "Running"  # Hyper-V says Running (the guest may not have booted)
    HEARTBEAT = "Heartbeat"  # the guest's heartbeat integration service answers
    IP_ADDRESS = "IPAddress"  # the guest reports a usable address on an adapter


class UpdatePolicy(enum.StrEnum):
    """How a cpus/memory change Hyper-V cannot apply to the running VM is applied (issue 14)."""

    ON_POWER_OFF = "OnPowerOff"  # when the VM is next off (ResizePending until then)
    RESTART = "Restart"  # graceful shutdown, apply, start


DEFAULT_READINESS_TIMEOUT = 600
"""Seconds a running VM may wait for its guest before Stalled (spec.readinessTimeoutSeconds)."""


SECURE_BOOT_TEMPLATES = ("MicrosoftWindows", "MicrosoftUEFICertificateAuthority", "OpenSourceShieldedVM")


@dataclass(frozen=True)
class SecureBoot:
    """Generation 2 firmware: Secure Boot on/off and its template (Linux needs
    MicrosoftUEFICertificateAuthority; Hyper-V's default, MicrosoftWindows, refuses Linux loaders)."""

    enabled: bool = True
    template: str | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None) -> SecureBoot | None:
        if not spec:
            return None
        template = spec.get("template")
        if template is not None and template not in SECURE_BOOT_TEMPLATES:
            raise ValueError(f"secureBoot.template {template!r} is not one of {', '.join(SECURE_BOOT_TEMPLATES)}")
        return cls(enabled=bool(spec.get("enabled", True)), template=template)


@dataclass(frozen=True)
class DynamicMemory:
    """spec.dynamicMemory (issue 14): Hyper-V Dynamic Memory between `minimum_bytes` and `maximum_bytes`
    (minimum <= startup memory <= maximum), keeping `buffer` percent (5-2000) spare in the guest."""

    minimum_bytes: int
    maximum_bytes: int
    buffer: int = 20

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None, startup_bytes: int) -> DynamicMemory | None:
        if not spec:
            return None
        result = cls(minimum_bytes=parse_memory(spec["minimum"]), maximum_bytes=parse_memory(spec["maximum"]),
                     buffer=int(spec.get("buffer", 20)))
        if not result.minimum_bytes <= startup_bytes <= result.maximum_bytes:
            raise ValueError("dynamicMemory needs minimum <= memory (startup) <= maximum")
        if not 5 <= result.buffer <= 2000:
            raise ValueError(f"dynamicMemory.buffer {result.buffer} is not between 5 and 2000")
        return result


_MAC = re.compile(r"^[0-9A-Fa-f]{2}([-:]?[0-9A-Fa-f]{2}){5}$")


@dataclass(frozen=True)
class NetworkAdapter:
    """spec.networkAdapters[] (issue 14): one adapter on a switch, optional access VLAN and static MAC
    (12 hex digits, upper case, no separators: the form Set-VMNetworkAdapter -StaticMacAddress takes)."""

    name: str
    switch_name: str
    vlan_id: int | None = None
    static_mac: str | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> NetworkAdapter:
        mac = spec.get("staticMacAddress")
        if mac is not None and not _MAC.match(str(mac)):
            raise ValueError(f"staticMacAddress {mac!r} is not a MAC address (12 hex digits)")
        vlan = spec.get("vlanId")
        if vlan is not None and not 1 <= int(vlan) <= 4094:
            raise ValueError(f"vlanId {vlan} is not between 1 and 4094")
        return cls(name=str(spec["name"]), switch_name=str(spec["switchName"]),
                   vlan_id=None if vlan is None else int(vlan),
                   static_mac=None if mac is None else re.sub(r"[-:]", "", str(mac)).upper())


BOOTSTRAP_NOCLOUD, BOOTSTRAP_UNATTEND = "NoCloud", "Unattend"


@dataclass(frozen=True)
class Bootstrap:
    """spec.bootstrap (issue 14): first-boot configuration from a Secret in the VM's namespace.

    `files` is filled by the handler from the Secret (never from the spec) and is the content of the
    configuration disk; it is hidden from repr so no log line or exception text can carry it.
    `problem` says why it could not be read (the planner waits with that reason)."""

    secret_name: str
    keep_disk: bool = False
    format: str = "NoCloud"  # NoCloud (the cidata disk) | Unattend (unattend.xml on the VM's own disk)
    files: tuple[tuple[str, bytes], ...] | None = field(default=None, repr=False, compare=False)
    problem: str | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any] | None) -> Bootstrap | None:
        if not spec:
            return None
        return cls(secret_name=str((spec.get("secretRef") or {}).get("name") or ""),
                   keep_disk=bool(spec.get("keepDisk", False)),
                   format=str(spec.get("format") or BOOTSTRAP_NOCLOUD))

    @property
    def unattend(self) -> bool:
        return self.format == BOOTSTRAP_UNATTEND


@dataclass(frozen=True)
class VirtualMachineSpec:
    host_name: str
    base_vhd: str
    strategy: Strategy
    memory_bytes: int
    cpus: int = 1
    generation: int = 2
    vm_path: str | None = None
    switch_name: str | None = None
    power_state: PowerState = PowerState.RUNNING
    deletion_policy: DeletionPolicy = DeletionPolicy.DELETE
    host_kind: str = HOST_KIND
    secure_boot: SecureBoot | None = None  # None: leave Hyper-V's firmware defaults
    readiness: Readiness = Readiness.HEARTBEAT
    readiness_timeout_seconds: int = DEFAULT_READINESS_TIMEOUT
    update_policy: UpdatePolicy = UpdatePolicy.ON_POWER_OFF
    bootstrap: Bootstrap | None = None
    network_adapters: tuple[NetworkAdapter, ...] = ()
    dynamic_memory: DynamicMemory | None = None

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> VirtualMachineSpec:
        return cls(
            host_name=str(spec["hostRef"]["name"]),
            host_kind=str(spec["hostRef"].get("kind") or HOST_KIND),
            base_vhd=str(spec["baseVhd"]),
            strategy=Strategy(spec["strategy"]),
            memory_bytes=parse_memory(spec.get("memory", "1Gi")),
            cpus=int(spec.get("cpus", 1)),
            generation=int(spec.get("generation", 2)),
            vm_path=spec.get("vmPath") or None,
            switch_name=spec.get("switchName") or None,
            power_state=PowerState(spec.get("powerState", PowerState.RUNNING)),
            deletion_policy=DeletionPolicy(spec.get("deletionPolicy", DeletionPolicy.DELETE)),
            secure_boot=SecureBoot.from_dict(spec.get("secureBoot")),
            readiness=Readiness(spec.get("readiness") or Readiness.HEARTBEAT),
            readiness_timeout_seconds=int(spec.get("readinessTimeoutSeconds") or DEFAULT_READINESS_TIMEOUT),
            update_policy=UpdatePolicy(spec.get("updatePolicy") or UpdatePolicy.ON_POWER_OFF),
            bootstrap=Bootstrap.from_dict(spec.get("bootstrap")),
            network_adapters=tuple(NetworkAdapter.from_dict(a) for a in spec.get("networkAdapters") or ()),
            dynamic_memory=DynamicMemory.from_dict(spec.get("dynamicMemory"), parse_memory(spec.get("memory", "1Gi"))),
        )


class Transport(enum.StrEnum):
    HTTPS = "https"
    HTTP = "http"


@dataclass(frozen=True)
class SecretRef:
    name: str


@dataclass(frozen=True)
class HyperVHostSpec:
    address: str
    default_vm_path: str
    port: int | None = None
    transport: Transport = Transport.HTTPS
    auth: str = "negotiate"
    credentials_secret: str | None = None
    ca_bundle_secret: str | None = None
    insecure_skip_tls_verify: bool = False
    allow_unencrypted_http: bool = False
    configuration_name: str = "Microsoft.PowerShell"
    max_concurrent_copies: int = 2
    max_connections: int = 4
    """WinRM connections (RunspacePools) for VM work on this host; one more is reserved for probes."""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def effective_port(self) -> int:
        return self.port or (5986 if self.transport is Transport.HTTPS else 5985)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> HyperVHostSpec:
        creds = spec.get("credentialsSecretRef") or {}
        ca = spec.get("caBundleSecretRef") or {}
        return cls(
            address=str(spec["address"]),
            default_vm_path=str(spec["defaultVmPath"]),
            port=int(spec["port"]) if spec.get("port") else None,
            transport=Transport(spec.get("transport", Transport.HTTPS)),
            auth=str(spec.get("auth", "negotiate")),
            credentials_secret=creds.get("name"),
            ca_bundle_secret=ca.get("name"),
            insecure_skip_tls_verify=bool(spec.get("insecureSkipTlsVerify", False)),
            allow_unencrypted_http=bool(spec.get("allowUnencryptedHttp", False)),
            configuration_name=str(spec.get("configurationName", "Microsoft.PowerShell")),
            max_concurrent_copies=int(spec.get("maxConcurrentCopies", 2)),
            max_connections=int(spec.get("maxConnections", 4)),
        )
