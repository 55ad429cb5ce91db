"""Issue 14: spec.networkAdapters, validated and applied on the simulated host (in process)."""

from __future__ import annotations

from typing import Any

import pytest
from tests.unit.provisioning.test_engine_simulator import (
    HOST,
    World,
    crash_after,
    merged,
    mutations,
    provision,
    ref,
    run,
    spec,
)

from hyperv_operator.api import NetworkAdapter
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.provisioning.engine import reconcile

ADAPTERS: list[dict[str, Any]] = [
    {"name": "front", "switchName": "Default Switch", "vlanId": 20, "staticMacAddress": "00-15-5D-0A-0B-0C"},
    {"name": "back", "switchName": "Default Switch"},
]


@pytest.mark.parametrize("value", [{"vlanId": 0}, {"vlanId": 4095}, {"staticMacAddress": "00155D0A0B"},
                                   {"staticMacAddress": "zz155D0A0B0C"}])
def test_bad_vlan_or_mac_is_refused(value: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        NetworkAdapter.from_dict({"name": "a", "switchName": "s", **value})


def test_mac_is_normalised_to_twelve_hex_digits() -> None:
    assert NetworkAdapter.from_dict({"name": "a", "switchName": "s", "staticMacAddress": "00:15:5d:0a:0b:0c"}
                                    ).static_mac == "00155D0A0B0C"


def _host_adapters(world: World, vm_id: str) -> list[dict[str, Any]]:
    return world.host.network_adapters(vm_id)


@pytest.mark.parametrize("strategy", ["Differencing", "Quick"])
def test_adapters_are_applied_before_the_first_start_and_report_addresses_each(strategy: str) -> None:
    world = World()
    vm = ref(f"net-{strategy.lower()}")
    status = run(provision(world, vm, spec(strategy, networkAdapters=ADAPTERS, readiness="IPAddress")))
    assert status["phase"] == "Provisioned" and status["networkConfigured"] is True
    host = _host_adapters(world, status["vmId"])
    assert [(a["name"], a["switch"], a["vlan"]) for a in host] == [("front", "Default Switch", 20),
                                                                     ("back", "Default Switch", None)]
    assert host[0]["mac"] == "00155D0A0B0C" and host[0]["static"] is True and host[1]["static"] is False
    reported = {a["name"]: a for a in status["guest"]["adapters"]}
    assert set(reported) == {"front", "back"}  # New-VM's default adapter is gone
    assert reported["front"]["macAddress"] == "00155D0A0B0C"
    assert all(a["ipAddresses"] for a in reported.values())
    # the VM was started only after its adapters were configured
    names = [name.rsplit("\\", 1)[-1] for name, _ in world.host.call_log()]
    assert names.index("Set-VMNetworkAdapterVlan") < names.index("Start-VM")


def test_a_crash_after_every_command_converges_to_exactly_the_listed_adapters() -> None:
    clean = World()
    vm = ref("net-crash")
    s = spec("Differencing", networkAdapters=ADAPTERS)
    run(provision(clean, vm, s))
    for k in range(1, mutations(clean) + 1):
        world = World()
        crash_after(world, k)
        status = run(provision(world, vm, s))
        host = _host_adapters(world, status["vmId"])
        assert [(a["name"], a["vlan"]) for a in host] == [("front", 20), ("back", None)], k


def test_adapters_changed_on_the_host_afterwards_are_reported_and_left_alone() -> None:
    """Drift: an adapter removed and another added out of band show in status.networkDrift and one
    Warning Event (not one per drift check); the operator neither adds nor removes adapters of the
    running VM; restored by hand, the drift is cleared."""
    world = World()
    vm, s = ref("net-drift"), spec("Differencing", networkAdapters=ADAPTERS, readiness="Running")
    status = run(provision(world, vm, s))
    assert status["phase"] == "Provisioned" and "networkDrift" not in status
    vm_id = status["vmId"]
    world.host.execute([cmdlets.remove_vm_network_adapter(vm_id, "back"),
                        cmdlets.add_vm_network_adapter(vm_id, "debug", "Default Switch", None)])
    before = [c for c, _ in world.host.call_log()]

    def check(status: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
        outcome = run(reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
        return merged(status, outcome), [e.reason for e in outcome.events if e.type == "Warning"]

    status, warnings = check(status)
    assert status["networkDrift"] == "back is missing; debug on Default Switch is not in spec.networkAdapters"
    assert warnings == ["NetworkAdaptersDrifted"]
    status, warnings = check(status)
    assert warnings == [] and status["networkDrift"]
    added_or_removed = [c for c, _ in world.host.call_log()[len(before):]
                        if c.endswith(("Add-VMNetworkAdapter", "Remove-VMNetworkAdapter"))]
    assert added_or_removed == []
    assert sorted(a["name"] for a in _host_adapters(world, vm_id)) == ["debug", "front"]
    world.host.execute([cmdlets.remove_vm_network_adapter(vm_id, "debug"),
                        cmdlets.add_vm_network_adapter(vm_id, "back", "Default Switch", None)])
    status, warnings = check(status)
    assert "networkDrift" not in status and warnings == []
