"""Crash the operator right after each host step of each strategy, and delete in each phase.

The operator is SIGKILLed from inside the simulated host, the moment the step's command has
completed on the host but before the operator could record it: the hardest point to resume from.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hyperv_operator.envtest.controlplane import ControlPlane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import BASE_VHD, SimulatedHyperV, apply_objects, host_objects
from tests.integration import hostview
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition
from tests.integration.test_provisioning import _assert_final_host_state

CRASH_POINTS = [
    ("Differencing", "New-Item"),
    ("Differencing", "New-VHD"),
    ("Differencing", "New-VM"),
    ("Differencing", "Set-VM"),
    ("Differencing", "Start-VM"),
    ("Copy", "StartBackgroundCopy"),
    ("Copy", "New-VM"),
    ("Copy", "Start-VM"),
    ("Quick", "New-VM"),
    ("Quick", "Set-VM"),
    ("Quick", "Checkpoint-VM"),
    ("Quick", "Start-VM"),
    ("Quick", "StartBackgroundCopy"),
    ("Quick", "Set-VHD"),
    ("Quick", "Remove-VMSnapshot"),
]

DELETE_POINTS = [
    ("Differencing", "New-VHD"),
    ("Differencing", "New-VM"),
    ("Differencing", "Start-VM"),
    ("Copy", "StartBackgroundCopy"),
    ("Copy", "New-VM"),
    ("Quick", "New-VM"),
    ("Quick", "Checkpoint-VM"),
    ("Quick", "Start-VM"),
    ("Quick", "StartBackgroundCopy"),
    ("Quick", "Set-VHD"),
    ("Quick", "Remove-VMSnapshot"),
]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _guest_write_if_running(sim: SimulatedHyperV, uid: str) -> bytes | None:
    vms = hostview.vms_tagged(sim, uid)
    if len(vms) == 1 and vms[0]["State"] == "Running":
        data = f"guest data of {uid}".encode()
        sim.host.guest_write(vms[0]["Id"], 3, data)
        return data
    return None


@pytest.mark.parametrize(("strategy", "command"), CRASH_POINTS, ids=[f"{s}-{c}" for s, c in CRASH_POINTS])
def test_crash_right_after_a_host_step_resumes_to_the_same_final_state(
    strategy: str,
    command: str,
    sim: SimulatedHyperV,
    kube: Kube,
    running_operator: OperatorProcess,
    command_hook: hostview.CommandHook,
) -> None:
    name = _name(f"crash-{strategy.lower()}")
    base_before = sim.host.disk_fingerprint(BASE_VHD)
    killed = threading.Event()

    def kill_after(cmd: str, params: dict[str, Any], when: str) -> None:
        if when == "after" and hostview.command_is(cmd, command) and not killed.is_set():
            killed.set()
            running_operator.kill()

    command_hook.set(kill_after)
    obj = kube.create_vm(NAMESPACE, name, strategy)
    assert killed.wait(60), f"{command} never ran"
    command_hook.clear()
    uid = obj["metadata"]["uid"]
    data = _guest_write_if_running(sim, uid)
    running_operator.start()
    final = kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=120)
    _assert_final_host_state(sim, final, strategy)
    if data is not None:
        assert sim.host.guest_view(final["status"]["vmId"]).get(3) == data
    assert sim.host.disk_fingerprint(BASE_VHD) == base_before
    copies = [c for c in sim.host.call_log() if hostview.command_is(c[0], "StartBackgroundCopy") and name in str(c[1])]
    assert len(copies) <= 1, f"the base was copied {len(copies)} times"


def test_crash_in_the_middle_of_the_background_copy_does_not_restart_it(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = _name("midcopy")
    kube.create_vm(NAMESPACE, name, "Quick")

    def copying_on_host(_: dict[str, Any]) -> bool:
        return any(name in job["Destination"] and job["State"] == "Running" and job["BytesCopied"] > 0
                   for job in sim.host.copy_jobs())

    # Judged on the host, not from status: the operator polls every 2 s and the copy is quick here.
    kube.wait_vm(NAMESPACE, name, copying_on_host, what="copy running on the host")
    running_operator.kill()
    running_operator.start()
    final = kube.wait_phase(NAMESPACE, name, "Provisioned")
    _assert_final_host_state(sim, final, "Quick")
    copies = [c for c in sim.host.call_log() if hostview.command_is(c[0], "StartBackgroundCopy") and name in str(c[1])]
    assert len(copies) == 1


def test_killed_copy_worker_is_detected_and_the_copy_restarted(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    """The copy worker dies on the host (killed, or lost in a reboot): its status file says "Running"
    forever. The operator sees the process gone (Get-CimInstance Win32_Process), restarts the copy
    once, and the VM provisions."""
    name = _name("killcopy")
    kube.create_vm(NAMESPACE, name, "Copy")

    def copying_on_host(_: dict[str, Any]) -> bool:
        return any(name in job["Destination"] and job["State"] == "Running" and job["BytesCopied"] > 0
                   for job in sim.host.copy_jobs())

    kube.wait_vm(NAMESPACE, name, copying_on_host, what="copy running on the host")
    [job] = [j for j in sim.host.copy_jobs() if name in j["Destination"] and j["State"] == "Running"]
    sim.host.kill_process(int(job["ProcessId"]))
    final = kube.wait_phase(NAMESPACE, name, "Provisioned")
    _assert_final_host_state(sim, final, "Copy")
    assert final["status"]["copy"]["restarts"] == 1
    assert "no longer running" in final["status"]["copy"]["lastRestartReason"]
    copies = [c for c in sim.host.call_log() if hostview.command_is(c[0], "StartBackgroundCopy") and name in str(c[1])]
    assert len(copies) == 2


@pytest.mark.parametrize(("strategy", "command"), DELETE_POINTS, ids=[f"{s}-{c}" for s, c in DELETE_POINTS])
def test_delete_in_each_phase_leaves_the_host_clean(
    strategy: str,
    command: str,
    sim: SimulatedHyperV,
    kube: Kube,
    running_operator: OperatorProcess,
    command_hook: hostview.CommandHook,
) -> None:
    name = _name(f"del-{strategy.lower()}")
    files_before = set(hostview.file_paths(sim))
    base_before = sim.host.disk_fingerprint(BASE_VHD)
    reached = threading.Event()

    def note(cmd: str, params: dict[str, Any], when: str) -> None:
        if when == "after" and hostview.command_is(cmd, command):
            reached.set()

    command_hook.set(note)
    obj = kube.create_vm(NAMESPACE, name, strategy)
    assert reached.wait(60), f"{command} never ran"
    command_hook.clear()
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name, timeout=120)
    assert hostview.vms_tagged(sim, obj["metadata"]["uid"]) == []
    files_after = set(hostview.file_paths(sim))
    assert files_after - files_before == set(), f"left behind: {sorted(files_after - files_before)}"
    assert files_before - files_after == set(), f"deleted files it did not create: {files_before - files_after}"
    assert sim.host.disk_fingerprint(BASE_VHD) == base_before


def test_retain_leaves_vm_and_disks(sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess) -> None:
    name = _name("retain")
    kube.create_vm(NAMESPACE, name, "Copy", deletionPolicy="Retain")
    obj = kube.wait_phase(NAMESPACE, name, "Provisioned")
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)
    vms = hostview.vms_tagged(sim, obj["metadata"]["uid"])
    assert len(vms) == 1 and vms[0]["State"] == "Running"
    assert obj["status"]["disk"]["path"].lower() in {p.lower() for p in hostview.file_paths(sim)}


def test_stalled_vm_reports_failed_kstatus(kube: Kube, running_operator: OperatorProcess) -> None:
    name = _name("kstatus-failed")
    kube.create_vm(NAMESPACE, name, "Differencing", baseVhd="\\\\FS\\VMSHARE\\NOPE.VHDX")
    obj = kube.wait_phase(NAMESPACE, name, "Failed")
    assert (condition(obj, "Stalled") or {}).get("status") == "True"


@pytest.fixture
def own_sim() -> Iterator[SimulatedHyperV]:
    """A host of this test's own: a held Get-VM there can only be this test's VM's."""
    simulated = SimulatedHyperV(time_scale=60.0, guest_write_bytes_per_second=20e3).start()
    yield simulated
    simulated.stop()


def test_a_vm_deleted_while_its_drift_check_waits_on_the_host_goes_at_once(
    control_plane: ControlPlane, own_sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess,
) -> None:
    """kopf removes the finalizer only once the VM's timers have exited, and looks again only after
    `cancellation_polling` (60 s by default) if one has not: a drift check in flight (here, held on
    the host) kept a deleted VM, and the deletion waiting for the VM's lock, for a minute or more.
    The drift check is cancelled when its VM is deleted, so the deletion goes on at once."""
    host = f"hv-drift-del-{uuid.uuid4().hex[:5]}"
    apply_objects(control_plane, host_objects(NAMESPACE, host, own_sim))
    name = _name("drift-del")
    obj = kube.create_vm(NAMESPACE, name, "Differencing", host=host)
    kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Ready") or {}).get("status") == "True"
                 and "hyperv-operator.io/reconcile" not in (o["metadata"].get("annotations") or {}),
                 timeout=90, what="Ready with no change handler under way")
    release, reached = threading.Event(), threading.Event()
    # The next drift check reads the VM with Get-VM -Id: held on the host for up to 90 s.
    own_sim.host.hold("Get-VM", release, reached=reached, timeout=90)
    try:
        assert reached.wait(running_operator.drift_interval * 3), "no drift check reached the host"
        started = time.monotonic()
        kube.delete_vm(NAMESPACE, name)
        kube.wait_gone(NAMESPACE, name, timeout=30)
        took = time.monotonic() - started
    finally:
        release.set()
    assert took < 15, f"deleted in {took:.1f} s"
    assert hostview.vms_tagged(own_sim, obj["metadata"]["uid"]) == []  # deleted on the host, not abandoned
