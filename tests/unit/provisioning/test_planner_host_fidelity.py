"""The planner against what a real Hyper-V host does: stop escalation that survives errors, every VM
state with an outcome, bounded merges, restored checkpoint type, restricted deletes, secure boot,
generation 2 needs VHDX, a base another host holds open."""

from __future__ import annotations

from typing import Any

import pytest

from hyperv_operator.hyperv.errors import PermanentHostError
from hyperv_operator.provisioning.observation import VhdInfo
from hyperv_operator.provisioning.planner import MERGE_TIMEOUT, STOP_TIMEOUT, error_status, plan, plan_delete

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
    later,
    observe,
    spec,
    status,
    vm,
)

PROVISIONED = {"vmId": VM_ID, "observedGeneration": 1}


def _plan(s: Any, o: Any, strategy: str = "Copy", now: Any = NOW, **extra: Any) -> Any:
    return plan(spec(strategy, **extra), s, o, now, vm=REF, layout=LAYOUT)


def test_graceful_stop_runs_as_a_job_and_escalation_survives_a_failed_stop() -> None:
    s = status("Provisioned", **PROVISIONED)
    first = _plan(s, observe(host_vm=vm("Running")), powerState="Off")
    assert first.action.kind == "StopVM"
    stop = first.action.statements[0].commands[-1]
    assert {k for k, _ in stop.parameters} == {"Force", "AsJob"}  # never blocks the host's connection
    error = PermanentHostError("Failed to stop.", category="NotSpecified",
                               fq_error_id="OperationFailed,Microsoft.HyperV.PowerShell.Commands.StopVM")
    after, _, _ = error_status(spec("Copy", powerState="Off"), s, first.status, error, NOW, vm=REF, layout=LAYOUT,
                               host_name="hv1", step=first.action.description)
    assert after["stopRequestedAt"] == first.status["stopRequestedAt"]  # was dropped: no escalation ever
    waiting = _plan(after, observe(host_vm=vm("Running")), now=later(STOP_TIMEOUT / 2), powerState="Off")
    assert waiting.action is None
    escalated = _plan(after, observe(host_vm=vm("Running")), now=later(STOP_TIMEOUT + 1), powerState="Off")
    assert escalated.action.kind == "TurnOffVM"
    assert "TurnOff" in {k for k, _ in escalated.action.statements[0].commands[-1].parameters}


@pytest.mark.parametrize(("state", "power", "kind", "stall"), [
    ("Paused", "Running", "ResumeVM", None),
    ("Paused", "Off", "ResumeVM", None),  # resumed first, then shut down gracefully
    ("Saved", "Running", "StartVM", None),
    ("Saved", "Off", None, "VMSaved"),  # never discards a saved state on its own
    ("FastSaved", "Off", None, "VMSaved"),
    ("RunningCritical", "Running", None, "VMCritical"),
    ("OffCritical", "Running", None, "VMCritical"),
    ("OffCritical", "Off", None, "VMCritical"),
])
def test_every_vm_state_has_an_outcome(state: str, power: str, kind: str | None, stall: str | None) -> None:
    result = _plan(status("Provisioned", **PROVISIONED), observe(host_vm=vm(state)), powerState=power)
    assert (result.action.kind if result.action else None) == kind
    if stall:
        stalled = condition(result.status, "Stalled")
        assert (stalled["status"], stalled["reason"]) == ("True", stall)
        assert state in stalled["message"] and result.requeue_after  # re-checked, with a reason
        assert result.status["phase"] == "Provisioned"
        assert any(e.reason == stall for e in result.events)


@pytest.mark.parametrize("phase", ["Starting", "Checkpointing", "Merging"])
def test_critical_state_stalls_every_phase_with_a_vm(phase: str) -> None:
    result = _plan(status(phase, vmId=VM_ID, createdFiles=[AVHDX]), observe(host_vm=vm("RunningCritical")), "Quick")
    assert result.action is None and condition(result.status, "Stalled")["reason"] == "VMCritical"


def test_paused_vm_in_starting_is_resumed() -> None:
    result = _plan(status("Starting", vmId=VM_ID), observe(host_vm=vm("Paused"), files=(BASE, DISK)))
    assert result.action.kind == "ResumeVM" and cmdlet_names(result.action) == ["Get-VM", "Resume-VM"]


def _merging(now: Any, started: str | None) -> Any:
    s = status("Merging", vmId=VM_ID, createdFiles=[AVHDX], mergeStartedAt=started,
               disk={"path": AVHDX, "type": "Differencing", "parentPath": DISK})
    o = observe(host_vm=vm("Running", status="Merging disks"), files=(BASE, DISK, AVHDX), drives=(AVHDX,),
                vhds=(VhdInfo(DISK, "Dynamic", None), VhdInfo(AVHDX, "Differencing", DISK)))
    return _plan(s, o, "Quick", now=now)


def test_a_merge_that_never_finishes_stalls_with_a_reason() -> None:
    assert condition(_merging(later(60), "2025-01-01T12:00:00Z").status, "Stalled")["status"] == "False"
    late = _merging(later(MERGE_TIMEOUT + 60), "2025-01-01T12:00:00Z")
    stalled = condition(late.status, "Stalled")
    assert (stalled["status"], stalled["reason"], late.status["phase"]) == ("True", "MergeTimedOut", "Merging")


def test_checkpoint_type_is_recorded_and_restored_after_the_merge() -> None:
    created = _plan(status("CreatingVM", vmId=VM_ID), observe(host_vm=vm("Off", checkpoint_type="Production")),
                    "Quick")
    assert created.action.kind == "ConfigureVM" and created.status["checkpointTypeBefore"] == "Production"
    s = status("Merging", vmId=VM_ID, createdFiles=[AVHDX], checkpointTypeBefore="Production")
    o = observe(host_vm=vm("Running", checkpoint_type="Standard"), files=(BASE, DISK), drives=(DISK,),
                vhds=(VhdInfo(DISK, "Dynamic", None),))
    restore = _plan(s, o, "Quick")
    assert restore.action.kind == "RestoreCheckpointType"
    assert ("CheckpointType", "Production") in restore.action.statements[0].commands[-1].parameters
    done = _plan(restore.status, o.__class__(**{**o.__dict__, "vm": vm("Running", checkpoint_type="Production")}),
                 "Quick")
    assert done.status["phase"] == "Provisioned"


@pytest.mark.parametrize(("path", "deleted"), [
    (AVHDX, True),  # the recorded <base stem>_<GUID>.avhdx beside the base
    ("C:\\Bases\\other_2691830B-9046-4818-930E-D7D7C41A7028.avhdx", False),  # another base's checkpoint
    ("C:\\Elsewhere\\base_2691830B-9046-4818-930E-D7D7C41A7028.avhdx", False),  # not beside the base
    ("C:\\Bases\\base_notaguid.avhdx", False),
    (LAYOUT.vm_dir + "\\web\\Snapshots\\x.avhdx", True),  # under our own folder
])
def test_delete_removes_only_our_checkpoint_disk(path: str, deleted: bool) -> None:
    s = status("Provisioned", createdFiles=[path])
    result = plan_delete(spec("Quick"), s, observe(files=(BASE, path)), NOW, vm=REF, layout=LAYOUT)
    removed = result.action is not None and result.action.kind == "RemoveFiles"
    assert removed is deleted


def test_secure_boot_is_applied_before_the_first_start() -> None:
    boot = {"secureBoot": {"enabled": True, "template": "MicrosoftUEFICertificateAuthority"}}
    o = observe(host_vm=vm("Off"), files=(BASE, DISK))
    first = _plan(status("CreatingVM", vmId=VM_ID), o, **boot)
    assert first.action.kind == "ConfigureFirmware" and first.status["firmwareConfigured"] is True
    params = dict(first.action.statements[0].commands[-1].parameters)
    assert params == {"EnableSecureBoot": "On", "SecureBootTemplate": "MicrosoftUEFICertificateAuthority"}
    assert _plan(first.status, o, **boot).action.kind == "StartVM"
    running = _plan(status("CreatingVM", vmId=VM_ID), observe(host_vm=vm("Running"), files=(BASE, DISK)), **boot)
    assert running.action is None and condition(running.status, "Stalled")["reason"] == "FirmwareNotApplied"


def test_generation_2_needs_a_vhdx_base_before_anything_is_created() -> None:
    o = observe(vhds=(VhdInfo(BASE, "Dynamic", None, size=2**30, vhd_format="VHD"),))
    result = _plan(status(), o)
    assert result.status["phase"] == "Failed" and condition(result.status, "Stalled")["reason"] == (
        "BaseFormatUnsupported")
    assert _plan(status(), o, generation=1).status["phase"] != "Failed"


def test_a_base_another_host_holds_open_still_provisions() -> None:
    o = observe(vhds=(VhdInfo(BASE, "", None, file_size=4 * 2**30, vhd_format="VHDX", in_use_elsewhere=True),))
    result = _plan(status(timings={}), o, "Differencing")
    assert result.action is not None and result.action.kind == "CreateDifferencingDisk"
    assert any(e.reason == "BaseInUseElsewhere" for e in result.events)
