"""Handler glue pieces for going on through short waits: the status kept current between steps, and
one PhaseChanged Event per run."""

from __future__ import annotations

from hyperv_operator.provisioning.engine import coalesce_phase_events
from hyperv_operator.provisioning.model import Event
from hyperv_operator.status_writer import apply_merge_patch


def test_merge_patch_applied_to_a_status() -> None:
    status = {"phase": "Copying", "copy": {"percent": 10, "queued": True}, "message": "x"}
    patch = {"phase": "CreatingVM", "copy": {"percent": 100, "queued": None}, "message": None, "vmId": "1"}
    assert apply_merge_patch(status, patch) == {"phase": "CreatingVM", "copy": {"percent": 100}, "vmId": "1"}
    assert status["copy"] == {"percent": 10, "queued": True}  # the input is not changed


def test_one_phase_changed_event_per_run() -> None:
    events = [
        Event("Normal", "PhaseChanged", "Quick: Pending -> CreatingVM (ns/vm)"),
        Event("Normal", "PhaseChanged", "Quick: CreatingVM -> Checkpointing (ns/vm)"),
        Event("Normal", "CopyStarted", "copy started"),
        Event("Normal", "PhaseChanged", "Quick: Checkpointing -> Starting (ns/vm)"),
        Event("Warning", "PhaseChanged", "Quick: Starting -> Failed (ns/vm)"),
    ]
    assert coalesce_phase_events(events) == (
        Event("Normal", "PhaseChanged", "Quick: Pending -> CreatingVM -> Checkpointing -> Starting (ns/vm)"),
        Event("Normal", "CopyStarted", "copy started"),
        Event("Warning", "PhaseChanged", "Quick: Starting -> Failed (ns/vm)"),
    )
