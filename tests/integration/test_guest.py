"""Issue 14 through the real API server and the operator process: Ready follows the simulated guest
(heartbeat, address), status.guest and the IP column show what integration services report."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hyperv_operator.envtest.controlplane import ControlPlane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV
from hyperv_operator.hyperv import cmdlets
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

DEFAULT_BOOT, DEFAULT_NETWORK = 20.0, 10.0  # simulated seconds (the model's defaults)
NEVER = 10.0**9


@pytest.fixture
def guests(sim: SimulatedHyperV) -> Iterator[SimulatedHyperV]:
    yield sim
    sim.host.set_guest_defaults(boot_seconds=DEFAULT_BOOT, network_seconds=DEFAULT_NETWORK)


def _ready(obj: dict[str, Any]) -> dict[str, Any]:
    return condition(obj, "Ready") or {}


def _ip_column(control_plane: ControlPlane, name: str) -> str:
    out = control_plane.kubectl("get", "hvvm", name, "-n", NAMESPACE, "--no-headers",
                                "-o", "custom-columns=IP:.status.guest.ipAddresses[0]").stdout.strip()
    return "" if out == "<none>" else out


def test_ip_readiness_waits_for_the_guests_address(
    guests: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    guests.host.set_guest_defaults(network_seconds=NEVER)  # DHCP does not answer yet
    name = f"ready-ip-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing", readiness="IPAddress", switchName="Default Switch")
    waiting = kube.wait_vm(NAMESPACE, name, lambda o: _ready(o).get("reason") == "WaitingForIPAddress"
                           and (o["status"].get("guest") or {}).get("heartbeat") == "OkApplicationsUnknown",
                           what="waiting for an IP")
    assert waiting["status"]["phase"] == "Provisioned" and waiting["status"]["powerState"] == "Running"
    assert _ready(waiting)["status"] == "False"
    assert waiting["status"]["guest"]["hostname"] == "localhost"  # from KVP: the guest booted
    assert "ipAddresses" not in waiting["status"]["guest"]  # only a link-local address so far
    assert _ip_column(control_plane, name) == ""

    guests.host.set_guest_defaults(network_seconds=DEFAULT_NETWORK)  # DHCP answers
    ready = kube.wait_vm(NAMESPACE, name, lambda o: _ready(o).get("status") == "True", what="Ready")
    assert _ready(ready)["reason"] == "IPAddress"
    adapters = guests.host.execute([cmdlets.get_vm_network_adapters(ready["status"]["vmId"])])
    reported = [str(a) for a in adapters[0].properties["IPAddresses"] if ":" not in str(a)]
    assert ready["status"]["guest"]["ipAddresses"] == reported
    assert ready["status"]["guest"]["adapters"][0]["macAddress"] == adapters[0].properties["MacAddress"]
    assert "waitingSince" not in ready["status"]["guest"]
    assert _ip_column(control_plane, name) == reported[0]
    table = control_plane.kubectl("get", "hvvm", name, "-n", NAMESPACE).stdout
    assert "IP" in table.splitlines()[0] and reported[0] in table
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)


def test_a_guest_without_heartbeat_stalls_after_the_timeout_and_recovers(
    guests: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    guests.host.set_guest_defaults(boot_seconds=NEVER)  # the guest never boots far enough to answer
    name = f"ready-hb-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing", readinessTimeoutSeconds=10)
    waiting = kube.wait_vm(NAMESPACE, name, lambda o: _ready(o).get("reason") == "WaitingForHeartbeat",
                           what="waiting for the heartbeat")
    assert (condition(waiting, "Stalled") or {}).get("status") == "False"
    stalled = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Stalled") or {}).get("status") == "True",
                           timeout=40, what="Stalled")
    assert (condition(stalled, "Stalled") or {}).get("reason") == "GuestNotReady"
    assert _ready(stalled)["status"] == "False"
    assert stalled["status"]["guest"]["heartbeat"] == "NoContact"
    assert "GuestNotReady" in {e.reason for e in kube.events_for(NAMESPACE, name)}

    guests.host.set_guest_defaults(boot_seconds=DEFAULT_BOOT)  # the guest comes up after all
    ready = kube.wait_vm(NAMESPACE, name, lambda o: _ready(o).get("status") == "True", timeout=60, what="Ready")
    assert _ready(ready)["reason"] == "Heartbeat"
    assert (condition(ready, "Stalled") or {}).get("status") == "False"
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)


def _carried_waiting_for_heartbeat(guests: SimulatedHyperV, kube: Kube, prefix: str) -> str:
    """A VM whose handler call goes on through the guest's short waits (GUEST_POLL, within the call's
    20 s budget): the guest never answers."""
    guests.host.set_guest_defaults(boot_seconds=NEVER)
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing")
    kube.wait_vm(NAMESPACE, name, lambda o: _ready(o).get("reason") == "WaitingForHeartbeat",
                 what="waiting for the heartbeat")
    return name


def test_deleting_a_vm_whose_handler_waits_on_its_guest_starts_at_once(
    guests: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    """Issue 9: kopf sees a VM's deletion only once the handler call for it returns; a call going on
    through short waits hands back as soon as the deletion is seen (metadata watch), not after its
    20 s budget."""
    name = _carried_waiting_for_heartbeat(guests, kube, "del-carried")
    time.sleep(1.0)  # well inside the call's budget
    deleted = time.monotonic()
    kube.delete_vm(NAMESPACE, name)
    while (obj := kube.get_vm(NAMESPACE, name)) is not None and obj["status"].get("phase") != "Deleting":
        assert time.monotonic() - deleted < 3.0, f"deletion not started after 3 s: {obj['status']}"
        time.sleep(0.1)
    kube.wait_gone(NAMESPACE, name)


def test_a_spec_edit_of_a_vm_whose_handler_waits_on_its_guest_is_acted_on_at_once(
    guests: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    """Issue 9: same for a spec edit (cpus): the carried call hands back, kopf runs the change at once."""
    name = _carried_waiting_for_heartbeat(guests, kube, "edit-carried")
    time.sleep(1.0)
    edited = time.monotonic()
    generation = kube.patch_vm(NAMESPACE, name, {"spec": {"cpus": 3}})["metadata"]["generation"]
    kube.wait_vm(NAMESPACE, name, lambda o: o["status"].get("observedGeneration") == generation, timeout=5,
                 what="the edit observed")
    assert time.monotonic() - edited < 3.0
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)
