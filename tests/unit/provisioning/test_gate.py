"""Depth before breadth: bounded runs per host, VMs under way before new ones, FIFO within each."""

from __future__ import annotations

import asyncio

from hyperv_operator.provisioning.gate import HostGate


def test_started_vms_go_before_new_ones_in_arrival_order() -> None:
    async def go() -> list[str]:
        gate = HostGate(limit=1)
        order: list[str] = []
        release = asyncio.Event()

        async def holder() -> None:
            async with gate.turn("h", started=False):
                order.append("first")
                await release.wait()

        async def run(name: str, started: bool) -> None:
            async with gate.turn("h", started=started):
                order.append(name)
                await asyncio.sleep(0)

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        tasks = []
        for name, started in (("new-1", False), ("old-1", True), ("new-2", False), ("old-2", True)):
            tasks.append(asyncio.create_task(run(name, started)))
            await asyncio.sleep(0)
        assert gate.waiting("h") == 4
        release.set()
        await asyncio.gather(first, *tasks)
        assert gate.waiting("h") == 0
        return order

    assert asyncio.run(go()) == ["first", "old-1", "old-2", "new-1", "new-2"]


def test_limit_per_host_and_hosts_independent() -> None:
    async def go() -> tuple[int, int]:
        gate = HostGate(limit=2)
        active = {"a": 0, "b": 0}
        peak = {"a": 0, "b": 0}

        async def run(host: str) -> None:
            async with gate.turn(host, started=False):
                active[host] += 1
                peak[host] = max(peak[host], active[host])
                await asyncio.sleep(0.001)
                active[host] -= 1

        await asyncio.gather(*(run(h) for h in ("a", "b") * 6))
        return peak["a"], peak["b"]

    assert asyncio.run(go()) == (2, 2)


def test_a_cancelled_waiter_does_not_leak_a_place() -> None:
    async def go() -> int:
        gate = HostGate(limit=1)
        release = asyncio.Event()

        async def holder() -> None:
            async with gate.turn("h", started=False):
                await release.wait()

        async def waiter() -> None:
            async with gate.turn("h", started=True):
                pass

        first = asyncio.create_task(holder())
        await asyncio.sleep(0)
        second = asyncio.create_task(waiter())
        await asyncio.sleep(0)
        second.cancel()
        release.set()
        await first
        await asyncio.gather(second, return_exceptions=True)
        async with gate.turn("h", started=False):  # a place is free again
            pass
        return gate.waiting("h")

    assert asyncio.run(go()) == 0
