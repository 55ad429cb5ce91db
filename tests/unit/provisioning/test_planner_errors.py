"""How a failed host call shapes the status: retry, stall-and-retry, or fail for good."""

from __future__ import annotations

from typing import Any

from hyperv_operator.hyperv.errors import HostError, PermanentHostError, TransientHostError
from hyperv_operator.provisioning.model import Event
from hyperv_operator.provisioning.planner import error_status

from .helpers import LAYOUT, NOW, REF, condition, spec, status


def _error_status(
    error: HostError, current: dict[str, Any], intended: dict[str, Any] | None = None
) -> tuple[dict[str, Any], float | None, tuple[Event, ...]]:
    return error_status(spec("Copy"), current, intended or current, error, NOW, vm=REF, layout=LAYOUT,
                        host_name="hv01", step="observe")


def test_authentication_failure_stalls_in_place_and_retries() -> None:
    error = PermanentHostError("authentication failed for user 'x' (HTTP 401)", category="AuthenticationError")
    new, requeue, events = _error_status(error, {})
    assert new["phase"] == "Pending"
    assert condition(new, "Stalled")["status"] == "True"
    assert condition(new, "Stalled")["reason"] == "HostAccessDenied"
    assert condition(new, "Ready")["status"] == "False"
    assert requeue is not None and requeue > 0
    assert [e.reason for e in events] == ["HostAccessDenied"]


def test_tls_failure_mid_copy_keeps_the_phase_and_progress() -> None:
    current = status("Copying", disk={"path": LAYOUT.disk, "type": "Dynamic"}, createdFiles=[LAYOUT.disk])
    error = PermanentHostError("TLS certificate verification failed", category="SecurityError")
    new, requeue, _ = _error_status(error, current)
    assert new["phase"] == "Copying"
    assert new["disk"]["path"] == LAYOUT.disk
    assert requeue is not None


def test_transient_error_keeps_the_disk_recorded_by_the_plan() -> None:
    current = status("Copying")
    intended = status("Copying", disk={"path": LAYOUT.disk, "type": "Dynamic"})
    new, requeue, _ = _error_status(TransientHostError("object in use", category="ResourceBusy"), current, intended)
    assert new["disk"]["path"] == LAYOUT.disk
    assert condition(new, "Reconciling")["reason"] == "HostBusy"
    assert requeue is not None


def test_permanent_host_rejection_fails_for_good() -> None:
    error = PermanentHostError("The parameter is incorrect.", category="InvalidArgument")
    new, requeue, _ = _error_status(error, status("Copying"))
    assert new["phase"] == "Failed"
    assert condition(new, "Stalled")["reason"] == "HostRejected"
    assert requeue is None
