"""Graceful hand-over to the standby replica: finish host work before leaving the peering.

On SIGTERM kopf removes this replica's keep-alive from the peering object at once, as it starts to
shut down, and the standby resumes within milliseconds, while this replica's handlers may still be
in the middle of a WinRM call. Two replicas acting on one VM at the same moment is what peering is
there to prevent (both could observe "no VM yet" and both create one). So the operator takes SIGTERM
itself: it stops starting host work, waits for the host work in flight to finish (bounded), and only
then lets kopf stop (and say goodbye to the peering).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

log = logging.getLogger(__name__)


class Drain:
    def __init__(self) -> None:
        self.draining = False
        self._in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def in_flight(self) -> int:
        return self._in_flight

    @asynccontextmanager
    async def working(self) -> AsyncIterator[None]:
        """Around every handler body that talks to a host. Once draining, a new one never starts: it
        waits here until kopf cancels it at exit (no host I/O, no status written: the next replica
        runs that step from the same state)."""
        if self.draining:
            await asyncio.Event().wait()
        self._in_flight += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Stop new host work and wait for the work in flight; False if `timeout` passed first."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


async def stop_after_drain(drain: Drain, stop: asyncio.Event, timeout: float) -> None:
    """SIGTERM's handler when peering: drain, then set kopf's stop flag."""
    log.info("stopping: no new host work; waiting for %d step(s) in flight (at most %.0f s)", drain.in_flight, timeout)
    if await drain.drain(timeout):
        log.info("stopping: no host work in flight; leaving the peering")
    else:
        log.warning("stopping: %d step(s) still in flight after %.0f s; leaving anyway", drain.in_flight, timeout)
    stop.set()
