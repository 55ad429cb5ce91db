"""Table-driven tests of plan_delete (finalize) and of host error handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

from hyperv_operator.hyperv.errors import HostUnreachableError, PermanentHostError, TransientHostError
from hyperv_operator.provisioning.observation import CopyJob, Observation
from hyperv_operator.provisioning.planner import Action, error_status, plan_delete

from .helpers import (
    AVHDX,
    BASE,
    DISK,
    LAYOUT,
    NOW,
    REF,
    VM_ID,
    cmdlet_names,
    condition,
    observe,
    spec,
    status,
    vm,
    vmwp,
    worker,
)

CK = LAYOUT.checkpoint_name
CONFIG = LAYOUT.vm_dir + "\\web"
ALL_FOLDERS = (LAYOUT.vm_dir, CONFIG, CONFIG + "\\Virtual Machines")
RUNNING_JOB = CopyJob("Running", 10, 100, 4242)


@dataclass(frozen=True)
class Case:
    id: str
    strategy: str
    status: dict[str, Any]
    obs: Observation
    action: str | None
    cmdlets: tuple[str, ...] = ()
    finished: bool = False


CASES = [
    Case("pending, nothing created", "Copy", status("Pending"), observe(), None, finished=True),
    Case("differencing creating disk: remove child", "Differencing", status("CreatingDisk", createdFiles=[DISK]),
         observe(files=(BASE, DISK, LAYOUT.vm_dir)), "RemoveFiles", ("Remove-Item",)),
    Case("differencing provisioned: turn off + remove VM first", "Differencing",
         status("Provisioned", vmId=VM_ID, createdFiles=[DISK]),
         observe(files=(BASE, DISK, *ALL_FOLDERS), host_vm=vm("Running"), drives=(DISK,)), "RemoveVM",
         ("Get-VM", "Stop-VM", "Get-VM", "Remove-VM")),
    Case("vm off: remove without stop", "Copy", status("Starting", vmId=VM_ID),
         observe(files=(BASE, DISK), host_vm=vm("Off"), drives=(DISK,)), "RemoveVM", ("Get-VM", "Remove-VM")),
    Case("copy running, worker confirmed: stop it, then remove json", "Copy",
         status("Copying", createdFiles=[LAYOUT.partial, LAYOUT.copy_status, DISK]),
         observe(files=(BASE, LAYOUT.partial, LAYOUT.copy_status), job=RUNNING_JOB, process=worker(4242)),
         "CancelCopy", ("Stop-Process", "Remove-Item")),
    Case("copy running, PID reused by a vmwp.exe: never stopped", "Copy",
         status("Copying", createdFiles=[LAYOUT.partial, LAYOUT.copy_status, DISK]),
         observe(files=(BASE, LAYOUT.partial, LAYOUT.copy_status), job=RUNNING_JOB, process=vmwp(4242)),
         "CancelCopy", ("Remove-Item",)),
    Case("copy running, worker gone: only the json", "Copy",
         status("Copying", createdFiles=[LAYOUT.partial, LAYOUT.copy_status, DISK]),
         observe(files=(BASE, LAYOUT.partial, LAYOUT.copy_status), job=RUNNING_JOB, process_checked=True),
         "CancelCopy", ("Remove-Item",)),
    Case("after cancel: remove partial", "Copy",
         status("Deleting", createdFiles=[LAYOUT.partial, LAYOUT.copy_status, DISK]),
         observe(files=(BASE, LAYOUT.partial, LAYOUT.vm_dir)), "RemoveFiles", ("Remove-Item",)),
    Case("quick merging: wait, do not remove mid-merge", "Quick", status("Merging", vmId=VM_ID, createdFiles=[AVHDX]),
         observe(files=(BASE, AVHDX, DISK), host_vm=vm("Running", status="Merging disks"), drives=(AVHDX,)), None),
    Case("quick died after checkpoint: record the avhdx before removing the VM", "Quick",
         status("Checkpointing", vmId=VM_ID), observe(files=(BASE, AVHDX), host_vm=vm(), drives=(AVHDX,),
                                                      snapshots=(CK,)), None),
    Case("quick copying base: remove VM (never remove the checkpoint = merge into base)", "Quick",
         status("CopyingBase", vmId=VM_ID, createdFiles=[AVHDX]),
         observe(files=(BASE, AVHDX), host_vm=vm("Running"), drives=(AVHDX,), snapshots=(CK,)), "RemoveVM",
         ("Get-VM", "Stop-VM", "Get-VM", "Remove-VM")),
    Case("files gone: empty folders bottom-up", "Copy", status("Deleting"), observe(files=(BASE, *ALL_FOLDERS)),
         "RemoveFolders", ("Remove-Item", "Remove-Item", "Remove-Item")),
    Case("everything gone: finished", "Quick", status("Deleting", createdFiles=[AVHDX, DISK]), observe(), None,
         finished=True),
    Case("failed out-of-band: disks removed on delete", "Copy",
         status("Failed", vmId=VM_ID, createdFiles=[DISK]), observe(files=(BASE, DISK)), "RemoveFiles"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_delete_table(case: Case) -> None:
    result = plan_delete(spec(case.strategy), case.status, case.obs, NOW, vm=REF, layout=LAYOUT)
    assert (result.action.kind if result.action else None) == case.action, result.status.get("message")
    assert result.finished is case.finished
    if case.cmdlets:
        assert result.action is not None
        assert tuple(cmdlet_names(result.action)) == case.cmdlets
    if not case.finished:
        assert result.status["phase"] == "Deleting"
        assert result.requeue_after is not None
    if result.action:
        _assert_never_touches_base(result.action)


def _assert_never_touches_base(action: Action) -> None:
    for statement in action.statements:
        for command in statement.commands:
            for _, value in command.parameters:
                assert value != BASE, f"{command} touches the base"
            assert not (command.name.endswith("Remove-Item") and command.parameter("Recurse") is not None)


def test_remove_files_are_exactly_ours() -> None:
    st = status("Deleting", createdFiles=[DISK, AVHDX, BASE, "D:\\VMs\\web-other\\web.vhdx"])
    o = observe(files=(BASE, DISK, AVHDX, "D:\\VMs\\web-other\\web.vhdx", LAYOUT.copy_status))
    r = plan_delete(spec("Quick"), st, o, NOW, vm=REF, layout=LAYOUT)
    assert r.action is not None
    removed = [s.commands[0].parameter("LiteralPath") for s in r.action.statements]
    assert removed == [DISK, AVHDX, LAYOUT.copy_status]


def test_record_avhdx_then_remove() -> None:
    o = observe(files=(BASE, AVHDX), host_vm=vm(), drives=(AVHDX,), snapshots=(CK,))
    r = plan_delete(spec("Quick"), status("Checkpointing", vmId=VM_ID), o, NOW, vm=REF, layout=LAYOUT)
    assert r.status["createdFiles"] == [AVHDX]
    r2 = plan_delete(spec("Quick"), r.status, o, NOW, vm=REF, layout=LAYOUT)
    assert r2.action is not None and r2.action.kind == "RemoveVM"


def test_retain_finishes_at_once() -> None:
    r = plan_delete(spec("Copy", deletionPolicy="Retain"), status("Provisioned", vmId=VM_ID),
                    observe(files=(BASE, DISK), host_vm=vm("Running")), NOW, vm=REF, layout=LAYOUT)
    assert r.finished and r.action is None
    assert "Retain" in r.status["message"]


def test_cancel_uses_pid_from_status_when_json_has_none() -> None:
    st = status("Copying", copy={"processId": 777})
    r = plan_delete(spec("Copy"), st, observe(files=(BASE, LAYOUT.copy_status), job=CopyJob("Running", 0, 1, 0),
                                              process=worker(777)),
                    NOW, vm=REF, layout=LAYOUT)
    assert r.action is not None
    assert r.action.statements[0].commands[0].parameter("Id") == 777


def test_cancel_never_stops_a_process_with_the_right_pid_but_another_creation_time() -> None:
    st = status("Copying", copy={"processId": 777, "processCreatedAt": "2025-01-01T11:00:00Z"})
    r = plan_delete(spec("Copy"), st, observe(files=(BASE, LAYOUT.copy_status), job=CopyJob("Running", 0, 1, 777),
                                              process=worker(777, "2025-01-01T11:59:58Z")),
                    NOW, vm=REF, layout=LAYOUT)
    assert r.action is not None and r.action.kind == "CancelCopy"
    assert [c.name for s in r.action.statements for c in s.commands] == ["Microsoft.PowerShell.Management\\Remove-Item"]


@pytest.mark.parametrize(
    ("error", "phase", "reason", "requeue", "deleting"),
    [
        (TransientHostError("The operation cannot be performed while the object is in use", category="ResourceBusy"),
         "CopyingBase", "HostBusy", 5.0, False),
        (HostUnreachableError("connection refused"), "Starting", "HostUnreachable", 5.0, False),
        (PermanentHostError("Access is denied", category="PermissionDenied"), "Failed", "HostRejected", None, False),
        (PermanentHostError("Access is denied", category="PermissionDenied"), "Deleting", "CleanupFailed", 30.0, True),
    ],
)
def test_error_status(error: Exception, phase: str, reason: str, requeue: float | None, deleting: bool) -> None:
    from hyperv_operator.hyperv.errors import HostError

    assert isinstance(error, HostError)
    before = status("Deleting" if deleting else ("CopyingBase" if phase == "Failed" else phase), vmId=VM_ID,
                    conditions=[])
    intended = dict(before, createdFiles=[DISK])
    new, delay, events = error_status(spec("Quick"), before, intended, error, NOW, vm=REF, layout=LAYOUT,
                                      host_name="hv1", step="Start-VM", deleting=deleting)
    assert new["phase"] == phase
    assert delay == requeue
    assert new["createdFiles"] == [DISK]  # intent survives the failure
    assert error.message in new["lastError"]
    if phase == "Failed":
        stalled = condition(new, "Stalled")
        assert (stalled["status"], stalled["reason"]) == ("True", reason)
    elif deleting:
        assert condition(new, "Stalled")["reason"] == reason
    else:
        rec = condition(new, "Reconciling")
        assert (rec["status"], rec["reason"]) == ("True", reason)
    assert events and events[-1].type == "Warning"
