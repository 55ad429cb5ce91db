"""A client closed under a step (the operator stopping, or the client replaced after an edit) is never
reported as a VM failure: the step's status is the status before it, with no event."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest
from tests.unit.provisioning.test_engine_simulator import HOST, World, provision, ref, spec

from hyperv_operator.handlers import Shutdown
from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import ClientClosedError
from hyperv_operator.provisioning.engine import reconcile


class ClosesAfter:
    """Passes `calls` round trips to the host, then behaves as a closed WinRM client."""

    def __init__(self, inner: Any, calls: int) -> None:
        self.inner = inner
        self.calls = calls

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        if self.calls <= 0:
            raise ClientClosedError("the WinRM client for https://hv1:5986/wsman is closed")
        self.calls -= 1
        result: list[HostObject] = await self.inner.run(statements)
        return result

    async def close(self) -> None:
        return None


@pytest.mark.parametrize("calls", [0])
def test_drift_check_on_a_closed_client_writes_nothing(calls: int) -> None:
    world = World()
    vm = ref(f"cc-drift-{calls}")
    s = spec("Differencing")
    status = asyncio.run(provision(world, vm, s))
    assert status["phase"] == "Provisioned"
    closed = ClosesAfter(world.client, calls)
    outcome = asyncio.run(reconcile(closed, vm, s, status, HOST, "hv1", world.slots, world.now))  # type: ignore[arg-type]
    written = {k: v for k, v in outcome.status.items() if v is not None}
    assert written == status
    assert outcome.events == ()


@pytest.mark.parametrize("calls", [0, 1])
def test_provisioning_on_a_closed_client_neither_fails_nor_reports(calls: int) -> None:
    world = World()
    vm = ref(f"cc-new-{calls}")
    s = spec("Copy")
    closed = ClosesAfter(world.client, calls)
    outcome = asyncio.run(reconcile(closed, vm, s, {}, HOST, "hv1", world.slots, world.now))  # type: ignore[arg-type]
    status = {k: v for k, v in outcome.status.items() if v is not None}
    assert status.get("phase") != "Failed"
    assert "lastError" not in status and "closed" not in str(status.get("message"))
    assert all("closed" not in e.message for e in outcome.events)
    assert outcome.requeue_after is not None  # retried (with the next client)


def test_shutdown_waits_for_running_steps_up_to_its_grace() -> None:
    async def go() -> tuple[bool, bool, list[str]]:
        shutdown = Shutdown()
        order: list[str] = []

        async def step(seconds: float) -> None:
            with shutdown.running():
                await asyncio.sleep(seconds)
                order.append(f"step {seconds}")

        quick = asyncio.create_task(step(0.05))
        await asyncio.sleep(0)
        drained = await shutdown.drain(1.0)
        order.append("closed")
        slow = asyncio.create_task(step(5.0))
        await asyncio.sleep(0)
        bounded = await shutdown.drain(0.05)
        slow.cancel()
        await quick
        return drained, bounded, order

    drained, bounded, order = asyncio.run(go())
    assert drained and order[:2] == ["step 0.05", "closed"]
    assert not bounded  # a step that will not end does not hold the stop forever
