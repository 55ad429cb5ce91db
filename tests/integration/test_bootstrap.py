"""Issue 14, first-boot configuration, through the real API server, the operator process and the
simulated host over WinRM: spec.bootstrap's Secret reaches the simulated guest on a cidata disk (its
hostname in KVP becomes the VM's name), the disk is gone from the VM and the host after the first
boot, and the Secret's content shows nowhere in the VM's status or events."""

from __future__ import annotations

import json
import uuid
from typing import Any

import kubernetes

from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV
from hyperv_operator.hyperv import cmdlets
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

MARKER = "hunter2-" + uuid.uuid4().hex[:8]
USER_DATA = f"#cloud-config\nchpasswd:\n  list: |\n    root:{MARKER}\n"


def _secret(kube: Kube, name: str) -> None:
    kube.core.create_namespaced_secret(NAMESPACE, kubernetes.client.V1Secret(
        metadata=kubernetes.client.V1ObjectMeta(name=name), string_data={"user-data": USER_DATA}))


def _ready(obj: dict[str, Any]) -> bool:
    return (condition(obj, "Ready") or {}).get("status") == "True"


def _drives(sim: SimulatedHyperV, vm_id: str) -> list[str]:
    return [str(o.properties["Path"]).lower() for o in sim.host.execute([cmdlets.get_vm_hard_disk_drives(vm_id)])]


def test_bootstrap_reaches_the_guest_and_its_disk_goes_after_first_boot(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = f"boot-{uuid.uuid4().hex[:6]}"
    _secret(kube, f"{name}-init")
    kube.create_vm(NAMESPACE, name, "Differencing", bootstrap={"secretRef": {"name": f"{name}-init"}})
    done = kube.wait_vm(NAMESPACE, name, lambda o: _ready(o)
                        and (o["status"].get("bootstrap") or {}).get("state") == "Removed",
                        timeout=120, what="Ready with the configuration disk removed")
    status = done["status"]
    assert status["guest"]["hostname"] == name  # the guest applied meta-data's local-hostname (KVP)
    read = sim.host.guest_first_boot_files(status["vmId"])
    assert read["user-data"] == USER_DATA.encode()  # travelled as a byte[] over WinRM, unchanged
    assert read["meta-data"] == f"instance-id: {done['metadata']['uid']}\nlocal-hostname: {name}\n".encode()
    config = str(status["bootstrap"]["disk"]).lower()
    assert config.endswith("-cidata.vhdx")
    assert config not in _drives(sim, status["vmId"])
    assert not any("cidata" in str(f).lower() for f in sim.host.files())
    assert MARKER not in json.dumps(done)
    events = kube.events_for(NAMESPACE, name)
    assert any(e.reason == "BootstrapCompleted" for e in events)
    assert not any(MARKER in (e.message or "") for e in events)
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)


def test_a_missing_secret_stalls_with_the_reason_until_it_exists(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = f"boot-late-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing", bootstrap={"secretRef": {"name": f"{name}-init"}})
    stalled = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Stalled") or {}).get("status") == "True",
                           what="Stalled for the missing Secret")
    reason = condition(stalled, "Stalled") or {}
    assert reason["reason"] == "BootstrapSecretUnavailable" and f"{name}-init" in reason["message"]
    assert stalled["status"]["powerState"] == "Off"  # not started without its configuration
    _secret(kube, f"{name}-init")
    done = kube.wait_vm(NAMESPACE, name, lambda o: _ready(o) and (o["status"].get("guest") or {}).get("hostname")
                        == name, timeout=120, what="Ready with the hostname from the late Secret")
    assert (condition(done, "Stalled") or {}).get("status") == "False"
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)
