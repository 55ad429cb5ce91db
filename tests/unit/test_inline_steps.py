"""Handler glue pieces for going on through short waits: the status kept current between steps, and
one progress Event per run."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from tests.unit.test_hosts_cache_and_locks import CountingSecrets, _handler, make_connections

from hyperv_operator.provisioning.engine import coalesce_run_events
from hyperv_operator.provisioning.model import Event
from hyperv_operator.status_writer import StatusConflict, Written, apply_merge_patch


def test_merge_patch_applied_to_a_status() -> None:
    status = {"phase": "Copying", "copy": {"percent": 10, "queued": True}, "message": "x"}
    patch = {"phase": "CreatingVM", "copy": {"percent": 100, "queued": None}, "message": None, "vmId": "1"}
    assert apply_merge_patch(status, patch) == {"phase": "CreatingVM", "copy": {"percent": 100}, "vmId": "1"}
    assert status["copy"] == {"percent": 10, "queued": True}  # the input is not changed


def test_one_progress_event_per_run() -> None:
    """A run's phase changes and milestones are one Event (each Event is an API write), its reason the
    run's last milestone; the VM's label may change on the way (its name, then its Id once New-VM ran);
    Warnings and other reasons stay their own."""
    events = [
        Event("Normal", "PhaseChanged", "Quick: Pending -> CreatingVM (VM vm)"),
        Event("Normal", "PhaseChanged", "Quick: CreatingVM -> Checkpointing (VM 1f21...)"),
        Event("Normal", "BaseInUseElsewhere", "read by file"),
        Event("Normal", "PhaseChanged", "Quick: Checkpointing -> Starting -> CopyingBase (VM 1f21...)"),
        Event("Normal", "CopyStarted", "copy started"),
        Event("Warning", "PhaseChanged", "Quick: CopyingBase -> Failed (VM 1f21...)"),
    ]
    assert coalesce_run_events(events) == (
        Event("Normal", "CopyStarted",
              "Quick: Pending -> CreatingVM -> Checkpointing -> Starting -> CopyingBase (VM 1f21...): copy started"),
        Event("Normal", "BaseInUseElsewhere", "read by file"),
        Event("Warning", "PhaseChanged", "Quick: CopyingBase -> Failed (VM 1f21...)"),
    )
    merge_run = [
        Event("Normal", "CopyCompleted", "copy of b to d completed"),
        Event("Normal", "PhaseChanged", "Quick: CopyingBase -> Reparenting (VM 1)"),
        Event("Normal", "PhaseChanged", "Quick: Reparenting -> Merging (VM 1)"),
        Event("Normal", "Reparenting", "re-parenting a onto d"),
        Event("Normal", "MergeStarted", "merging a into d"),
    ]
    assert coalesce_run_events(merge_run) == (Event(
        "Normal", "MergeStarted", "Quick: CopyingBase -> Reparenting -> Merging (VM 1): copy of b to d completed; "
                                  "re-parenting a onto d; merging a into d"),)
    assert coalesce_run_events([Event("Normal", "Independent", "on its own disk")]) == (
        Event("Normal", "Independent", "on its own disk"),)
    assert coalesce_run_events([Event("Normal", "PhaseChanged", "Copy: A -> B (VM 1)")]) == (
        Event("Normal", "PhaseChanged", "Copy: A -> B (VM 1)"),)
    assert coalesce_run_events(()) == ()
    # A Warning mid-run: the progress before it, the Warning, then the progress after it, in order.
    assert coalesce_run_events([
        Event("Normal", "PhaseChanged", "Copy: Pending -> Copying (VM 1)"),
        Event("Warning", "CopyRestarted", "the copy died; started again"),
        Event("Normal", "PhaseChanged", "Copy: Copying -> CreatingVM (VM 1)"),
        Event("Normal", "CopyCompleted", "copied"),
    ]) == (Event("Normal", "PhaseChanged", "Copy: Pending -> Copying (VM 1)"),
           Event("Warning", "CopyRestarted", "the copy died; started again"),
           Event("Normal", "CopyCompleted", "Copy: Copying -> CreatingVM (VM 1): copied"))
    long = coalesce_run_events([Event("Normal", "CopyStarted", "x" * 2000)])
    assert len(long[0].message) == 1024 and long[0].message.endswith("...")


class FakeVmApi:
    """One VirtualMachine as the API server keeps it: status merge patches, a resourceVersion that moves
    on every write, and its precondition on a status write."""

    def __init__(self, status: Mapping[str, Any], generation: int = 1) -> None:
        self.status: dict[str, Any] = dict(status)
        self.metadata: dict[str, Any] = {"namespace": "ns", "name": "vm1", "uid": "u1", "generation": generation}
        self.rv = 1
        self.history: list[dict[str, Any]] = [dict(self.status)]

    def _object(self) -> dict[str, Any]:
        return {"metadata": {**self.metadata, "resourceVersion": str(self.rv)}, "status": dict(self.status)}

    def _apply(self, patch: Mapping[str, Any]) -> None:
        self.status = apply_merge_patch(self.status, patch)
        self.rv += 1
        self.history.append(dict(self.status))

    async def write(self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str) -> Written:
        if resource_version and resource_version != str(self.rv):
            raise StatusConflict(f"at {self.rv}, not {resource_version}")
        self._apply(patch)
        return Written(self._object())

    async def read(self, namespace: str, name: str) -> Written:
        return Written(self._object())

    def kopf_patch(self, patch: Mapping[str, Any]) -> None:
        """What kopf does with a handler's patch when the call returns: an unguarded merge patch."""
        if patch.get("status"):
            self._apply(patch["status"])

    def touch(self) -> None:
        """A metadata-only write (kopf's annotations)."""
        self.rv += 1

    def kwargs(self, status: Mapping[str, Any] | None = None, rv: int | None = None) -> dict[str, Any]:
        """kopf's handler kwargs for a body as the watch delivered it (by default: the current one)."""
        import kopf

        raw = {"metadata": {**self.metadata, "resourceVersion": str(rv or self.rv)}, "spec": VM_SPEC,
               "status": dict(self.status if status is None else status)}
        body = kopf.Body(raw)
        return {"body": body, "meta": body.metadata, "spec": body.spec, "status": body.status,
                "patch": kopf.Patch(), "hosts_by_name": {("ns", "hv01"): [HOST_SPEC]}}


HOST_SPEC = {"address": "hv01", "defaultVmPath": "C:\\VMs", "auth": "basic",
             "credentialsSecretRef": {"name": "creds"}, "caBundleSecretRef": {"name": "ca"},
             "storage": {"baseRoots": ["\\\\FS\\S"], "vmRoots": ["C:\\VMs"]}}
VM_SPEC = {"hostRef": {"name": "hv01"}, "baseVhd": "\\\\FS\\S\\B.VHDX", "strategy": "Differencing",
           "memory": "1Gi", "cpus": 2}


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

    async def fake_engine(client: Any, ref: Any, spec: Any, status: Mapping[str, Any], *rest: Any,
                          **options: Any) -> StepOutcome:
        seen.append(str(status.get("phase")))
        nxt = phases[min(len(seen) - 1, len(phases) - 1)]
        return StepOutcome(status={**status, "phase": nxt}, requeue_after=None if nxt == "Provisioned" else 0.01,
                           events=(), finished=False)

    monkeypatch.setattr(handlers.engine, "reconcile", fake_engine)
    server = FakeVmApi({"phase": "Pending"})
    runtime = handlers.Runtime(handlers.OperatorConfig(), make_connections(CountingSecrets()), write_status=server)
    reconcile = _handler(handlers.build_registry(runtime), "_changing", "reconcile")
    call = server.kwargs()
    asyncio.run(reconcile(**call))  # no TemporaryError: converged within the call
    assert seen == ["Pending", "CreatingVM", "Starting"]
    assert [h.get("phase") for h in server.history] == ["Pending", "CreatingVM", "Starting", "Provisioned"]
    assert "status" not in call["patch"]  # every step wrote its own status; kopf's patch has none
    assert not runtime.carried

    seen.clear()
    plain = handlers.Runtime(handlers.OperatorConfig(), make_connections(CountingSecrets()))
    reconcile = _handler(handlers.build_registry(plain), "_changing", "reconcile")
    with pytest.raises(kopf.TemporaryError):
        asyncio.run(reconcile(**FakeVmApi({"phase": "Pending"}).kwargs()))
    assert seen == ["Pending"]


def _ready_from_guest(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """An engine that finds the guest's address now: Ready, and waitingSince gone from status.guest."""
    from hyperv_operator import handlers
    from hyperv_operator.provisioning.engine import StepOutcome

    planned_on: list[dict[str, Any]] = []

    async def fake_engine(client: Any, ref: Any, spec: Any, status: Mapping[str, Any], *rest: Any,
                          **options: Any) -> StepOutcome:
        planned_on.append(dict(status))
        guest = {k: v for k, v in (status.get("guest") or {}).items() if k != "waitingSince"}
        return StepOutcome(status={**status, "ready": "True", "guest": {**guest, "ipAddresses": ["10.0.0.5"]}},
                           requeue_after=None, events=(), finished=False)

    monkeypatch.setattr(handlers.engine, "reconcile", fake_engine)
    return planned_on


def test_a_step_planned_on_an_older_status_never_merges_onto_a_newer_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 9: the drift timer's body is kopf's live view, replaced only as kopf works through the VM's
    events, one at a time, once the handler call that wrote them returns: meanwhile the timer sees the
    call's intermediate statuses (here: Provisioned before the guest was read, without
    status.guest.waitingSince, which the call's later step added), and no call is under way to stop it.
    A merge patch planned on it does not null waitingSince, and once merged onto the newer status the
    VM shows Ready=True with waitingSince.
    The write is refused (its resourceVersion moved on and the status is not the one it planned on);
    the next step plans on the server's status and removes it."""
    from hyperv_operator import handlers

    planned_on = _ready_from_guest(monkeypatch)
    older = {"phase": "Provisioned", "ready": "False", "guest": {"heartbeat": "OK"}}
    server = FakeVmApi(older)
    stale = server.kwargs()  # the timer's live body, not yet replaced
    server._apply({"guest": {"waitingSince": "2026-11-26T09:00:00Z"}})  # the handler call's last write
    runtime = handlers.Runtime(handlers.OperatorConfig(), make_connections(CountingSecrets()), write_status=server)
    drift = _handler(handlers.build_registry(runtime), "_spawning", "drift")

    asyncio.run(drift(**stale))
    server.kopf_patch(stale["patch"])  # whatever kopf still has to write when the timer returns
    asyncio.run(drift(**server.kwargs()))  # the next check, on the current body
    server.kopf_patch(stale["patch"])

    mixed = [h for h in server.history if h.get("ready") == "True" and "waitingSince" in (h.get("guest") or {})]
    assert not mixed, mixed
    assert server.status["ready"] == "True" and "waitingSince" not in server.status["guest"]
    assert len(planned_on) == 2


def test_a_move_of_the_metadata_only_does_not_refuse_the_status_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """kopf's annotation writes move the resourceVersion without changing the status: the step's status
    is written over them (one read more), not planned again."""
    from hyperv_operator import handlers

    planned_on = _ready_from_guest(monkeypatch)
    server = FakeVmApi({"phase": "Provisioned", "ready": "False", "guest": {"waitingSince": "x"}})
    call = server.kwargs()
    server.touch()
    runtime = handlers.Runtime(handlers.OperatorConfig(), make_connections(CountingSecrets()), write_status=server)
    drift = _handler(handlers.build_registry(runtime), "_spawning", "drift")
    asyncio.run(drift(**call))
    assert len(planned_on) == 1
    assert server.status == {"phase": "Provisioned", "ready": "True", "guest": {"ipAddresses": ["10.0.0.5"]}}
    assert "status" not in call["patch"]


@pytest.mark.parametrize("news", [{"deletionTimestamp": "2026-11-26T09:00:00Z"}, {"generation": 2},
                                  {"annotations": {"hyperv.example.com/retry": "2"}}],
                         ids=["deleted", "spec-edited", "retry-requested"])
def test_a_carried_handler_call_hands_back_at_once_on_news_of_its_vm(
    monkeypatch: pytest.MonkeyPatch, news: dict[str, Any],
) -> None:
    """Issue 9: kopf sees a deletion or spec edit of a VM only once the handler call for it returns. A
    call going on through waits (up to INLINE_BUDGET_SECONDS) returns as soon as the metadata watch
    tells of it, asking kopf to go on at once (delay 0)."""
    import kopf

    from hyperv_operator import handlers
    from hyperv_operator.provisioning import retry
    from hyperv_operator.provisioning.engine import StepOutcome

    if "annotations" in news:
        news = {"annotations": {retry.RETRY_ANNOTATION: "2"}}
    steps: list[float] = []

    async def fake_engine(client: Any, ref: Any, spec: Any, status: Mapping[str, Any], *rest: Any,
                          **options: Any) -> StepOutcome:
        steps.append(asyncio.get_running_loop().time())
        return StepOutcome(status={**status, "phase": "Merging", "n": len(steps)}, requeue_after=4.0, events=(),
                           finished=False)

    monkeypatch.setattr(handlers.engine, "reconcile", fake_engine)
    server = FakeVmApi({"phase": "Merging"})
    runtime = handlers.Runtime(handlers.OperatorConfig(), make_connections(CountingSecrets()), write_status=server)
    reconcile = _handler(handlers.build_registry(runtime), "_changing", "reconcile")

    async def scenario() -> tuple[float, kopf.TemporaryError]:
        loop = asyncio.get_running_loop()
        runtime.news.observe({**server.metadata, "generation": 0})  # a watch lagging behind: not news
        call = asyncio.create_task(reconcile(**server.kwargs()))
        await asyncio.sleep(0.3)
        assert not call.done()
        told = loop.time()
        runtime.news.observe({**server.metadata, **news})
        try:
            await asyncio.wait_for(call, 3.0)
        except kopf.TemporaryError as exc:
            return loop.time() - told, exc
        raise AssertionError("the call converged")

    took, error = asyncio.run(scenario())
    assert took < 0.5, took
    assert error.delay == 0.0
    assert len(steps) == 1  # no further step on the old spec
    assert not runtime.carried


def test_marks_news_is_only_what_moved_past_the_handlers_body() -> None:
    from hyperv_operator.handlers import Marks

    known = Marks(generation=3, deleting=False, retry="1")
    assert not Marks(3, False, "1").newer_than(known)
    assert not Marks(2, False, "0").newer_than(known)  # the watch lags behind kopf's body
    assert Marks(4, False, "1").newer_than(known)
    assert Marks(3, True, "1").newer_than(known)
    assert Marks(3, False, "2").newer_than(known)


def test_a_vm_in_line_for_a_copy_slot_hands_back_at_once_when_deleted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The same for a call waiting for a copy slot (no API traffic, up to the call's budget)."""
    import kopf

    from hyperv_operator import handlers
    from hyperv_operator.provisioning.engine import StepOutcome

    async def fake_engine(client: Any, ref: Any, spec: Any, status: Mapping[str, Any], *rest: Any,
                          **options: Any) -> StepOutcome:
        return StepOutcome(status={**status, "phase": "Copying", "copy": {"queued": True}}, requeue_after=10.0,
                           events=(), finished=False)

    class InLine:
        def waiting(self, uid: str) -> bool:
            return True

        async def wait_for_slot(self, uid: str, timeout: float) -> bool:
            await asyncio.sleep(timeout)
            return False

    monkeypatch.setattr(handlers.engine, "reconcile", fake_engine)
    server = FakeVmApi({"phase": "Copying"})
    runtime = handlers.Runtime(handlers.OperatorConfig(), make_connections(CountingSecrets()), write_status=server,
                               slots=InLine())  # type: ignore[arg-type]
    reconcile = _handler(handlers.build_registry(runtime), "_changing", "reconcile")

    async def scenario() -> float:
        loop = asyncio.get_running_loop()
        call = asyncio.create_task(reconcile(**server.kwargs()))
        await asyncio.sleep(0.3)
        told = loop.time()
        runtime.news.observe({**server.metadata, "deletionTimestamp": "2026-11-26T09:00:00Z"})
        with pytest.raises(kopf.TemporaryError):
            await asyncio.wait_for(call, 3.0)
        return loop.time() - told

    assert asyncio.run(scenario()) < 0.5
    assert server.status["copy"] == {"queued": True}


def test_a_steps_events_are_posted_once_its_status_is_written(monkeypatch: pytest.MonkeyPatch) -> None:
    """The status is what users and tools wait on (Running, Ready); the step's Events only tell about
    it: they are posted after the status write, not beside it."""
    import kopf

    from hyperv_operator import handlers
    from hyperv_operator.provisioning.engine import StepOutcome

    server = FakeVmApi({"phase": "Starting"})
    order: list[str] = []

    async def fake_engine(client: Any, ref: Any, spec: Any, status: Mapping[str, Any], *rest: Any,
                          **options: Any) -> StepOutcome:
        return StepOutcome(status={**status, "phase": "Provisioned", "powerState": "Running"}, requeue_after=None,
                           events=(Event("Normal", "PhaseChanged", "Quick: Starting -> Provisioned (VM 1)"),))

    monkeypatch.setattr(handlers.engine, "reconcile", fake_engine)
    monkeypatch.setattr(kopf, "event", lambda *a, **k: order.append(f"event after {len(server.history)} statuses"))
    runtime = handlers.Runtime(handlers.OperatorConfig(), make_connections(CountingSecrets()), write_status=server)
    reconcile = _handler(handlers.build_registry(runtime), "_changing", "reconcile")
    asyncio.run(reconcile(**server.kwargs()))
    assert server.status["phase"] == "Provisioned"
    assert order == [f"event after {len(server.history)} statuses"] and len(server.history) == 2
