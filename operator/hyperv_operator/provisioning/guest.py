"""The guest: what Hyper-V's integration services report about it, and when the VM counts as Ready.

Pure. The guest's heartbeat is the `Heartbeat` property of the VM as `Get-VM -Id` returns it (the
observation reads it anyway): a Microsoft.HyperV.PowerShell.VMHeartbeatStatus whose names are the
same on every host language ("OkApplicationsHealthy", "OkApplicationsUnknown" once the guest's
integration services answer; "NoContact", "LostCommunication", "Error", "Paused" otherwise; none
while the VM is off). The integration service's name and PrimaryStatusDescription are localized ("Takt",
"Kein Kontakt" on a German host), so `Get-VMIntegrationService -Name Heartbeat` fails or misreads
there. The engine adds two reads to its observation of a running VM (hyperv/cmdlets.py):
`Get-VMNetworkAdapter` (the addresses the guest reports per adapter) and the VM's key-value pair
exchange component (`Msvm_KvpExchangeComponent.GuestIntrinsicExchangeItems`: the guest's
FullyQualifiedDomainName and OSName). `verdict` turns them, with `spec.readiness`, into the Ready
condition; `record` writes `status.guest`.
"""

from __future__ import annotations

import ipaddress
import xml.etree.ElementTree as ElementTree
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import DEFAULT_READINESS_TIMEOUT, Readiness
from hyperv_operator.hyperv.commands import HostObject

__all__ = ["GUEST_POLL", "Adapter", "GuestInfo", "Readiness", "Verdict", "kind", "parse", "record", "verdict"]

GUEST_POLL = 3.0  # re-read the guest while waiting for it (a guest boots in tens of seconds)
DEFAULT_TIMEOUT_SECONDS = DEFAULT_READINESS_TIMEOUT
HEARTBEAT_OK_PREFIX = "ok"
"""VMHeartbeatStatus names that mean the guest answers: Ok, OkApplicationsHealthy, OkApplicationsUnknown,
OkApplicationsCritical / OkApplicationsNotHealthy (the guest's applications are its own business)."""
KVP_CLASS = "Msvm_KvpExchangeComponent"


@dataclass(frozen=True)
class Adapter:
    name: str
    mac_address: str = ""
    switch_name: str = ""
    addresses: tuple[str, ...] = ()


@dataclass(frozen=True)
class GuestInfo:
    heartbeat: str = ""  # Get-VM's Heartbeat (VMHeartbeatStatus name; "" unknown or off)
    hostname: str = ""  # KVP FullyQualifiedDomainName
    os_name: str = ""  # KVP OSName
    adapters: tuple[Adapter, ...] = ()

    @property
    def heartbeat_ok(self) -> bool:
        return self.heartbeat.strip().lower().startswith(HEARTBEAT_OK_PREFIX)

    @property
    def addresses(self) -> tuple[str, ...]:
        """Usable addresses, in adapter order: no link-local, loopback or unspecified ones (a guest
        without DHCP still shows fe80:: and 169.254.x.x, which nobody can reach it by)."""
        return tuple(a for adapter in self.adapters for a in adapter.addresses if usable(a))


def usable(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0].strip())
    except ValueError:
        return False
    return not (ip.is_link_local or ip.is_loopback or ip.is_unspecified or ip.is_multicast)


# --- parsing (host objects -> GuestInfo) ----------------------------------------------------------


def kind(obj: HostObject) -> str | None:
    """adapter | kvp | None, by type name first, then by shape."""
    if obj.is_a("VMNetworkAdapter"):
        return "adapter"
    if any(t.endswith("/" + KVP_CLASS) or t.endswith(KVP_CLASS) for t in obj.type_names):
        return "kvp"
    keys = set(obj.properties)
    if "IPAddresses" in keys and "MacAddress" in keys:
        return "adapter"
    if "GuestIntrinsicExchangeItems" in keys:
        return "kvp"
    return None


def _strings(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value else ()
    if isinstance(value, Iterable):
        return tuple(str(v) for v in value if v is not None and str(v))
    return (str(value),)


def kvp_items(xml_items: Iterable[str]) -> dict[str, str]:
    """GuestIntrinsicExchangeItems: each item is an embedded Msvm_KvpExchangeDataItem instance in
    CIM-XML (`<INSTANCE><PROPERTY NAME="Name"><VALUE>..</VALUE></PROPERTY>...`); Name -> Data."""
    items: dict[str, str] = {}
    for text in xml_items:
        if "<!DOCTYPE" in text.upper() or "<!ENTITY" in text.upper():
            continue  # never expand entities from the host's answer
        try:
            # Safe without defusedxml: a DOCTYPE (the only way to declare entities) was refused
            # above, and expat never fetches external resources.
            root = ElementTree.fromstring(text)  # noqa: S314
        except ElementTree.ParseError:
            continue
        props: dict[str, str] = {}
        for prop in root.iter("PROPERTY"):
            value = prop.find("VALUE")
            props[str(prop.get("NAME") or "")] = "" if value is None or value.text is None else value.text
        if props.get("Name"):
            items[props["Name"]] = props.get("Data", "")
    return items


def parse(objects: Iterable[HostObject], vm_id: str) -> GuestInfo:
    heartbeat = ""
    adapters: list[Adapter] = []
    kvp: dict[str, str] = {}
    for obj in objects:
        which = kind(obj)
        if obj.is_a("VirtualMachine") and str(obj.get("Id") or "").lower() == vm_id.lower():
            heartbeat = str(obj.get("Heartbeat") or "")
        elif which == "adapter":
            adapters.append(Adapter(name=str(obj.get("Name") or ""), mac_address=str(obj.get("MacAddress") or ""),
                                    switch_name=str(obj.get("SwitchName") or ""),
                                    addresses=_strings(obj.get("IPAddresses"))))
        elif which == "kvp" and str(obj.get("SystemName") or "").lower() == vm_id.lower():
            kvp = kvp_items(_strings(obj.get("GuestIntrinsicExchangeItems")))
    return GuestInfo(heartbeat=heartbeat, hostname=kvp.get("FullyQualifiedDomainName", ""),
                     os_name=kvp.get("OSName", ""), adapters=tuple(adapters))


# --- decisions --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    ready: bool
    reason: str  # Ready's reason
    message: str
    stalled: bool = False  # the readiness timeout passed: Stalled=True with `reason`


def verdict(
    readiness: Readiness, timeout_seconds: int, vm_id: str, guest: GuestInfo | None,
    previous: Mapping[str, Any] | None, now: datetime,
) -> Verdict:
    """Ready for a VM Hyper-V reports Running, per spec.readiness. `previous` is the last
    status.guest (its waitingSince starts the timeout)."""
    info = guest or GuestInfo()
    if readiness is Readiness.RUNNING:
        return Verdict(True, "Running", f"VM {vm_id} is running")
    if readiness is Readiness.HEARTBEAT:
        if info.heartbeat_ok:
            return Verdict(True, "Heartbeat", f"VM {vm_id} is running; the guest's heartbeat is OK")
        reason, waiting_for = "WaitingForHeartbeat", f"the guest's heartbeat (now: {info.heartbeat or 'unknown'})"
    else:
        if info.addresses:
            return Verdict(True, "IPAddress", f"VM {vm_id} is running; the guest reports {info.addresses[0]}")
        reason, waiting_for = "WaitingForIPAddress", "the guest to report an IP address"
    since = cond.parse_timestamp((previous or {}).get("waitingSince"))
    waited = 0.0 if since is None else (now - since).total_seconds()
    if since is not None and waited >= timeout_seconds:
        return Verdict(False, "GuestNotReady" if readiness is Readiness.HEARTBEAT else "NoIPAddress",
                       f"VM {vm_id} is running but after {int(waited)}s (readinessTimeoutSeconds "
                       f"{timeout_seconds}) still no {waiting_for.removeprefix('the guest to report ')}: check that "
                       f"the guest boots and runs Hyper-V integration services (Linux: hv_utils / hyperv-daemons, "
                       f"hv_kvp_daemon for addresses) and that its adapter is on a switch with DHCP; the operator "
                       f"keeps watching", stalled=True)
    return Verdict(False, reason, f"VM {vm_id} is running; waiting for {waiting_for}"
                                  + (f" for {int(waited)}s of {timeout_seconds}s" if since is not None else ""))


def record(previous: Mapping[str, Any] | None, guest: GuestInfo | None, running: bool, ready: bool,
           now: datetime) -> dict[str, Any] | None:
    """status.guest: what the guest reported, and since when the operator waits for it."""
    if guest is None and not previous:
        return None
    info = guest or GuestInfo()
    waiting_since = None
    if running and not ready:
        waiting_since = (previous or {}).get("waitingSince") or cond.timestamp(now)
    adapters = [_compact({"name": a.name, "macAddress": a.mac_address, "switchName": a.switch_name,
                          "ipAddresses": [x for x in a.addresses if usable(x)]}) for a in info.adapters]
    return _compact({"heartbeat": info.heartbeat, "hostname": info.hostname, "osName": info.os_name,
                     "ipAddresses": list(info.addresses), "adapters": adapters, "waitingSince": waiting_since})


def _compact(values: Mapping[str, Any]) -> dict[str, Any]:
    """Absent rather than empty: the status merge patch deletes what disappeared."""
    return {k: v for k, v in values.items() if v not in (None, "", [])}
