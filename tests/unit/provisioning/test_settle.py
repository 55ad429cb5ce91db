"""The pure settling of outcomes around observing and acting (provisioning/settle.py)."""

from __future__ import annotations

from hyperv_operator.api import Strategy
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.errors import PermanentHostError, TransientHostError
from hyperv_operator.provisioning import retry, settle
from hyperv_operator.provisioning.observation import CopyJob, Observation
from hyperv_operator.provisioning.planner import Action, Plan

from .helpers import DISK, LAYOUT, NOW, REF, condition, spec, status

NOT_FOUND = PermanentHostError("Cannot find path 'x' because it does not exist.", category="ObjectNotFound")


def plan_of(kind: str, phase: str, files: list[str], *, tolerate: bool = False, copy: bool = False) -> Plan:
    action = Action(kind, (cmdlets.remove_file(DISK),), kind, tolerate_not_found=tolerate, starts_copy=copy)
    return Plan(action, status(phase, createdFiles=files), 0.3)


def test_already_gone_during_a_tolerant_batch_means_look_again_now() -> None:
    batch = [plan_of("RemoveFiles", "Deleting", [DISK], tolerate=True)]
    out = settle.action_failed(spec("Copy"), status("Deleting"), batch, NOT_FOUND, NOW, vm=REF, layout=LAYOUT,
                               deleting=True)
    assert out.observe_again and not out.finished


def test_a_folder_that_will_not_go_ends_the_deletion_with_a_warning() -> None:
    batch = [plan_of("RemoveFolders", "Deleting", [])]
    error = PermanentHostError("The directory is not empty.", category="WriteError")
    out = settle.action_failed(spec("Copy"), status("Deleting"), batch, error, NOW, vm=REF, layout=LAYOUT,
                               deleting=True)
    assert out.finished and [e.reason for e in out.events] == ["FolderNotRemoved"]


def test_a_failed_batch_of_several_actions_is_looked_at_again_keeping_every_intent() -> None:
    """On Windows the statements after a failed one run too: which action failed and which ran only the
    host can tell. Look again from the status before the batch (every intent kept), then one action per
    pipeline; nothing is decided, posted or freed on the batch's error."""
    batch = [plan_of("CreateDifferencingDisk", "CreatingDisk", [DISK]),
             plan_of("NewVM", "CreatingVM", [DISK, LAYOUT.partial])]
    denied = PermanentHostError("Access is denied", category="PermissionDenied")
    out = settle.action_failed(spec("Differencing"), status("Pending"), batch, denied, NOW, vm=REF, layout=LAYOUT,
                               deleting=False)
    assert out.observe_again and out.one_at_a_time and out.events == () and not out.free_slot
    assert out.status["phase"] == "Pending"  # the status before the batch: the next observation tells
    assert out.status["createdFiles"] == [DISK, LAYOUT.partial]


def test_a_failed_single_action_retries_from_its_phase() -> None:
    batch = [plan_of("CreateDifferencingDisk", "CreatingDisk", [DISK])]
    busy = TransientHostError("The operation cannot be performed while the object is in use")
    out = settle.action_failed(spec("Differencing"), status("Pending"), batch, busy, NOW, vm=REF, layout=LAYOUT,
                               deleting=False)
    assert out.status["phase"] == "CreatingDisk" and out.status["createdFiles"] == [DISK]
    assert out.requeue_after is not None and out.requeue_after <= retry.BASE_DELAY and not out.observe_again


def test_a_failed_copy_start_frees_its_slot() -> None:
    batch = [plan_of("StartCopy", "Copying", [DISK], copy=True)]
    out = settle.action_failed(spec("Copy"), status("Pending"), batch, PermanentHostError("Access is denied"), NOW,
                               vm=REF, layout=LAYOUT, deleting=False)
    assert out.free_slot and out.status["phase"] == "Failed"


def test_not_found_while_observing_is_a_retry_not_a_failure() -> None:
    out = settle.observe_failed(spec("Copy"), status("Copying"), NOT_FOUND, NOW, vm=REF, layout=LAYOUT,
                                deleting=False)
    assert out.status["phase"] == "Copying" and out.status["retry"]["attempts"] == 1


def test_retain_and_terminal_need_nothing_from_the_host() -> None:
    retained = settle.without_host(spec("Copy", deletionPolicy="Retain"), status("Provisioned"), NOW, vm=REF,
                                   layout=LAYOUT, deleting=True)
    assert retained is not None and retained.finished and retained.free_slot
    failed = settle.without_host(spec("Copy"), status("Failed"), NOW, vm=REF, layout=LAYOUT, deleting=False)
    assert failed is not None and failed.requeue_after is None
    assert settle.without_host(spec("Copy"), status("Copying"), NOW, vm=REF, layout=LAYOUT, deleting=False) is None


def test_slot_use() -> None:
    running = Observation("hv1", copy=CopyJob("Running", 1, 2))
    assert settle.slot_use(None, running, LAYOUT) == "hold"
    cancel = Action("CancelCopy", (), "cancel")
    assert settle.slot_use(cancel, running, LAYOUT) == "free"
    assert settle.slot_use(Action("StartCopy", (), "start", starts_copy=True), Observation("hv1"), LAYOUT) == "take"
    assert settle.slot_use(None, Observation("hv1"), LAYOUT) == "free"
    # A slot taken ahead of the copy (while Quick's New-VM ran) is kept until the copy starts.
    assert settle.slot_use(Action("StartVM", (), "start"), Observation("hv1"), LAYOUT, copy_ahead=True) == "keep"
    assert settle.slot_use(cancel, running, LAYOUT, copy_ahead=True) == "free"


def test_copy_ahead() -> None:
    assert [p for p in ("Pending", "CreatingVM", "Starting", "CopyingBase", "Reparenting", "Merging", "Provisioned",
                        "Failed", "Deleting", "None") if settle.copy_ahead(Strategy.QUICK, p)] == \
        ["Pending", "CreatingVM", "Starting"]
    assert [p for p in ("Pending", "Copying", "CreatingVM", "Starting", "Provisioned", "Failed")
            if settle.copy_ahead(Strategy.COPY, p)] == ["Pending"]
    assert not any(settle.copy_ahead(Strategy.DIFFERENCING, p) for p in ("Pending", "CreatingDisk", "CreatingVM"))


def test_host_missing_and_misconfigured() -> None:
    gone = settle.host_missing({}, 1, "default/hv1", NOW, deleting=True, retry=10.0)
    assert gone.finished
    waiting = settle.host_missing({"vmId": "x"}, 1, "default/hv1", NOW, deleting=True, retry=10.0)
    assert not waiting.finished and waiting.requeue_after == 10.0
    assert condition(waiting.status, "Reconciling")["reason"] == "HostNotFound"
    assert waiting.status["phase"] == "Pending" and "default/hv1" in waiting.status["message"]
    wrong = settle.host_misconfigured(status("Copying"), 1, "secret hv1-creds has no password", NOW)
    assert condition(wrong.status, "Stalled")["status"] == "True"
    assert wrong.status["phase"] == "Copying" and wrong.requeue_after is not None and wrong.requeue_after <= 2.0
    # re-checked on a backoff that starts short and grows to its cap
    delays = []
    current = status("Copying")
    for _ in range(8):
        wrong = settle.host_misconfigured(current, 1, "secret hv1-creds has no password", NOW, key="vm")
        assert wrong.requeue_after is not None
        delays.append(wrong.requeue_after)
        current = wrong.status
    assert delays[0] <= 2.0 and delays[-1] == settle.HOST_MISCONFIGURED_RETRY and delays == sorted(delays)
    assert current["retry"]["attempts"] == 8
