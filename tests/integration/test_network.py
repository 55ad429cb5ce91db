"""Issue 14, network adapters as a list, through the real API server (schema and CEL) and the operator
process against the simulated host over WinRM."""

from __future__ import annotations

import time
import uuid
from typing import Any

import kubernetes
import pytest

from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV
from hyperv_operator.hyperv import cmdlets
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

ADAPTERS: list[dict[str, Any]] = [
    {"name": "front", "switchName": "Default Switch", "vlanId": 42, "staticMacAddress": "00:15:5D:AA:BB:01"},
    {"name": "back", "switchName": "Default Switch"},
]


@pytest.mark.parametrize("extra", [
    {"switchName": "Default Switch", "networkAdapters": ADAPTERS[1:]},  # CEL: not both
    {"networkAdapters": [{"name": "a", "switchName": "Default Switch", "vlanId": 4095}]},
    {"networkAdapters": [{"name": "a", "switchName": "Default Switch", "staticMacAddress": "01155DAABB01"}]},
])
def test_the_api_server_refuses_bad_adapter_lists(
    kube: Kube, running_operator: OperatorProcess, extra: dict[str, Any]
) -> None:
    with pytest.raises(kubernetes.client.ApiException) as info:
        kube.create_vm(NAMESPACE, f"net-bad-{uuid.uuid4().hex[:6]}", "Differencing", **extra)
    assert info.value.status == 422


def test_adapters_are_applied_and_each_reports_its_address(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = f"net-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing", readiness="IPAddress", networkAdapters=ADAPTERS)
    ready = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Ready") or {}).get("status") == "True"
                         and len((o["status"].get("guest") or {}).get("adapters") or []) == 2
                         and all(a.get("ipAddresses") for a in o["status"]["guest"]["adapters"]),
                         timeout=120, what="Ready with an address on each adapter")
    host = sim.host.network_adapters(ready["status"]["vmId"])
    assert [(a["name"], a["vlan"], a["static"]) for a in host] == [("front", 42, True), ("back", None, False)]
    reported = {a["name"]: a for a in ready["status"]["guest"]["adapters"]}
    assert reported["front"]["macAddress"] == "00155DAABB01"
    assert reported["front"]["ipAddresses"] != reported["back"]["ipAddresses"]
    # Drift: an adapter removed on the host shows in status (through the CRD's schema) and an Event.
    sim.host.execute([cmdlets.remove_vm_network_adapter(ready["status"]["vmId"], "back")])
    drifted = kube.wait_vm(NAMESPACE, name, lambda o: bool(o["status"].get("networkDrift")), timeout=60,
                           what="status.networkDrift")
    assert drifted["status"]["networkDrift"] == "back is missing"
    deadline = time.monotonic() + 15  # Events are posted beside the status write, not before it
    while "NetworkAdaptersDrifted" not in {e.reason for e in kube.events_for(NAMESPACE, name)}:
        assert time.monotonic() < deadline, "no NetworkAdaptersDrifted Event"
        time.sleep(0.2)
    assert [a["name"] for a in sim.host.network_adapters(ready["status"]["vmId"])] == ["front"]
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)
