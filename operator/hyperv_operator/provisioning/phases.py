"""The phase tables: every strategy's phases in order, and what each phase does on the host.

The phases in order per strategy, what each does and when it is done, are the rows of
`planner.PHASE_TABLES` (planner/table.py; each row carries the function that plans it, the Independent
condition while in it and the time it records when done). Each run of `engine.reconcile`
observes the host, skips every phase whose result the host already shows ("done when"), and issues
the command of the first phase that is not done; while the effect of a command is known, it goes on
to the next phase in the same run. `status.phase` is the phase whose command was
issued last (or that is being waited for). A crash after any command therefore converges: the next
call sees the command's effect and moves on without repeating it.

Differencing:  Pending -> CreatingDisk -> CreatingVM -> Starting -> Provisioned
Copy:          Pending -> Copying -> CreatingVM -> Starting -> Provisioned
Quick:         Pending -> CreatingVM -> Checkpointing -> Starting -> CopyingBase -> Reparenting
                       -> Merging -> Provisioned
Any strategy:  -> Failed (Stalled=True, terminal; a missing base is re-checked while nothing exists)
Delete:        -> Deleting (finalize) -> finalizer removed
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any


class Phase(enum.StrEnum):
    PENDING = "Pending"
    CREATING_DISK = "CreatingDisk"
    COPYING = "Copying"
    CREATING_VM = "CreatingVM"
    CHECKPOINTING = "Checkpointing"
    STARTING = "Starting"
    COPYING_BASE = "CopyingBase"
    REPARENTING = "Reparenting"
    MERGING = "Merging"
    PROVISIONED = "Provisioned"
    FAILED = "Failed"
    DELETING = "Deleting"


@dataclass(frozen=True)
class Independence:
    """The Independent condition while a VM is in a phase: does its disk still need the base?"""

    independent: bool
    reason: str
    message: str


@dataclass(frozen=True)
class Milestone:
    """A time recorded once in status.timings: `at` (when, ms precision) and, with `seconds`, how
    long after createdAt."""

    at: str
    seconds: str | None = None


@dataclass(frozen=True)
class Step:
    """One row of a strategy's phase table (the tables are `planner.PHASE_TABLES`, next to the
    functions they run): `plan` looks at the observation and returns done / an action / a wait / a
    failure; `does` and `done_when` say the same in words."""

    phase: Phase
    plan: Callable[[Any], Any]
    does: str
    done_when: str
    watches_vm: bool = True
    """Run the shared prologue first: a VM recorded in the status but gone from the host fails the
    resource (never re-created); a VM found on the host is adopted (vmId, its .avhdx)."""
    independent: Independence = field(kw_only=True)
    """The Independent condition while the VM is in this phase."""
    reached: Milestone | None = field(default=None, kw_only=True)
    """Recorded the first time this row reports done (later runs change nothing)."""


COPY_PHASES = frozenset({Phase.COPYING, Phase.COPYING_BASE})


def runs_on_checkpoint(rows: Iterable[Step]) -> bool:
    """The VM is made on the base and runs on a checkpoint beside it until its copy is merged (the
    table has a Checkpointing phase: Quick)."""
    return any(step.phase is Phase.CHECKPOINTING for step in rows)


def copies_base(rows: Iterable[Step]) -> bool:
    """The VM's own disk is a full copy of the base (the table has a copy phase: Copy, Quick), not a
    differencing child of it."""
    return any(step.phase in COPY_PHASES for step in rows)
