"""Active/standby replicas: the `run` flags and the graceful hand-over's drain (no I/O)."""

from __future__ import annotations

import asyncio

from hyperv_operator.cli import _priority, build_parser
from hyperv_operator.draining import Drain, stop_after_drain


def test_run_peers_by_default_and_standalone_is_opt_in() -> None:
    args = build_parser().parse_args(["run"])
    assert (args.standalone, args.peering, args.priority, args.peering_lifetime) == (
        False, "hyperv-operator", None, 60)
    assert build_parser().parse_args(["run", "--standalone"]).standalone is True


def test_default_priority_makes_the_older_replica_win() -> None:
    args = build_parser().parse_args(["run"])
    older = _priority(args)
    asyncio.run(asyncio.sleep(0.01))
    newer = _priority(args)
    assert older > newer, "a replica started later must have a lower priority (it stands by)"
    # An explicit priority (kopf's --dev is 666) outranks every default one.
    assert _priority(build_parser().parse_args(["run", "--priority", "0"])) == 0 > older


def test_drain_waits_for_work_in_flight_and_parks_new_work() -> None:
    async def scenario() -> list[str]:
        drain, stop, seen = Drain(), asyncio.Event(), []
        release = asyncio.Event()

        async def in_flight() -> None:
            async with drain.working():
                seen.append("started")
                await release.wait()
                seen.append("finished")

        async def late() -> None:
            async with drain.working():
                seen.append("late work ran")  # must never happen once draining

        first = asyncio.create_task(in_flight())
        await asyncio.sleep(0)
        stopping = asyncio.create_task(stop_after_drain(drain, stop, timeout=5))
        await asyncio.sleep(0.01)
        parked = asyncio.create_task(late())
        await asyncio.sleep(0.01)
        assert not stop.is_set(), "kopf must not stop (and leave the peering) while host work runs"
        release.set()
        await asyncio.wait_for(stop.wait(), 1)
        await first
        await stopping
        assert not parked.done()
        parked.cancel()
        return seen

    assert asyncio.run(scenario()) == ["started", "finished"]


def test_drain_gives_up_after_its_timeout() -> None:
    async def scenario() -> bool:
        drain = Drain()
        hold = asyncio.Event()

        async def stuck() -> None:
            async with drain.working():
                await hold.wait()

        task = asyncio.create_task(stuck())
        await asyncio.sleep(0)
        drained = await drain.drain(timeout=0.05)
        task.cancel()
        return drained

    assert asyncio.run(scenario()) is False


def test_a_missing_peering_kind_or_object_is_reported() -> None:
    from hyperv_operator.cli import peering_problem

    assert peering_problem("hyperv-operator", ["hyperv-operator", "other"]) is None
    assert "not installed" in (peering_problem("hyperv-operator", None) or "")
    assert "'hyperv-operator' does not exist" in (peering_problem("hyperv-operator", ["other"]) or "")
