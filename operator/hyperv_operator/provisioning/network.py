"""Network adapters as a list (issue 14): spec.networkAdapters reach the VM while it is off. Pure.

New-VM gives a VM one adapter, "Network Adapter" (connected to -SwitchName, or to nothing). A VM with
spec.networkAdapters is created without a switch; before its first start the operator reads its
adapters (Get-VMNetworkAdapter) and, in one pipeline, removes the ones the spec does not name (or that
sit on another switch / have another static MAC), adds the missing ones (Add-VMNetworkAdapter
-SwitchName [-StaticMacAddress]) and sets each VLAN (Set-VMNetworkAdapterVlan -Access -VlanId). Every
statement is idempotent given what was read, so a failure or a crash half-way is repaired by the next
observation; `status.networkConfigured` records success. The adapters' addresses are reported per
adapter in status.guest.adapters (guest.record).

Once applied, the list is not applied again (spec.networkAdapters is immutable): an adapter removed,
added, moved to another switch or given another MAC on the host afterwards is drift, reported (`drift`:
status.networkDrift and a Warning Event) and left as it is: the operator does not take a running
guest's network away, nor give it one, on its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperv_operator.api import NetworkAdapter, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.commands import Statement
from hyperv_operator.provisioning.bootstrap import Decision
from hyperv_operator.provisioning.observation import Observation, VmInfo
from hyperv_operator.provisioning.phases import Phase

KIND = "ConfigureNetwork"
KEY = "networkConfigured"
NOT_APPLIED = "NetworkNotApplied"
DRIFT_KEY = "networkDrift"
DRIFT_EVENT = "NetworkAdaptersDrifted"


def reads_adapters(spec: VirtualMachineSpec, phase: str) -> bool:
    """The engine reads Get-VMNetworkAdapter in CreatingVM too when the spec lists adapters."""
    return bool(spec.network_adapters) and phase == Phase.CREATING_VM.value


def _mac(text: str) -> str:
    return text.replace("-", "").replace(":", "").upper()


def configure(spec: VirtualMachineSpec, status: Mapping[str, Any], obs: Observation, vm: VmInfo) -> Decision | None:
    """None: nothing to do (no list, or applied already)."""
    if not spec.network_adapters or status.get(KEY):
        return None
    if obs.adapters is None:
        return Decision(message=f"reading the network adapters of VM {vm.id}", wait=0.0)
    wanted = {a.name.lower(): a for a in spec.network_adapters}
    statements: list[Statement] = []
    present: set[str] = set()
    for adapter in obs.adapters:
        want = wanted.get(adapter.name.lower())
        if want is None or not _matches(want, adapter.switch_name, adapter.mac_address):
            statements.append(cmdlets.remove_vm_network_adapter(vm.id, adapter.name))
        else:
            present.add(adapter.name.lower())
    for want in spec.network_adapters:
        if want.name.lower() not in present:
            statements.append(cmdlets.add_vm_network_adapter(vm.id, want.name, want.switch_name, want.static_mac))
    if statements and vm.state != "Off":
        # Adapters are added and removed while the VM is off (a crash after its first start finds the
        # list applied already, and only the VLANs are set again: Set-VMNetworkAdapterVlan works online).
        return Decision(message=f"VM {vm.id} is {vm.state} before its network adapters were configured; adapters "
                                f"are added while the VM is off: turn it off to continue", wait=30.0,
                        stall=NOT_APPLIED)
    for want in spec.network_adapters:
        if want.vlan_id is not None:
            statements.append(cmdlets.set_vm_network_adapter_vlan(vm.id, want.name, want.vlan_id))
    described = ", ".join(f"{a.name} on {a.switch_name}" + (f" VLAN {a.vlan_id}" if a.vlan_id else "")
                          + (f" MAC {a.static_mac}" if a.static_mac else "") for a in spec.network_adapters)
    if not statements:
        return Decision(top={KEY: True})
    return Decision((KIND, tuple(statements), f"Add/Remove-VMNetworkAdapter, Set-VMNetworkAdapterVlan {vm.id}: "
                                              f"{described}"),
                    f"configuring the network adapters of VM {vm.id}: {described}", top={KEY: True})


def _matches(want: NetworkAdapter, switch: str, mac: str) -> bool:
    if (switch or "").lower() != want.switch_name.lower():
        return False
    return want.static_mac is None or _mac(mac) == want.static_mac


def drift(spec: VirtualMachineSpec, status: Mapping[str, Any], obs: Observation) -> str | None:
    """How the VM's adapters differ from spec.networkAdapters once they were applied ("" when they
    match; None when there is nothing to compare: no list, not applied yet, or adapters not read)."""
    if not spec.network_adapters or not status.get(KEY) or obs.adapters is None:
        return None
    on_host = {a.name.lower(): a for a in obs.adapters}
    wanted = {a.name.lower() for a in spec.network_adapters}
    found: list[str] = []
    for want in spec.network_adapters:
        adapter = on_host.get(want.name.lower())
        if adapter is None:
            found.append(f"{want.name} is missing")
        elif (adapter.switch_name or "").lower() != want.switch_name.lower():
            found.append(f"{want.name} is on switch {adapter.switch_name or '(none)'}, not {want.switch_name}")
        elif want.static_mac is not None and _mac(adapter.mac_address) != want.static_mac:
            found.append(f"{want.name} has MAC {_mac(adapter.mac_address)}, not {want.static_mac}")
    found += [f"{a.name} on {a.switch_name or '(no switch)'} is not in spec.networkAdapters"
              for a in obs.adapters if a.name.lower() not in wanted]
    return "; ".join(found)
