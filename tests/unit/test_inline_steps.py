"""Handler glue pieces for going on through short waits: the status kept current between steps, and
one PhaseChanged Event per run."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from tests.unit.test_hosts_cache_and_locks import CountingSecrets, _handler, make_connections

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


def test_a_handler_call_goes_on_through_short_waits_writing_its_status_before_each(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 9: a step that asks to be called again soon is called again in the same handler call (no
    kopf retry: no progress annotation, no touch patch), after its status was written; without a status
    writer the handler hands back to kopf at once, as before."""
    import kopf

    from hyperv_operator import handlers
    from hyperv_operator.provisioning.engine import StepOutcome

    phases = ["CreatingVM", "Starting", "Provisioned"]
    seen: list[str] = []

    async def fake_engine(client: Any, ref: Any, spec: Any, status: Mapping[str, Any], *rest: Any) -> StepOutcome:
        seen.append(str(status.get("phase")))
        nxt = phases[min(len(seen) - 1, len(phases) - 1)]
        return StepOutcome(status={**status, "phase": nxt}, requeue_after=None if nxt == "Provisioned" else 0.01,
                           events=(), finished=False)

    monkeypatch.setattr(handlers.engine, "reconcile", fake_engine)
    host_spec = {"address": "hv01", "defaultVmPath": "C:\\VMs", "auth": "basic",
                 "credentialsSecretRef": {"name": "creds"}, "caBundleSecretRef": {"name": "ca"},
                 "storage": {"baseRoots": ["\\\\FS\\S"], "vmRoots": ["C:\\VMs"]}}
    vm_spec = {"hostRef": {"name": "hv01"}, "baseVhd": "\\\\FS\\S\\B.VHDX", "strategy": "Differencing",
               "memory": "1Gi", "cpus": 2}

    def kwargs() -> dict[str, Any]:
        raw = {"metadata": {"namespace": "ns", "name": "vm1", "uid": "u1", "generation": 1},
               "spec": vm_spec, "status": {"phase": "Pending"}}
        body = kopf.Body(raw)
        return {"body": body, "meta": body.metadata, "spec": body.spec, "status": body.status,
                "patch": kopf.Patch(), "hosts_by_name": {("ns", "hv01"): [host_spec]}}

    written: list[dict[str, Any]] = []

    async def write(namespace: str, name: str, status: Mapping[str, Any]) -> None:
        written.append(dict(status))

    runtime = handlers.Runtime(handlers.OperatorConfig(), make_connections(CountingSecrets()), write_status=write)
    reconcile = _handler(handlers.build_registry(runtime), "_changing", "reconcile")
    call = kwargs()
    asyncio.run(reconcile(**call))  # no TemporaryError: converged within the call
    assert seen == ["Pending", "CreatingVM", "Starting"]
    assert [w.get("phase") for w in written] == ["CreatingVM", "Starting"]
    assert call["patch"]["status"]["phase"] == "Provisioned"  # the last step's status, left to kopf
    assert not runtime.carried

    seen.clear()
    plain = handlers.Runtime(handlers.OperatorConfig(), make_connections(CountingSecrets()))
    reconcile = _handler(handlers.build_registry(plain), "_changing", "reconcile")
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(reconcile(**kwargs()))
    assert seen == ["Pending"]
