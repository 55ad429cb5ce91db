"""Transient errors retry on a growing, jittered, capped delay shown in status; a deletion whose host
stays unreachable is Stalled with the reason and the way out."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from tests.unit.provisioning.test_engine_simulator import HOST, World, merged, provision, ref, spec

from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import HostUnreachableError
from hyperv_operator.provisioning import retry
from hyperv_operator.provisioning.engine import finalize, reconcile


def test_backoff_grows_to_its_cap_with_jitter() -> None:
    delays = [retry.backoff(n, "vm-a") for n in range(1, 12)]
    for n, d in enumerate(delays, start=1):
        ceiling = min(retry.MAX_DELAY, retry.BASE_DELAY * 2 ** (n - 1))
        assert ceiling / 2 <= d <= ceiling
    assert delays[-1] <= retry.MAX_DELAY and delays[5] > delays[0] * 8
    # VMs failing together are spread apart
    assert len({retry.backoff(4, f"vm-{i}") for i in range(20)}) > 15


class Unreachable:
    def __init__(self) -> None:
        self.calls = 0

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        self.calls += 1
        raise HostUnreachableError("connection refused by 10.0.0.5:5986")

    async def close(self) -> None:
        return None


def test_transient_failures_count_attempts_and_clear_on_success() -> None:
    world = World()
    vm = ref("retry-count")
    s = spec("Differencing")
    down = Unreachable()
    status: dict[str, Any] = {}
    delays = []
    for _ in range(5):
        outcome = asyncio.run(reconcile(down, vm, s, status, HOST, "hv1", world.slots, world.now))  # type: ignore[arg-type]
        status = merged(status, outcome)
        assert outcome.requeue_after is not None
        delays.append(outcome.requeue_after)
        world.now += timedelta(seconds=outcome.requeue_after)
    assert status["retry"]["attempts"] == 5 and status["retry"]["nextRetryAt"]
    assert delays == sorted(delays) and delays[-1] > delays[0]
    assert f"retrying in {delays[-1]:g}s" in status["message"]
    final = asyncio.run(provision(world, vm, s, status))
    assert final["phase"] == "Provisioned" and "retry" not in final


def test_delete_on_an_unreachable_host_stalls_with_the_reason_and_the_way_out() -> None:
    world = World()
    vm = ref("retry-delete")
    s = spec("Differencing")
    status = asyncio.run(provision(world, vm, s))
    down = Unreachable()
    stalled_events = []
    for _ in range(40):
        outcome = asyncio.run(finalize(down, vm, s, status, HOST, "hv1", world.slots, world.now))  # type: ignore[arg-type]
        status = merged(status, outcome)
        assert not outcome.finished and outcome.requeue_after is not None
        stalled_events += [e for e in outcome.events if e.reason == "DeleteStalled"]
        world.now += timedelta(seconds=outcome.requeue_after)
        if retry.failing_for(status["retry"], world.now) > retry.DELETE_STALL_AFTER + 600:
            break
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "DeleteHostUnreachable")
    assert retry.ABANDON_ANNOTATION in status["message"] and "connection refused" in status["message"]
    assert len(stalled_events) == 1  # said once, not at every retry
    assert status["phase"] == "Deleting"


def test_a_deletion_that_cannot_reach_its_host_is_deleting_from_its_first_attempt() -> None:
    """The phase said Provisioned (Ready=True) while the message said Deleting: the deletion had begun
    but its first observation failed, and only a plan of the deletion set the phase."""
    world = World()
    vm = ref("retry-delete-phase")
    s = spec("Differencing")
    status = asyncio.run(provision(world, vm, s))
    assert status["phase"] == "Provisioned"
    outcome = asyncio.run(finalize(Unreachable(), vm, s, status, HOST, "hv1", world.slots, world.now))  # type: ignore[arg-type]
    status = merged(status, outcome)
    assert status["phase"] == "Deleting"
    assert status["message"].startswith("Deleting: ") and "connection refused" in status["message"]
    ready = next(c for c in status["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "Deleting")
    assert [e.reason for e in outcome.events] == ["PhaseChanged", "HostUnreachable"]


def _run_until(world: World, vm: Any, s: Any, status: dict[str, Any], done: Any, steps: int = 400) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        current = status
        for _ in range(steps):
            outcome = await reconcile(world.client, vm, s, current, HOST, "hv1", world.slots, world.now)
            current = merged(current, outcome)
            if done(current) or outcome.requeue_after is None:
                return current
            await world.wait(max(outcome.requeue_after, 0.05))
        raise AssertionError(f"not reached: {current.get('phase')} {current.get('message')}")

    return asyncio.run(go())


def test_a_disk_full_copy_is_copied_again_once_space_is_freed() -> None:
    world = World()
    vm = ref("retry-diskfull")
    s = spec("Copy")
    world.host.set_free_bytes(10 * 1024 * 1024)  # less than the 64 MiB base
    status = _run_until(world, vm, s, {}, lambda st: (st.get("copy") or {}).get("failures"))
    assert status["phase"] == "Copying" and "attempt 1 of" in status["message"]
    world.host.set_free_bytes(10 * 1024**3)
    final = asyncio.run(provision(world, vm, s, status))
    assert final["phase"] == "Provisioned"
    assert not any(f.endswith((".partial", ".copy.json")) for f in world.files())


def test_a_copy_that_keeps_failing_ends_failed_and_the_annotation_retries_it() -> None:
    world = World()
    vm = ref("retry-giveup")
    s = spec("Copy")
    world.host.set_free_bytes(10 * 1024 * 1024)
    status = _run_until(world, vm, s, {}, lambda st: st.get("phase") == "Failed", steps=2000)
    assert status["copy"]["failures"] == retry.COPY_ATTEMPTS
    assert "disk" in status["lastError"].lower() and retry.RETRY_ANNOTATION in status["message"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "CopyFailed")
    world.host.set_free_bytes(10 * 1024**3)
    again = retry.requested(status, "1", "Copying")
    assert again is not None and again["phase"] == "Copying" and retry.requested(again, "1", "Copying") is None
    final = asyncio.run(provision(world, vm, s, again))
    assert final["phase"] == "Provisioned" and final["retryRequest"] == "1"
