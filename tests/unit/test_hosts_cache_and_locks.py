"""Host connections and handler glue: Secret reads counted, the cache kept current by watch events,
a client replaced on a Secret edit, the per-VM lock table shrinking, probes that always round-trip."""

from __future__ import annotations

import asyncio
import base64
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from hyperv_operator.api import HyperVHostSpec
from hyperv_operator.handlers import VmLocks
from hyperv_operator.hosts import HostConnections, HostCredentials
from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import HostUnreachableError
from hyperv_operator.hyperv.probe import HostProbe, probe_client
from hyperv_operator.simulator.host import SimulatedHost
from hyperv_operator.simulator.inprocess import InProcessClient


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


class CountingSecrets:
    """Stands in for the API server's Secrets; counts GETs like the audit log would."""

    def __init__(self) -> None:
        self.store: dict[tuple[str, str], dict[str, str]] = {
            ("ns", "creds"): {"username": b64("u"), "password": b64("p1")},
            ("ns", "ca"): {"ca.crt": b64("-----BEGIN CERTIFICATE-----")},
        }
        self.gets: list[tuple[str, str]] = []
        self.gate: threading.Event | None = None

    def read(self, namespace: str, name: str) -> Mapping[str, str] | None:
        self.gets.append((namespace, name))
        if self.gate is not None:
            self.gate.wait(5)
        data = self.store.get((namespace, name))
        return dict(data) if data is not None else None


class FakeClient:
    def __init__(self, credentials: HostCredentials) -> None:
        self.credentials = credentials
        self.closed = False

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        return []

    async def close(self) -> None:
        self.closed = True


SPEC = HyperVHostSpec.from_dict(
    {"address": "hv01", "defaultVmPath": "C:\\VMs", "auth": "basic",
     "credentialsSecretRef": {"name": "creds"}, "caBundleSecretRef": {"name": "ca"}}
)


def make_connections(secrets: CountingSecrets) -> HostConnections:
    return HostConnections(lambda spec, creds, folder: FakeClient(creds), secrets.read)


def test_secrets_are_read_once_then_served_from_the_cache() -> None:
    secrets = CountingSecrets()
    connections = make_connections(secrets)

    async def scenario() -> set[int]:
        clients = [await connections.client_for("ns", "hv01", SPEC) for _ in range(50)]
        return {id(c) for c in clients}

    assert len(asyncio.run(scenario())) == 1
    assert sorted(secrets.gets) == [("ns", "ca"), ("ns", "creds")]  # 2 GETs for 50 steps, not 100


def test_a_secret_edit_replaces_the_client_without_another_get() -> None:
    secrets = CountingSecrets()
    connections = make_connections(secrets)

    async def scenario() -> tuple[Any, Any]:
        first = await connections.client_for("ns", "hv01", SPEC)
        # The watch delivers the edit (and an unrelated Secret, which is not kept).
        assert connections.secrets.observe("ns", "creds", {"username": b64("u"), "password": b64("p2")})
        assert not connections.secrets.observe("ns", "unrelated", {"x": b64("y")})
        second = await connections.client_for("ns", "hv01", SPEC)
        return first, second

    first, second = asyncio.run(scenario())
    assert first is not second and first.closed and not second.closed
    assert second.credentials.password == "p2"
    assert len(secrets.gets) == 2
    assert len(connections.secrets) == 2  # the unrelated Secret is not cached


def test_a_deleted_secret_is_seen_through_the_watch() -> None:
    secrets = CountingSecrets()
    connections = make_connections(secrets)

    async def scenario() -> str:
        await connections.client_for("ns", "hv01", SPEC)
        connections.secrets.observe("ns", "creds", None)
        try:
            await connections.client_for("ns", "hv01", SPEC)
        except Exception as exc:
            return str(exc)
        return "no error"

    assert "credentials Secret ns/creds not found" in asyncio.run(scenario())
    assert len(secrets.gets) == 2


def test_an_edit_during_the_first_read_is_not_overwritten_by_the_older_answer() -> None:
    secrets = CountingSecrets()
    secrets.gate = threading.Event()
    connections = make_connections(secrets)

    async def scenario() -> Mapping[str, str] | None:
        read = asyncio.create_task(connections.secrets.get("ns", "creds"))
        while not secrets.gets:
            await asyncio.sleep(0.01)
        connections.secrets.observe("ns", "creds", {"username": b64("u"), "password": b64("p3")})
        secrets.gate.set()  # type: ignore[union-attr]
        await read
        secrets.gate = None
        secrets.store[("ns", "creds")]["password"] = b64("p3")
        return await connections.secrets.get("ns", "creds")

    data = asyncio.run(scenario())
    assert data is not None and data["password"] == b64("p3")
    assert len(secrets.gets) == 2  # the racing read was not cached: read again once


def test_vm_lock_table_shrinks_and_a_waiter_learns_it_is_stale() -> None:
    locks = VmLocks()
    seen: list[bool] = []

    async def scenario() -> None:
        async with locks.held("uid-1") as first:
            seen.append(first.stale)
            waiter = asyncio.create_task(hold_once())
            await asyncio.sleep(0.01)
            assert len(locks) == 1
        await waiter
        for i in range(100):
            async with locks.held(f"uid-{i}"):
                pass

    async def hold_once() -> None:
        async with locks.held("uid-1") as second:
            seen.append(second.stale)

    asyncio.run(scenario())
    assert seen == [False, True]  # the drift timer that waited behind a step skips its stale view
    assert len(locks) == 0  # 101 VMs later, no lock is left behind


class NoProbeClient:
    """A HyperVClient with run() only (the protocol): no `probe` attribute."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        self.calls += 1
        result: list[HostObject] = await self.inner.run(statements)
        return result

    async def close(self) -> None:
        pass


def test_a_client_without_probe_is_probed_through_run() -> None:
    host = SimulatedHost()
    client = NoProbeClient(InProcessClient(host))
    probe = asyncio.run(probe_client(client, "hv01"))
    assert isinstance(probe, HostProbe) and client.calls >= 1
    assert probe.host_name  # facts came from the host, not a default


def test_an_unreachable_client_without_probe_is_not_reported_reachable() -> None:
    class Down(NoProbeClient):
        async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
            raise HostUnreachableError("connection refused at hv01:5986")

    with pytest.raises(HostUnreachableError):
        asyncio.run(probe_client(Down(None), "hv01"))


def _handler(registry: Any, kind: str, handler_id: str) -> Any:
    handlers = getattr(registry, kind)._handlers
    return next(h.fn for h in handlers if h.id == handler_id)


def test_drift_timer_that_waited_behind_a_step_does_not_act_on_its_stale_view(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The drift timer's spec/status were captured before it waited for the VM's lock; a reconcile
    step held the lock and changed the VM meanwhile. The timer must not run the engine on the old view."""
    import kopf

    from hyperv_operator import handlers
    from hyperv_operator.provisioning.engine import StepOutcome

    seen: list[str] = []

    async def fake_engine(client: Any, ref: Any, spec: Any, status: Mapping[str, Any], *rest: Any,
                          **options: Any) -> StepOutcome:
        seen.append(str(status.get("phase")))
        await asyncio.sleep(0.2)
        return StepOutcome(status={**status, "phase": "Provisioned"}, requeue_after=None, events=(), finished=False)

    monkeypatch.setattr(handlers.engine, "reconcile", fake_engine)
    secrets = CountingSecrets()
    runtime = handlers.Runtime(handlers.OperatorConfig(), make_connections(secrets))
    registry = handlers.build_registry(runtime)
    reconcile = _handler(registry, "_changing", "reconcile")
    drift = _handler(registry, "_spawning", "drift")
    host_spec = {"address": "hv01", "defaultVmPath": "C:\\VMs", "auth": "basic",
                 "credentialsSecretRef": {"name": "creds"}, "caBundleSecretRef": {"name": "ca"},
                 "storage": {"baseRoots": ["\\\\FS\\S"], "vmRoots": ["C:\\VMs"]}}
    vm_spec = {"hostRef": {"name": "hv01"}, "baseVhd": "\\\\FS\\S\\B.VHDX", "strategy": "Differencing",
               "memory": "1Gi", "cpus": 2}

    def kwargs(phase: str) -> dict[str, Any]:
        raw = {"metadata": {"namespace": "ns", "name": "vm1", "uid": "u1", "generation": 1},
               "spec": vm_spec, "status": {"phase": phase}}
        body = kopf.Body(raw)
        return {"body": body, "meta": body.metadata, "spec": body.spec, "status": body.status,
                "patch": kopf.Patch(), "hosts_by_name": {("ns", "hv01"): [host_spec]}}

    async def scenario() -> None:
        step = asyncio.create_task(reconcile(**kwargs("Starting")))
        await asyncio.sleep(0.05)  # the step holds the VM's lock now
        await drift(**kwargs("Failed"))  # the timer's view: captured before the step's patch landed
        await step

    asyncio.run(scenario())
    assert seen == ["Starting"], seen  # only the step ran the engine
    assert len(runtime.locks) == 0
