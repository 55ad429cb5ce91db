"""Depth before breadth: bounded runs per host, VMs under way before new ones, FIFO within each."""

from __future__ import annotations

import asyncio

from hyperv_operator.provisioning.gate import HostGate, under_way


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


def test_settled_vms_drift_checks_do_not_go_before_new_vms() -> None:
    assert under_way({"phase": "CreatingVM", "vmId": "x"}, deleting=False)
    assert under_way({"phase": "Copying", "createdFiles": ["a"]}, deleting=False)
    assert under_way({"phase": "Provisioned", "vmId": "x"}, deleting=True)
    assert not under_way({"phase": "Provisioned", "vmId": "x"}, deleting=False)
    assert not under_way({"phase": "Failed", "createdFiles": ["a"]}, deleting=False)
    assert not under_way({}, deleting=False)


def test_an_endless_stream_of_drift_checks_does_not_starve_a_new_vm() -> None:
    async def go() -> int:
        gate = HostGate(limit=1)
        stop = asyncio.Event()
        done = asyncio.Event()
        checks = 0

        async def drift() -> None:
            nonlocal checks
            while not stop.is_set():
                async with gate.turn("h", started=under_way({"phase": "Provisioned", "vmId": "x"},
                                                            deleting=False)):
                    checks += 1
                    await asyncio.sleep(0)

        async def new_vm() -> None:
            async with gate.turn("h", started=under_way({}, deleting=False)):
                done.set()

        drifts = [asyncio.create_task(drift()) for _ in range(4)]
        await asyncio.sleep(0.01)
        before = checks
        await asyncio.wait_for(asyncio.create_task(new_vm()), timeout=2)
        stop.set()
        await asyncio.gather(*drifts)
        return checks - before

    assert asyncio.run(go()) < 50


def test_runs_per_host_follow_the_hosts_connection_setting() -> None:
    """The gate lets as many runs at a host as it has WinRM connections (`maxConnections`), per host."""

    async def go() -> dict[str, int]:
        gate = HostGate()  # the default (4) is not what is used when the host says otherwise
        active = {"wide": 0, "narrow": 0}
        peak = {"wide": 0, "narrow": 0}

        async def run(host: str, limit: int) -> None:
            async with gate.turn(host, started=False, limit=limit):
                active[host] += 1
                peak[host] = max(peak[host], active[host])
                await asyncio.sleep(0.001)
                active[host] -= 1

        await asyncio.gather(*(run("wide", 8) for _ in range(20)), *(run("narrow", 1) for _ in range(5)))
        return peak

    assert asyncio.run(go()) == {"wide": 8, "narrow": 1}
