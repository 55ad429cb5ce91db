"""Depth before breadth: at most `limit` engine runs per host at once; a VM that has started goes
before VMs that have not, first come first served within each group.

Without this, 100 VMs on a host each do their first step, then each their second, ...: the first VM
is Running only once the whole fleet has done its earlier phases. With it, a run that started a VM
takes it as far as the host allows (engine.run_step), and VMs already under way are served before
new ones begin, so VMs finish in arrival order at the host's pace. Waiting costs no API traffic:
the handler simply awaits its turn.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from hyperv_operator.provisioning.phases import Phase

DEFAULT_RUNS_PER_HOST = 4
"""When the caller does not say: the HyperVHost's default `maxConnections`."""


@dataclass
class _HostQueue:
    limit: int
    active: int = 0
    started: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)
    new: collections.deque[asyncio.Future[None]] = field(default_factory=collections.deque)


class HostGate:
    def __init__(self, limit: int = DEFAULT_RUNS_PER_HOST) -> None:
        self.limit = max(1, limit)
        self._hosts: dict[str, _HostQueue] = {}

    def waiting(self, host_key: str) -> int:
        q = self._hosts.get(host_key)
        return 0 if q is None else len(q.started) + len(q.new)

    @asynccontextmanager
    async def turn(self, host_key: str, *, started: bool, limit: int | None = None) -> AsyncIterator[None]:
        """`limit`: runs at once on this host, normally its WinRM connections (`maxConnections`): a
        run holds at most one connection at a time, so more runs than connections would only queue
        inside the client, fewer would leave connections idle."""
        q = self._hosts.setdefault(host_key, _HostQueue(self.limit))
        if limit is not None:
            q.limit = max(1, limit)  # the host's setting as of this run (an edit applies from now on)
        if q.active < q.limit and not q.started and not q.new:
            q.active += 1
        else:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            (q.started if started else q.new).append(waiter)
            try:
                await waiter  # the releasing run handed its place over (active unchanged)
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._release(host_key, q)  # we were handed a place we will not use
                else:
                    queue = q.started if started else q.new
                    if waiter in queue:  # else _release already dropped it
                        queue.remove(waiter)
                raise
        try:
            yield
        finally:
            self._release(host_key, q)

    def _release(self, host_key: str, q: _HostQueue) -> None:
        if q.active > q.limit:  # the limit was lowered: this place is not handed over
            q.active -= 1
            return
        for queue in (q.started, q.new):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    return
        q.active -= 1
        if q.active == 0:
            self._hosts.pop(host_key, None)  # the table does not grow with hosts ever seen


def under_way(status: Mapping[str, Any], *, deleting: bool) -> bool:
    """Goes before new VMs: a VM being provisioned that has created something, or being deleted.
    A settled VM (Provisioned, Failed) checked for drift waits its turn with the new ones, first come
    first served: otherwise a fleet's periodic drift checks would starve every new VM."""
    if deleting:
        return True
    settled = status.get("phase") in (Phase.PROVISIONED.value, Phase.FAILED.value)
    return not settled and bool(status.get("vmId") or status.get("createdFiles"))
