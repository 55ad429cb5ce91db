"""What the operator needs from a Hyper-V host: run statements, get objects back or a HostError."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hyperv_operator.hyperv.commands import HostObject, Statement


class HyperVClient(Protocol):
    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        """Run the statements in one pipeline (one round trip), in order, and return all output.

        Every command runs with `-ErrorAction Stop`, so a non-terminating error ends the batch; a
        statement-terminating error does not on Windows (the next statement still runs), so callers
        never batch a statement behind one whose failure must stop it (`provisioning.effects.SAFETY_CRITICAL`).
        An error raises a `HostError` subclass (see `hyperv_operator.hyperv.errors.classify`).
        """
        ...

    async def close(self) -> None: ...
