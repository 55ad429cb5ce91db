"""Copy slots held in the cluster, not in one process's memory.

Each host's slots are a ledger: the VMs holding a slot (`holders`) and the VMs waiting for one, first
come first served (`queue`). The decisions on a ledger are pure (`acquire`, `adopt`, `release`); the
ledger itself is kept by a `LedgerStore`: in memory for tests and tools, or in the HyperVHost's /
ClusterHyperVHost's `status.copySlots` / `status.copyQueue` (handlers' `KubeLedgerStore`), written
with optimistic concurrency (the write names the resourceVersion it read; a conflict reads again and
decides again). So the limit holds across restarts (the holders are still written down when the
operator comes back, before any queued VM asks) and across several operator replicas (two writers
cannot both take the last slot: one of them gets the conflict).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

from hyperv_operator import conditions as cond

log = logging.getLogger("hyperv_operator.provisioning.ledger")

MAX_CONFLICT_RETRIES = 8
PRUNE_INTERVAL = 60.0
"""Seconds between looks (per host) for ledger entries of VMs that no longer exist."""


@dataclass(frozen=True)
class Entry:
    uid: str
    vm: str = ""  # "namespace/name", for people reading the host's status (and for pruning)
    owner: str = ""  # the operator process that took the slot: only it starts the copy
    since: str = ""  # when the slot was taken (RFC 3339)

    def to_dict(self) -> dict[str, str]:
        return {k: v for k, v in (("uid", self.uid), ("vm", self.vm), ("owner", self.owner),
                                  ("since", self.since)) if v}

    @staticmethod
    def from_dict(data: Mapping[str, Any]) -> Entry:
        return Entry(str(data.get("uid") or ""), str(data.get("vm") or ""), str(data.get("owner") or ""),
                     str(data.get("since") or ""))


@dataclass(frozen=True)
class Ledger:
    holders: tuple[Entry, ...] = ()
    queue: tuple[Entry, ...] = ()

    def holds(self, uid: str) -> bool:
        return any(e.uid == uid for e in self.holders)

    def queued_at(self, uid: str) -> int | None:
        return next((i for i, e in enumerate(self.queue) if e.uid == uid), None)

    def to_status(self) -> dict[str, Any]:
        return {"copySlots": [e.to_dict() for e in self.holders], "copyQueue": [e.to_dict() for e in self.queue]}

    @staticmethod
    def from_status(status: Mapping[str, Any] | None) -> Ledger:
        status = status or {}
        return Ledger(tuple(Entry.from_dict(e) for e in status.get("copySlots") or [] if isinstance(e, Mapping)),
                      tuple(Entry.from_dict(e) for e in status.get("copyQueue") or [] if isinstance(e, Mapping)))


@dataclass(frozen=True)
class Decision:
    granted: bool
    ledger: Ledger
    position: int | None = None  # 1-based place in the queue while not granted


OWNER_LEASE = timedelta(seconds=60)
"""A slot taken by another operator process for the same VM is left to it this long (it is about to
start the copy, or the copy runs and the host shows it); after that the process is presumed gone
(killed between taking the slot and starting the copy) and another takes the slot over."""


def acquire(ledger: Ledger, entry: Entry, limit: int, now: datetime | None = None) -> Decision:
    """Pure. A holder keeps its slot; otherwise the VM joins the queue (once) and is granted a slot
    only when it is among the first `free` of the queue: VMs get slots in the order they asked.

    Two operator processes working on the same VM (replicas, or a process and its successor) must
    not both start its copy: a slot is granted to the process that took it (`owner`); another
    process waits, and takes it over only once the owner's lease has run out."""
    held = next((e for e in ledger.holders if e.uid == entry.uid), None)
    if held is not None:
        if not held.owner or not entry.owner or held.owner == entry.owner:
            return Decision(True, ledger)
        taken = cond.parse_timestamp(held.since) if held.since else None
        if now is not None and (taken is None or now - taken >= OWNER_LEASE):
            holders = tuple(entry if e.uid == entry.uid else e for e in ledger.holders)
            return Decision(True, Ledger(holders, ledger.queue))
        return Decision(False, ledger)
    queue = ledger.queue if ledger.queued_at(entry.uid) is not None else (*ledger.queue, entry)
    index = next(i for i, e in enumerate(queue) if e.uid == entry.uid)
    free = max(1, limit) - len(ledger.holders)
    if index < free:
        return Decision(True, Ledger((*ledger.holders, entry), tuple(e for e in queue if e.uid != entry.uid)))
    return Decision(False, Ledger(ledger.holders, queue), position=index - max(free, 0) + 1)


def adopt(ledger: Ledger, entry: Entry) -> Ledger:
    """Pure. A copy found running on the host holds a slot, whatever the ledger said (the host is the
    truth; this may briefly exceed the limit, it never starts a copy)."""
    if ledger.holds(entry.uid):
        return ledger
    return Ledger((*ledger.holders, entry), tuple(e for e in ledger.queue if e.uid != entry.uid))


def release(ledger: Ledger, uid: str) -> Ledger:
    """Pure. The VM neither holds nor waits for a slot any more."""
    return Ledger(tuple(e for e in ledger.holders if e.uid != uid), tuple(e for e in ledger.queue if e.uid != uid))


def prune(ledger: Ledger, gone: Sequence[str]) -> Ledger:
    """Pure. Drops the entries of VMs that no longer exist (removed while no operator ran)."""
    return Ledger(tuple(e for e in ledger.holders if e.uid not in gone),
                  tuple(e for e in ledger.queue if e.uid not in gone))


class LedgerStore(Protocol):
    async def load(self, host_key: str) -> tuple[Ledger, str]:
        """The host's ledger and its version (resourceVersion)."""

    async def save(self, host_key: str, ledger: Ledger, version: str) -> bool:
        """Writes the ledger if the host is still at `version`; False on a conflict."""

    async def gone(self, entries: Sequence[Entry]) -> list[str]:
        """The uids among `entries` whose VirtualMachine no longer exists."""


@dataclass
class MemoryLedgerStore:
    """One process's ledgers (tests, tools). Its version counts writes, so conflicts are real here too."""

    ledgers: dict[str, tuple[Ledger, int]] = field(default_factory=dict)

    async def load(self, host_key: str) -> tuple[Ledger, str]:
        ledger, version = self.ledgers.get(host_key, (Ledger(), 0))
        return ledger, str(version)

    async def save(self, host_key: str, ledger: Ledger, version: str) -> bool:
        current = self.ledgers.get(host_key, (Ledger(), 0))[1]
        if str(current) != version:
            return False
        self.ledgers[host_key] = (ledger, current + 1)
        return True

    async def gone(self, entries: Sequence[Entry]) -> list[str]:
        return []


def _version(value: str) -> float | None:
    """A resourceVersion as a number, to order what the watch delivers against what we read or wrote
    (etcd's are integers; anything else is not ordered and always taken)."""
    try:
        return float(value)
    except ValueError:
        return None


class CopySlots:
    """Copy slots per host, kept in a `LedgerStore`: at most `limit` VMs hold a slot at once.

    `refresh` reads the host's ledger (once per engine run); `can_acquire` / `holders` / `position`
    answer from what was read; `try_acquire` / `adopt` / `release` write through the store, reading
    again and deciding again on a conflict. A VM whose copy is already running on the host keeps (or
    reclaims) its slot with `adopt`, even if that briefly exceeds the limit.

    Writes happen only when the ledger changes: a VM joins the queue once, takes a slot once, frees it
    once. A VM still in line asks again without any API call (`try_acquire` answers from the last
    ledger known, as long as that shows it waiting), and `wait_for_slot` lets it wait in the process
    until the ledger it knows grants it a slot: a release by this process, or, through `observe` (the
    host objects' watch), by another one. Every grant is decided on a fresh read and written with
    optimistic concurrency, so a ledger known from the watch can delay a VM, never over-grant.
    """

    def __init__(self, store: LedgerStore | None = None, owner: str | None = None) -> None:
        self.store: LedgerStore = store if store is not None else MemoryLedgerStore()
        self.owner = owner if owner is not None else uuid.uuid4().hex[:12]
        """This process (a new one per start): see `acquire`."""
        self._seen: dict[str, Ledger] = {}
        self._seen_version: dict[str, float] = {}
        """The resourceVersion `_seen` was read at (after our own write: just above the one it was
        decided on), so a watch event older than what we know does not replace it."""
        self._pruned: dict[str, float] = {}
        self._waiting: dict[str, tuple[str, int]] = {}
        """uid -> (host, limit) of VMs denied a slot, for `wait_for_slot`."""
        self._changed: dict[str, asyncio.Event] = {}

    def _know(self, host_key: str, ledger: Ledger, version: float | None) -> None:
        if version is not None:
            self._seen_version[host_key] = version
        else:
            self._seen_version.pop(host_key, None)
        self._seen[host_key] = ledger
        changed = self._changed.pop(host_key, None)
        if changed is not None:
            changed.set()

    def observe(self, host_key: str, status: Mapping[str, Any] | None, version: str) -> None:
        """The host object as the watch delivered it: wakes VMs of this process waiting on this host."""
        number = _version(version)
        known = self._seen_version.get(host_key)
        if number is not None and known is not None and number <= known:
            return  # older than what this process read or wrote since
        self._know(host_key, Ledger.from_status(status), number)

    def forget_host(self, host_key: str) -> None:
        """The host object is gone: its ledger with it."""
        self._seen.pop(host_key, None)
        self._seen_version.pop(host_key, None)
        self._pruned.pop(host_key, None)

    async def refresh(self, host_key: str) -> Ledger:
        ledger, version = await self.store.load(host_key)
        self._know(host_key, ledger, _version(version))
        return ledger

    def _mine(self, host_key: str, uid: str) -> bool:
        held = next((e for e in self._seen.get(host_key, Ledger()).holders if e.uid == uid), None)
        return held is not None and held.owner in ("", self.owner)

    def can_acquire(self, host_key: str, uid: str, limit: int) -> bool:
        return acquire(self._seen.get(host_key, Ledger()), Entry(uid, owner=self.owner), limit).granted

    def position(self, host_key: str, uid: str, limit: int) -> int | None:
        return acquire(self._seen.get(host_key, Ledger()), Entry(uid, owner=self.owner), limit).position

    def holders(self, host_key: str) -> frozenset[str]:
        return frozenset(e.uid for e in self._seen.get(host_key, Ledger()).holders)

    def queue(self, host_key: str) -> tuple[str, ...]:
        return tuple(e.uid for e in self._seen.get(host_key, Ledger()).queue)

    async def try_acquire(self, host_key: str, uid: str, limit: int, vm: str = "", now: datetime | None = None) -> bool:
        if self._mine(host_key, uid):
            self._waiting.pop(uid, None)
            return True  # ours as of this run's read: only this VM's own runs give it away
        clock = time.monotonic()
        prune_now = clock - self._pruned.get(host_key, -PRUNE_INTERVAL) >= PRUNE_INTERVAL
        seen = self._seen.get(host_key)
        if (seen is not None and seen.queued_at(uid) is not None and not prune_now
                and not acquire(seen, Entry(uid, owner=self.owner), limit).granted):
            # Still in line as last known: nothing to write, nothing to read (a grant is read afresh).
            self._waiting[uid] = (host_key, limit)
            return False
        entry = Entry(uid, vm, self.owner, cond.timestamp(now) if now is not None else "")
        decision = await self._update(host_key, lambda ledger: acquire(ledger, entry, limit, now),
                                      prune_if_denied=prune_now)
        if prune_now and not decision.granted:
            self._pruned[host_key] = clock
        if decision.granted:
            self._waiting.pop(uid, None)
        else:
            self._waiting[uid] = (host_key, limit)
        return decision.granted

    async def wait_for_slot(self, uid: str, timeout: float) -> bool:
        """Waits (no API traffic) until the ledger this process knows would give `uid` a slot on the
        host it was last denied one on; False after `timeout` seconds, or if it waits for none."""
        where = self._waiting.get(uid)
        if where is None:
            return False
        host_key, limit = where
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            seen = self._seen.get(host_key, Ledger())
            if seen.queued_at(uid) is None or acquire(seen, Entry(uid, owner=self.owner), limit).granted:
                return True
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            changed = self._changed.setdefault(host_key, asyncio.Event())
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return False

    def waiting(self, uid: str) -> bool:
        """Whether `uid` was denied a slot and has not been granted one or left the queue since."""
        return uid in self._waiting

    async def adopt(self, host_key: str, uid: str, vm: str = "", now: datetime | None = None) -> None:
        self._waiting.pop(uid, None)
        seen = self._seen.get(host_key)
        if seen is not None and seen.holds(uid):
            return  # whoever took it: the copy runs, nobody starts another for this VM
        entry = Entry(uid, vm, self.owner, cond.timestamp(now) if now is not None else "")
        await self._update(host_key, lambda ledger: Decision(True, adopt(ledger, entry)))

    async def release(self, host_key: str, uid: str) -> None:
        self._waiting.pop(uid, None)
        seen = self._seen.get(host_key)
        if seen is not None and not seen.holds(uid) and seen.queued_at(uid) is None:
            return  # nothing of ours written down (as of this run's read): no write
        await self._update(host_key, lambda ledger: Decision(True, release(ledger, uid)))

    def _known(self, host_key: str) -> tuple[Ledger, str] | None:
        """The ledger as last read (this run's refresh, or the watch since) with its exact version; None
        after our own write (its version is not known) or if never read."""
        version = self._seen_version.get(host_key)
        if host_key not in self._seen or version is None or version != int(version):
            return None
        return self._seen[host_key], str(int(version))

    async def _update(self, host_key: str, decide: Any, *, prune_if_denied: bool = False) -> Decision:
        pruned = False
        # The first decision is made on the ledger as last read when its version is known: the write
        # names that version, so if the ledger changed since, it is refused (409) and we read again.
        known = self._known(host_key)
        for _ in range(MAX_CONFLICT_RETRIES):
            ledger, version = known if known is not None else await self.store.load(host_key)
            known = None
            decision: Decision = decide(ledger)
            if not decision.granted and prune_if_denied and not pruned:
                # Entries of VMs removed while no operator ran would hold their places forever.
                gone = await self.store.gone((*ledger.holders, *ledger.queue))
                pruned = True
                if gone:
                    decision = decide(prune(ledger, gone))
            number = _version(version)
            if decision.ledger == ledger:
                self._know(host_key, ledger, number)
                return decision
            if await self.store.save(host_key, decision.ledger, version):
                # Written at a version above `version`: the watch's copy of our write is newer still.
                self._know(host_key, decision.ledger, None if number is None else number + 0.5)
                return decision
            log.debug("copy ledger of %s changed under us; reading it again", host_key)
        raise LedgerConflictError(f"copy ledger of host {host_key}: {MAX_CONFLICT_RETRIES} conflicting writes in a row")


class LedgerError(Exception):
    """The host's ledger could not be read or written: try the step again later (nothing was started)."""


class LedgerConflictError(LedgerError):
    """The host's ledger kept changing under us."""

