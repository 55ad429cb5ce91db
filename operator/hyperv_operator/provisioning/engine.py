"""The provisioning engine: one reconcile step per call (observe -> plan -> act).

`handlers.py` (kopf glue) calls `reconcile` / `finalize`, writes `StepOutcome.status`, posts the events
and calls again after `requeue_after` seconds. Decisions live in the pure `planner`; this module only
does I/O around it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from hyperv_operator.api import HyperVHostSpec, VirtualMachineSpec
from hyperv_operator.hyperv.client import HyperVClient


@dataclass(frozen=True)
class VmRef:
    """Identity of the Kubernetes object."""

    namespace: str
    name: str
    uid: str
    generation: int  # metadata.generation


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str  # CamelCase
    message: str


@dataclass(frozen=True)
class StepOutcome:
    status: dict[str, Any]  # the COMPLETE new .status (keys set to None are deleted)
    requeue_after: float | None  # seconds until the next call; None = converged
    events: tuple[Event, ...]
    finished: bool = False  # finalize(): True when the finalizer may be removed


class CopySlots:
    """In-memory copy slots per host: at most `limit` copies hold a slot at once.

    A VM whose copy is already running on the host keeps (or, after an operator restart, reclaims)
    its slot with `adopt`, even if that briefly exceeds the limit.
    """

    def __init__(self) -> None:
        self._holders: dict[str, set[str]] = {}

    def try_acquire(self, host_key: str, uid: str, limit: int) -> bool:
        holders = self._holders.setdefault(host_key, set())
        if uid in holders:
            return True
        if len(holders) >= max(1, limit):
            return False
        holders.add(uid)
        return True

    def can_acquire(self, host_key: str, uid: str, limit: int) -> bool:
        holders = self._holders.get(host_key, set())
        return uid in holders or len(holders) < max(1, limit)

    def adopt(self, host_key: str, uid: str) -> None:
        self._holders.setdefault(host_key, set()).add(uid)

    def release(self, host_key: str, uid: str) -> None:
        self._holders.get(host_key, set()).discard(uid)

    def holders(self, host_key: str) -> frozenset[str]:
        return frozenset(self._holders.get(host_key, set()))


async def reconcile(
    client: HyperVClient,
    vm: VmRef,
    spec: VirtualMachineSpec,
    status: Mapping[str, Any],
    host: HyperVHostSpec,
    host_key: str,
    slots: CopySlots,
    now: datetime,
) -> StepOutcome:
    """One provisioning / power / drift step. Never raises HostError (it is folded into the status)."""
    raise NotImplementedError  # replaced below by the real engine


async def finalize(
    client: HyperVClient,
    vm: VmRef,
    spec: VirtualMachineSpec,
    status: Mapping[str, Any],
    host: HyperVHostSpec,
    host_key: str,
    slots: CopySlots,
    now: datetime,
) -> StepOutcome:
    """One deletion step; `finished=True` once the finalizer may be removed."""
    raise NotImplementedError
