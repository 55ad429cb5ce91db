"""A HyperVClient that calls a SimulatedHost in this process (tests, the demo without WinRM)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import HostUnreachableError, classify
from hyperv_operator.simulator.errors import CmdletError
from hyperv_operator.simulator.host import SimulatedHost


class InProcessClient:
    """Implements `hyperv.client.HyperVClient` over a `SimulatedHost` (one thread per call)."""

    def __init__(self, host: SimulatedHost) -> None:
        self.host = host
        self._closed = False

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        if self._closed:
            raise HostUnreachableError("The in-process client is closed.")
        batch = list(statements)
        try:
            return await asyncio.to_thread(self.host.execute, batch)
        except CmdletError as err:
            command = getattr(err, "command", "") or "; ".join(str(s) for s in batch)
            raise classify(err.message, fq_error_id=err.fq_error_id, category=err.category, target=err.target,
                           exception_type=err.exception_type, command=command) from err

    async def close(self) -> None:
        self._closed = True
