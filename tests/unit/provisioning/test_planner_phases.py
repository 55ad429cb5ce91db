"""Table-driven tests of the pure planner: every phase of every strategy, and the "operator died
right after this step" cases (the host shows the step done, status does not: no repeat)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest

from hyperv_operator.provisioning.observation import CopyJob, Observation, SlotView, VhdInfo
from hyperv_operator.provisioning.planner import plan

from .helpers import (
    AVHDX,
    BASE,
    DISK,
    LAYOUT,
    NOW,
    REF,
    TAG,
    VM_ID,
    base_vhd,
    cmdlet_names,
    condition,
    observe,
    spec,
    status,
    vm,
)

CK = LAYOUT.checkpoint_name
RUNNING_JOB = CopyJob("Running", 2 * 2**30, 4 * 2**30, 4242, "2025-01-01T11:59:30Z")
DONE_JOB = CopyJob("Completed", 4 * 2**30, 4 * 2**30, 4242, "2025-01-01T11:59:30Z", finished_at="2025-01-01T12:00:00Z")
DIFF_CHILD = VhdInfo(DISK, "Differencing", BASE)
COPY_DISK = VhdInfo(DISK, "Dynamic", None)
AVHDX_ON_BASE = VhdInfo(AVHDX, "Differencing", BASE)
AVHDX_ON_COPY = VhdInfo(AVHDX, "Differencing", DISK)
WITH_VM = {"vmId": VM_ID}
QUICK_FILES = {"vmId": VM_ID, "createdFiles": [AVHDX], "disk": {"path": AVHDX, "type": "Differencing",
                                                               "parentPath": BASE}}


@dataclass(frozen=True)
class Case:
    id: str
    strategy: str
    status: dict[str, Any]
    obs: Observation
    phase: str  # expected status.phase after the step
    action: str | None  # expected Action.kind
    cmdlets: tuple[str, ...] = ()  # expected cmdlets (short names), when given
    requeue: str = "soon"  # soon | later | none


CASES = [
    # ---- Differencing: Pending -> CreatingDisk -> CreatingVM -> Starting -> Provisioned -------------
    Case("diff/pending->create-disk", "Differencing", status(), observe(), "CreatingDisk", "CreateDifferencingDisk",
         ("New-Item", "New-VHD")),
    Case("diff/died-after-new-vhd", "Differencing", status("CreatingDisk"),
         observe(files=(BASE, DISK), vhds=(DIFF_CHILD,)), "CreatingVM", "NewVM",
         ("New-Item", "New-VM", "Set-VM", "Start-VM")),
    Case("diff/died-after-new-vm (adopt by tag)", "Differencing", status("CreatingVM"),
         observe(files=(BASE, DISK), vhds=(DIFF_CHILD,), host_vm=vm(), found_by="tag"), "Starting", "StartVM",
         ("Get-VM", "Start-VM")),
    Case("diff/new-vm untagged (died before Set-VM) -> tag it", "Differencing", status("CreatingVM"),
         observe(files=(BASE, DISK), host_vm=vm(notes=""), found_by="folder"), "CreatingVM", "ConfigureVM",
         ("Get-VM", "Set-VM")),
    Case("diff/wrong cpus -> Set-VM", "Differencing", status("CreatingVM", **WITH_VM),
         observe(files=(BASE, DISK), host_vm=vm(cpus=1)), "CreatingVM", "ConfigureVM"),
    Case("diff/starting", "Differencing", status("Starting", **WITH_VM), observe(files=(BASE, DISK), host_vm=vm()),
         "Starting", "StartVM"),
    Case("diff/died-after-start", "Differencing", status("Starting", **WITH_VM),
         observe(files=(BASE, DISK), host_vm=vm("Running")), "Provisioned", None, requeue="none"),
    Case("diff/provisioned steady", "Differencing", status("Provisioned", powerState="Running", **WITH_VM),
         observe(files=(BASE, DISK), host_vm=vm("Running")), "Provisioned", None, requeue="none"),
    Case("diff/disk exists with foreign parent", "Differencing", status("CreatingDisk"),
         observe(files=(BASE, DISK), vhds=(VhdInfo(DISK, "Differencing", "C:\\other.vhdx"),)), "Failed", None,
         requeue="none"),
    # ---- Copy: Pending -> Copying -> CreatingVM -> Starting -> Provisioned -------------------------
    Case("copy/pending->start copy", "Copy", status(), observe(), "Copying", "StartCopy", ("New-Item", "<script>")),
    Case("copy/queued (no slot)", "Copy", status("Copying"), observe(slot=SlotView(False, 2, 2)), "Copying", None),
    Case("copy/died-after-start-copy (json Running) -> poll, no 2nd copy", "Copy", status("Pending"),
         observe(files=(BASE, LAYOUT.partial, LAYOUT.copy_status), job=RUNNING_JOB), "Copying", None),
    Case("copy/running poll", "Copy", status("Copying"),
         observe(files=(BASE, LAYOUT.partial, LAYOUT.copy_status), job=RUNNING_JOB), "Copying", None),
    Case("copy/copy done -> remove the status file", "Copy", status("Copying"),
         observe(files=(BASE, DISK, LAYOUT.copy_status), vhds=(COPY_DISK,), job=DONE_JOB), "Copying",
         "RemoveCopyStatus", ("Remove-Item",)),
    Case("copy/copy done, status file gone -> New-VM on the copy", "Copy", status("Copying"),
         observe(files=(BASE, DISK), vhds=(COPY_DISK,)), "CreatingVM", "NewVM"),
    Case("copy/finished between Test-Path and the status read -> look again, no 2nd copy", "Copy",
         status("Copying"), observe(files=(BASE, LAYOUT.partial, LAYOUT.copy_status), job=DONE_JOB), "Copying",
         None),
    Case("copy/copy failed -> wait for its cause to go", "Copy", status("Copying"),
         observe(files=(BASE, LAYOUT.copy_status), job=CopyJob("Failed", 0, 10, 1, error="disk full")), "Copying",
         None, requeue="later"),
    Case("copy/failed copy's wait over -> remove its files, copy again", "Copy",
         status("Copying", copy={"failures": 1, "lastFailureAt": "", "retryAt": "2020-01-01T00:00:00Z"}),
         observe(files=(BASE, LAYOUT.copy_status, LAYOUT.partial), job=CopyJob("Failed", 0, 10, 1, error="disk full")),
         "Copying", "RemoveFailedCopy", ("Remove-Item", "Remove-Item")),
    Case("copy/copy failed its last attempt -> Failed", "Copy",
         status("Copying", copy={"failures": 3, "lastFailureAt": "earlier", "retryAt": "2020-01-01T00:00:00Z"}),
         observe(files=(BASE, LAYOUT.copy_status), job=CopyJob("Failed", 0, 10, 1, error="disk full")), "Failed",
         None, requeue="none"),
    Case("copy/died-after-new-vm", "Copy", status("CreatingVM"),
         observe(files=(BASE, DISK), host_vm=vm(), found_by="tag"), "Starting", "StartVM"),
    Case("copy/died-after-start", "Copy", status("Starting", **WITH_VM),
         observe(files=(BASE, DISK), host_vm=vm("Running")), "Provisioned", None, requeue="none"),
    # ---- Quick -------------------------------------------------------------------------------------
    Case("quick/pending->new-vm on base, checkpointed in its pipe", "Quick", status(), observe(), "CreatingVM",
         "NewVMCheckpointed", ("New-Item", "New-VM", "Set-VM", "Checkpoint-VM", "Get-VMHardDiskDrive")),
    Case("quick/configure: tag + standard checkpoints", "Quick", status("CreatingVM", **WITH_VM),
         observe(host_vm=vm(notes="", checkpoint_type="Production")), "CreatingVM", "ConfigureVM"),
    Case("quick/configured -> checkpoint", "Quick", status("CreatingVM", **WITH_VM), observe(host_vm=vm()),
         "Checkpointing", "Checkpoint", ("Get-VM", "Checkpoint-VM", "Get-VM", "Get-VMHardDiskDrive")),
    Case("quick/died-after-checkpoint: no second checkpoint", "Quick", status("Checkpointing", **WITH_VM),
         observe(files=(BASE, AVHDX), host_vm=vm(), drives=(AVHDX,), snapshots=(CK,), vhds=(AVHDX_ON_BASE,)),
         "Starting", "StartVM"),
    Case("quick/died-after-start -> copy base", "Quick", status("Starting", **QUICK_FILES),
         observe(files=(BASE, AVHDX), host_vm=vm("Running"), drives=(AVHDX,), snapshots=(CK,)),
         "CopyingBase", "StartCopy"),
    Case("quick/copy queued", "Quick", status("CopyingBase", **QUICK_FILES),
         observe(files=(BASE, AVHDX), host_vm=vm("Running"), drives=(AVHDX,), snapshots=(CK,),
                 slot=SlotView(False, 1, 1)), "CopyingBase", None),
    Case("quick/died-after-start-copy -> poll", "Quick", status("Starting", **QUICK_FILES),
         observe(files=(BASE, AVHDX, LAYOUT.partial, LAYOUT.copy_status), host_vm=vm("Running"), drives=(AVHDX,),
                 snapshots=(CK,), job=RUNNING_JOB), "CopyingBase", None),
    Case("quick/copy done -> reparent", "Quick", status("CopyingBase", **QUICK_FILES),
         observe(files=(BASE, AVHDX, DISK), host_vm=vm("Running"), drives=(AVHDX,), snapshots=(CK,),
                 vhds=(AVHDX_ON_BASE, COPY_DISK)), "Reparenting", "Reparent", ("Set-VHD",)),
    Case("quick/died-after-reparent -> remove checkpoint", "Quick", status("Reparenting", **QUICK_FILES),
         observe(files=(BASE, AVHDX, DISK), host_vm=vm("Running"), drives=(AVHDX,), snapshots=(CK,),
                 vhds=(AVHDX_ON_COPY, COPY_DISK)), "Merging", "RemoveCheckpoint",
         ("Get-VM", "Get-VMSnapshot", "Remove-VMSnapshot")),
    Case("quick/merge running -> poll", "Quick", status("Merging", **QUICK_FILES),
         observe(files=(BASE, AVHDX, DISK), host_vm=vm("Running", status="Merging disks"), drives=(AVHDX,),
                 vhds=(AVHDX_ON_COPY, COPY_DISK)), "Merging", None),
    Case("quick/merge done -> Provisioned", "Quick", status("Merging", **QUICK_FILES),
         observe(files=(BASE, DISK), host_vm=vm("Running"), drives=(DISK,), vhds=(COPY_DISK,)), "Provisioned",
         None, requeue="none"),
    Case("quick/died-after-merge while in Reparenting", "Quick", status("Reparenting", **QUICK_FILES),
         observe(files=(BASE, DISK), host_vm=vm("Running"), drives=(DISK,), vhds=(COPY_DISK,)), "Provisioned",
         None, requeue="none"),
    Case("quick/never merge into base", "Quick", status("Merging", **QUICK_FILES),
         observe(files=(BASE, AVHDX, DISK), host_vm=vm("Running"), drives=(AVHDX,), snapshots=(CK,),
                 vhds=(AVHDX_ON_BASE, COPY_DISK)), "Failed", None, requeue="none"),
    # ---- validation and drift ----------------------------------------------------------------------
    Case("any/base missing", "Quick", status(), observe(files=()), "Failed", None, requeue="none"),
    Case("any/base is differencing", "Copy", status(),
         observe(vhds=(VhdInfo(BASE, "Differencing", "C:\\Bases\\older.vhdx"),)), "Failed", None, requeue="none"),
    Case("any/base missing retried when it appears", "Differencing",
         status("Failed", conditions=[{"type": "Stalled", "status": "True", "reason": "BaseDiskNotFound",
                                       "message": "", "lastTransitionTime": "2025-01-01T11:00:00Z"}]),
         observe(), "CreatingDisk", "CreateDifferencingDisk"),
    Case("any/failed stays failed", "Copy", status("Failed", vmId=VM_ID, message="x", conditions=[
        {"type": t, "status": "False", "reason": "X", "message": "", "lastTransitionTime": "2025-01-01T11:00:00Z"}
        for t in ("Ready", "Reconciling", "Stalled")]), observe(host_vm=vm()), "Failed", None,
         requeue="none"),
    Case("drift/vm deleted out of band", "Copy", status("Provisioned", **WITH_VM), observe(files=(BASE, DISK)),
         "Failed", None, requeue="none"),
    Case("drift/vm deleted mid-quick", "Quick", status("CopyingBase", **QUICK_FILES),
         observe(files=(BASE, AVHDX, LAYOUT.copy_status), job=RUNNING_JOB), "Failed", None, requeue="none"),
    Case("drift/stopped out of band -> start", "Copy",
         status("Provisioned", powerState="Running", observedGeneration=1, **WITH_VM),
         observe(files=(BASE, DISK), host_vm=vm("Off")), "Provisioned", "StartVM"),
    Case("power/off requested -> graceful stop", "Copy",
         status("Provisioned", powerState="Running", **WITH_VM), observe(files=(BASE, DISK), host_vm=vm("Running")),
         "Provisioned", "StopVM", ("Get-VM", "Stop-VM")),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_phase_table(case: Case) -> None:
    extra = {"powerState": "Off"} if case.id.startswith("power/") else {}
    result = plan(spec(case.strategy, **extra), case.status, case.obs, NOW, vm=REF, layout=LAYOUT)
    assert result.status["phase"] == case.phase, result.status.get("message")
    assert (result.action.kind if result.action else None) == case.action, result.status.get("message")
    if case.cmdlets:
        assert result.action is not None
        assert tuple(cmdlet_names(result.action)) == case.cmdlets
    if case.requeue == "none":
        assert result.requeue_after is None
    elif case.requeue == "later":
        assert result.requeue_after is not None and result.requeue_after > 5
    else:
        assert result.requeue_after is not None and result.requeue_after <= 5
    assert result.status["message"]
    # never an action that touches the base: no remove/set on it, no New-VHD onto it as child
    if result.action:
        for statement in result.action.statements:
            for command in statement.commands:
                if command.name.endswith(("Remove-Item", "Set-VHD", "New-VHD")):
                    assert command.parameter("Path") != BASE and command.parameter("LiteralPath") != BASE
    kinds = {c["type"] for c in result.status["conditions"]}
    assert {"Ready", "Reconciling", "Stalled"} <= kinds


@pytest.mark.parametrize("extra", [{"dynamicMemory": {"minimum": "512Mi", "maximum": "2Gi"}},
                                   {"secureBoot": {"enabled": False}},
                                   {"networkAdapters": [{"name": "lan", "switchName": "LAN"}]}],
                         ids=["memory", "firmware", "nics"])
def test_a_quick_vm_configured_while_off_is_checkpointed_apart(extra: dict[str, Any]) -> None:
    """Settings that need the VM off come between New-VM and the checkpoint, as before: New-VM's pipe
    ends at Set-VM then."""
    result = plan(spec("Quick", **extra), status(), observe(), NOW, vm=REF, layout=LAYOUT)
    assert result.action is not None and result.action.kind == "NewVM"
    assert "Checkpoint-VM" not in cmdlet_names(result.action)


def test_quick_sequence_events_and_conditions() -> None:
    s = spec("Quick")
    # Starting observed running: Ready True although not independent yet
    st = status("Starting", **QUICK_FILES)
    r = plan(s, st, observe(files=(BASE, AVHDX), host_vm=vm("Running"), drives=(AVHDX,), snapshots=(CK,)), NOW,
             vm=REF, layout=LAYOUT)
    assert condition(r.status, "Ready")["status"] == "True"
    assert condition(r.status, "Independent")["status"] == "False"
    assert condition(r.status, "Reconciling")["reason"] == "CopyingBase"
    assert [e.message for e in r.events if e.reason == "PhaseChanged"] == [
        "Quick: Starting -> CopyingBase (VM 6e1f2a3b...)"]
    assert r.status["timings"]["runningAt"] == "2025-01-01T12:00:00.000Z"
    assert r.status["timings"]["secondsToRunning"] == 60.0
    # merge done
    r2 = plan(s, status("Merging", **QUICK_FILES), observe(files=(BASE, DISK), host_vm=vm("Running"), drives=(DISK,),
                                                          vhds=(VhdInfo(DISK, "Dynamic", None),)),
              NOW, vm=REF, layout=LAYOUT)
    assert condition(r2.status, "Independent")["status"] == "True"
    assert condition(r2.status, "Reconciling")["status"] == "False"
    assert r2.status["disk"] == {"path": DISK, "type": "Dynamic", "parentPath": None}
    assert r2.status["timings"]["independentAt"] == "2025-01-01T12:00:00.000Z"
    assert r2.status["observedGeneration"] == 1


def test_differencing_is_never_independent() -> None:
    r = plan(spec("Differencing"), status("Starting", **WITH_VM), observe(files=(BASE, DISK), host_vm=vm("Running")),
             NOW, vm=REF, layout=LAYOUT)
    ind = condition(r.status, "Independent")
    assert (ind["status"], ind["reason"]) == ("False", "DifferencingDisk")


def test_copy_progress_and_queue_message() -> None:
    r = plan(spec("Copy"), status("Copying"), observe(files=(BASE, LAYOUT.copy_status), job=RUNNING_JOB), NOW,
             vm=REF, layout=LAYOUT)
    assert r.status["copy"]["percent"] == 50
    assert r.status["copy"]["bytesCopied"] == 2 * 2**30
    assert r.requeue_after == 2.0
    q = plan(spec("Copy"), status("Copying"), observe(slot=SlotView(False, 3, 3)), NOW, vm=REF, layout=LAYOUT)
    assert q.status["copy"]["queued"] is True
    assert "queued: 3 copies already running on host hv1 (maxConcurrentCopies=3)" in q.status["message"]
    assert [e.reason for e in q.events] == ["PhaseChanged", "CopyQueued"] or [e.reason for e in q.events] == [
        "CopyQueued"]


def test_start_copy_records_intent() -> None:
    r = plan(spec("Copy"), status(), observe(), NOW, vm=REF, layout=LAYOUT)
    assert set(r.status["createdFiles"]) == {LAYOUT.partial, LAYOUT.copy_status, DISK}
    assert r.action is not None and r.action.starts_copy


def test_missing_base_creates_nothing_and_names_path() -> None:
    r = plan(spec("Copy"), status(), observe(files=()), NOW, vm=REF, layout=LAYOUT)
    assert r.action is None
    stalled = condition(r.status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "BaseDiskNotFound")
    assert BASE in stalled["message"] and BASE in r.status["message"]
    assert any(e.type == "Warning" and e.reason == "BaseDiskNotFound" for e in r.events)


def test_vm_deleted_out_of_band_message() -> None:
    r = plan(spec("Differencing"), status("Provisioned", createdFiles=[DISK], **WITH_VM), observe(files=(BASE, DISK)),
             NOW, vm=REF, layout=LAYOUT)
    stalled = condition(r.status, "Stalled")
    assert stalled["reason"] == "VMDeletedOutOfBand"
    assert "left in place" in stalled["message"] and "nothing was re-created" in stalled["message"]


def test_stopped_out_of_band_event_vs_spec_change() -> None:
    st = status("Provisioned", powerState="Running", observedGeneration=1, **WITH_VM)
    r = plan(spec("Copy"), st, observe(files=(BASE, DISK), host_vm=vm("Off")), NOW, vm=REF, layout=LAYOUT)
    assert [(e.type, e.reason) for e in r.events] == [("Warning", "VMStoppedOutOfBand")]
    # powerState Off -> Running by a spec change (generation 2): not out of band
    from hyperv_operator.provisioning.model import VmRef

    st2 = status("Provisioned", powerState="Off", observedGeneration=1, **WITH_VM)
    r2 = plan(spec("Copy"), st2, observe(files=(BASE, DISK), host_vm=vm("Off")), NOW,
              vm=VmRef(REF.namespace, REF.name, REF.uid, 2), layout=LAYOUT)
    assert [e.reason for e in r2.events] == ["PowerStateChanged"]


def test_power_off_graceful_then_turn_off_after_timeout() -> None:
    s = spec("Copy", powerState="Off")
    o = observe(files=(BASE, DISK), host_vm=vm("Running"))
    r1 = plan(s, status("Provisioned", **WITH_VM), o, NOW, vm=REF, layout=LAYOUT)
    assert r1.action is not None and r1.action.kind == "StopVM"
    assert r1.status["stopRequestedAt"] == "2025-01-01T12:00:00Z"
    from .helpers import later

    r2 = plan(s, r1.status, o, later(30), vm=REF, layout=LAYOUT)
    assert r2.action is None and "shut down" in r2.status["message"]
    r3 = plan(s, r1.status, o, later(61), vm=REF, layout=LAYOUT)
    assert r3.action is not None and r3.action.kind == "TurnOffVM"
    assert cmdlet_names(r3.action) == ["Get-VM", "Stop-VM"]
    assert r3.action.statements[0].commands[1].parameter("TurnOff") is not None
    r4 = plan(s, r3.status, observe(files=(BASE, DISK), host_vm=vm("Off")), later(62), vm=REF, layout=LAYOUT)
    assert r4.action is None and r4.requeue_after is None
    ready = condition(r4.status, "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "PoweredOff")
    assert r4.status["stopRequestedAt"] is None


def test_adopt_by_tag_never_by_name() -> None:
    from hyperv_operator.provisioning.observation import pick_vm

    same_name_other = vm(vm_id="other", notes="", path="E:\\Elsewhere\\web")
    mine = vm(vm_id="mine", notes=f"something {TAG}")
    assert pick_vm([same_name_other], None, REF.uid, LAYOUT) == (None, "")
    assert pick_vm([same_name_other, mine], None, REF.uid, LAYOUT) == (mine, "tag")
    assert pick_vm([same_name_other, mine], "OTHER", REF.uid, LAYOUT) == (same_name_other, "id")
    untagged_in_our_folder = vm(vm_id="fresh", notes="")
    assert pick_vm([same_name_other, untagged_in_our_folder], None, REF.uid, LAYOUT) == (
        untagged_in_our_folder, "folder")


def test_condition_transition_time_kept_when_status_unchanged() -> None:
    s = spec("Copy")
    o = observe(files=(BASE, LAYOUT.copy_status), job=RUNNING_JOB)
    r1 = plan(s, status("Copying"), o, NOW, vm=REF, layout=LAYOUT)
    from .helpers import later

    r2 = plan(s, r1.status, o, later(10), vm=REF, layout=LAYOUT)
    assert condition(r2.status, "Reconciling")["lastTransitionTime"] == "2025-01-01T12:00:00Z"


def test_timings_keep_sub_second_precision() -> None:
    """createdAt and runningAt to the millisecond: a 0.5 s provisioning reads 0.5 s, not 0 or 1."""
    s = spec("Differencing")
    created = plan(s, {}, observe(files=(BASE,), vhds=(base_vhd(),)), NOW + timedelta(seconds=0.25), vm=REF,
                   layout=LAYOUT)
    assert created.status["timings"]["createdAt"] == "2025-01-01T12:00:00.250Z"
    st = status("Starting", timings=created.status["timings"])
    r = plan(s, st, observe(files=(BASE, DISK), vhds=(DIFF_CHILD,), host_vm=vm("Running"), drives=(DISK,)),
             NOW + timedelta(seconds=0.75), vm=REF, layout=LAYOUT)
    assert r.status["timings"]["runningAt"] == "2025-01-01T12:00:00.750Z"
    assert r.status["timings"]["secondsToRunning"] == 0.5
