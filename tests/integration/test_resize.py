"""Issue 14, resizing, through the real API server and the operator process against the simulated host."""

from __future__ import annotations

import time
import uuid
from typing import Any

from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV
from tests.integration import hostview
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

GiB = 2**30


def _ready(kube: Kube, name: str) -> dict[str, Any]:
    return kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Ready") or {}).get("status") == "True",
                        what="Ready")


def _events(kube: Kube, name: str, expect: str | None = None, timeout: float = 30.0) -> set[str]:
    """The VM's event reasons; with `expect`, wait for that one first (kopf posts events in the
    background, after the host command it reports has already changed the host)."""
    deadline = time.monotonic() + timeout
    while True:
        reasons = {e.reason for e in kube.events_for(NAMESPACE, name)}
        if expect is None or expect in reasons or time.monotonic() > deadline:
            return reasons
        time.sleep(0.2)


def _host_vm(sim: SimulatedHyperV, obj: dict[str, Any]) -> dict[str, Any]:
    return hostview.vm(sim, obj["status"]["vmId"])


def test_memory_grows_online_on_a_running_generation_2_vm(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = f"grow-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing")
    obj = _ready(kube, name)
    before = _host_vm(sim, obj)
    assert before["MemoryStartup"] == GiB and before["Generation"] == 2
    kube.patch_vm(NAMESPACE, name, {"spec": {"memory": "2Gi"}})
    kube.wait_vm(NAMESPACE, name, lambda o: _host_vm(sim, o)["MemoryStartup"] == 2 * GiB, what="2Gi on the host")
    after = _host_vm(sim, obj)
    assert after["State"] == "Running"
    assert after["CreationTime"] == before["CreationTime"]
    reasons = _events(kube, name, expect="ResizedOnline")
    assert "ResizedOnline" in reasons and "RestartingForResize" not in reasons
    assert (condition(kube.get_vm(NAMESPACE, name) or {}, "ResizePending") or {}).get("status") != "True"
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)


def test_cpu_change_waits_for_power_off(sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess) -> None:
    name = f"cpu-off-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing", cpus=2)
    _ready(kube, name)
    kube.patch_vm(NAMESPACE, name, {"spec": {"cpus": 4}})
    pending = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "ResizePending") or {}).get("status") == "True",
                           what="ResizePending")
    assert "cpus 2 -> 4" in condition(pending, "ResizePending")["message"]  # type: ignore[index]
    host = _host_vm(sim, pending)
    assert (host["State"], host["ProcessorCount"]) == ("Running", 2)  # nothing changed under the running guest
    assert (condition(pending, "Ready") or {}).get("status") == "True"
    kube.patch_vm(NAMESPACE, name, {"spec": {"powerState": "Off"}})
    done = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "ResizePending") or {}).get("status") == "False",
                        what="resize applied")
    host = _host_vm(sim, done)
    assert (host["State"], host["ProcessorCount"]) == ("Off", 4)
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)


def test_cpu_change_restarts_the_vm_with_update_policy_restart(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = f"cpu-restart-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing", cpus=2, updatePolicy="Restart")
    _ready(kube, name)
    kube.patch_vm(NAMESPACE, name, {"spec": {"cpus": 3}})
    done = kube.wait_vm(NAMESPACE, name, lambda o: _host_vm(sim, o)["ProcessorCount"] == 3
                        and _host_vm(sim, o)["State"] == "Running"
                        and (condition(o, "Ready") or {}).get("status") == "True"
                        and not o["status"].get("resizeRestartAt"), timeout=120, what="restarted with 3 CPUs")
    reasons = _events(kube, name, expect="Resized")
    assert {"RestartingForResize", "Resized"} <= reasons, (reasons, done["status"])
    assert (condition(done, "ResizePending") or {}).get("status") == "False", done["status"]
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)
