"""The provisioning engine: one reconcile step per call (observe -> plan -> act).

`handlers.py` (kopf glue) calls `reconcile` / `finalize`, writes `StepOutcome.status`, posts the events
and calls again after `requeue_after` seconds. Decisions live in the pure `planner`; this module only
does I/O around it.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from hyperv_operator.api import HyperVHostSpec, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets, second_hop
from hyperv_operator.hyperv.client import HyperVClient
from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import HostError, HostUnreachableError, PermanentHostError, TransientHostError
from hyperv_operator.provisioning import bootstrap, effects, network, planner, retry, settle
from hyperv_operator.provisioning import guest as guest_mod
from hyperv_operator.provisioning.base_facts import BaseFacts
from hyperv_operator.provisioning.layout import Layout, is_avhdx, join, layout_for, same_path
from hyperv_operator.provisioning.ledger import CopySlots, LedgerError
from hyperv_operator.provisioning.model import Event, VmRef
from hyperv_operator.provisioning.observation import (
    CopyJob,
    Observation,
    ProcessInfo,
    SlotView,
    VhdInfo,
    expected_reads,
    kind_of,
    needed_reads,
    parse_process,
    parse_vhd,
    parse_vm,
    pick_vm,
    recorded_avhdx,
)
from hyperv_operator.provisioning.phases import COPY_PHASES, Phase

__all__ = ["CopySlots", "Event", "LedgerError", "StepOutcome", "VmRef", "finalize", "observe", "reconcile"]

log = logging.getLogger("hyperv_operator.provisioning")
T = TypeVar("T")


@dataclass(frozen=True)
class StepOutcome:
    status: dict[str, Any]  # the COMPLETE new .status (keys set to None are deleted)
    requeue_after: float | None  # seconds until the next call; None = converged
    events: tuple[Event, ...]
    finished: bool = False  # finalize(): True when the finalizer may be removed


@dataclass(frozen=True)
class StepInput:
    """Everything one engine run works from."""

    client: HyperVClient
    vm: VmRef
    spec: VirtualMachineSpec
    status: Mapping[str, Any]
    host: HyperVHostSpec
    host_key: str
    slots: CopySlots
    now: datetime
    deleting: bool = False
    delete_stall_after: float = retry.DELETE_STALL_AFTER
    bases: BaseFacts | None = None
    """Base disks' Get-VHD facts as recently read on this host (none: read the base every time)."""


MAX_PLANS_PER_RUN = 16
"""Bound on plan() calls in one run (each may add an action to the batch or end the run)."""
MAX_LOOKS_WITHOUT_ACTION = 2
"""A plan that only asks to look again (the host is settling) is followed by a new observation at
once, at most this many times in a row; then the run ends with that plan's short requeue."""
MAX_BATCH = 6
"""Bound on actions sent in one pipeline."""


async def reconcile(
    client: HyperVClient,
    vm: VmRef,
    spec: VirtualMachineSpec,
    status: Mapping[str, Any],
    host: HyperVHostSpec,
    host_key: str,
    slots: CopySlots,
    now: datetime,
    *,
    bases: BaseFacts | None = None,
) -> StepOutcome:
    """Provisioning / power / drift, as far as the host allows without waiting. Never raises HostError
    (it is folded into the status)."""
    return await run_step(StepInput(client, vm, spec, status, host, host_key, slots, now, bases=bases))


async def finalize(
    client: HyperVClient,
    vm: VmRef,
    spec: VirtualMachineSpec,
    status: Mapping[str, Any],
    host: HyperVHostSpec,
    host_key: str,
    slots: CopySlots,
    now: datetime,
    *,
    delete_stall_after: float = retry.DELETE_STALL_AFTER,
) -> StepOutcome:
    """Deletion, as far as it goes without waiting; `finished=True` once the finalizer may be removed."""
    return await run_step(StepInput(client, vm, spec, status, host, host_key, slots, now, deleting=True,
                                    delete_stall_after=delete_stall_after))


def _complete(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """The full status: keys that disappeared are set to None so the handler deletes them."""
    result = dict(new)
    for key in old:
        result.setdefault(key, None)
    return result


async def run_step(s: StepInput) -> StepOutcome:
    """observe -> plan -> act, repeated within one run while the host needs no waiting.

    Consecutive actions whose effect is known without their output (effects.expect) are planned on
    the expected observation and sent together in one pipeline; after a pipeline the observation is
    brought forward from its output (effects.fold), or read again when that is not possible. The run
    ends at a wait on the host (copy, merge, shutdown), at convergence, at an error, or after
    MAX_PLANS_PER_RUN plans. A crash at any point loses at most this run's status: the next run's
    observation shows which of the last pipeline's statements ran. Nothing is batched behind an action
    whose failure must stop what follows (effects.SAFETY_CRITICAL): Windows runs the next statement
    after a statement-terminating error.
    """
    who = f"{s.vm.namespace}/{s.vm.name}"
    layout = layout_for(s.vm.name, s.vm.uid, s.spec.vm_path, s.host.default_vm_path)
    try:
        return await _run_step(s, who, layout)
    except LedgerError as error:
        # The host's copy ledger could not be read or written (API server, conflicts): nothing was
        # started without a slot; try again soon, status unchanged.
        log.warning("%s: copy ledger of %s: %s", who, s.host_key, error)
        return _outcome(s, settle.Settled(dict(s.status), planner.TRANSIENT_BACKOFF, retrying=True))


async def _observe_with_known_base(s: StepInput, status: Mapping[str, Any], layout: Layout,
                                   slot: SlotView) -> Observation:
    """`observe`, with the base disk's facts as recently read on this host (base_facts.py) when known.
    A known base that Test-Path does not find (removed, or a share this session may no longer read)
    is forgotten and the host read again the full way, so the run reports what Get-VHD says of it."""
    reads_base = not s.deleting and str(status.get("phase") or Phase.PENDING.value) in _BASE_READ
    if s.bases is None or not reads_base:
        return await observe(s.client, s.vm, s.spec, status, layout, slot, deleting=s.deleting)
    known = s.bases.get(s.host_key, s.spec.base_vhd)
    obs = await observe(s.client, s.vm, s.spec, status, layout, slot, deleting=s.deleting, known_base=known)
    if known is not None and obs.exists(s.spec.base_vhd):
        return obs
    if known is not None:
        s.bases.forget(s.host_key, s.spec.base_vhd)
        obs = await observe(s.client, s.vm, s.spec, status, layout, slot, deleting=s.deleting)
    base = obs.vhd(s.spec.base_vhd)  # read just now (kept from now on, not from when first read)
    if base is not None:
        s.bases.put(s.host_key, s.spec.base_vhd, base)
    return obs


def _in_background(work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
    """A task whose failure is taken as seen even if a run ends before awaiting it (awaiting it
    still raises)."""
    task = asyncio.ensure_future(work)
    task.add_done_callback(lambda t: None if t.cancelled() else t.exception())
    return task


def _take_slot_ahead(s: StepInput, sent: Sequence[planner.Action], limit: int,
                     vm_label: str) -> asyncio.Task[bool] | None:
    """Quick: the copy starts in the pipeline after New-VM's (with Start-VM), once the host's ledger
    has given it a slot. That ledger write (an API round trip) is made while New-VM's pipeline runs
    instead of after it, when a slot is free as last read (no place in a queue is taken ahead); the
    slot is kept until the copy starts (settle.copy_ahead), and given back if the run ends on a
    failure."""
    if not sent or sent[-1].kind != planner.NEW_VM_CHECKPOINTED:
        return None
    if not s.slots.can_acquire(s.host_key, s.vm.uid, limit):
        return None
    return _in_background(s.slots.try_acquire(s.host_key, s.vm.uid, limit, vm_label, s.now))


async def _slot_taken_ahead(ahead: asyncio.Task[bool] | None) -> bool:
    """Whether the slot asked for ahead was granted (False if none was asked, or the ledger failed:
    the plan that starts the copy asks again)."""
    if ahead is None:
        return False
    try:
        return await ahead
    except LedgerError as error:
        log.info("copy slot asked ahead of the copy: %s; asked again before the copy", error)
        return False


def _uses_slots(s: StepInput) -> bool:
    """Whether this run may take, hold or free a copy slot: read the host's ledger first."""
    if not planner.copies_base(s.spec.strategy):
        return False
    return s.deleting or str(s.status.get("phase") or Phase.PENDING.value) != Phase.PROVISIONED.value


async def _run_step(s: StepInput, who: str, layout: Layout) -> StepOutcome:
    vm_label = f"{s.vm.namespace}/{s.vm.name}"
    early = settle.without_host(s.spec, s.status, s.now, vm=s.vm, layout=layout, deleting=s.deleting)
    if early is not None:
        if early.free_slot and _uses_slots(s):
            await s.slots.refresh(s.host_key)
            await s.slots.release(s.host_key, s.vm.uid)
        if s.deleting:
            log.info("%s: deletionPolicy Retain: leaving VM and files on host %s", who, s.spec.host_name)
        return _outcome(s, early)

    plan_fn = planner.plan_delete if s.deleting else planner.plan
    started = time.monotonic()

    def now() -> datetime:
        # One run goes through several phases: each plan sees the time it is made, so the timings it
        # records (createdAt, runningAt, ...) measure the host's work, not zero.
        return s.now + timedelta(seconds=time.monotonic() - started)

    status: dict[str, Any] = dict(s.status)
    events: list[Event] = []
    obs: Observation | None = None
    batch: list[planner.Plan] = []
    batch_from: dict[str, Any] = status  # the status the current batch started from
    limit = s.host.max_concurrent_copies
    looks = 0  # plans in a row that only asked to look again
    one_at_a_time = False  # after a failed batch of several actions: no more batching in this run
    slots_read = _uses_slots(s)
    # The host's ledger is read while the host is observed: nothing is decided on it before the plan.
    reading = _in_background(s.slots.refresh(s.host_key)) if slots_read else None
    for _ in range(MAX_PLANS_PER_RUN):
        if obs is None:
            try:
                obs = await _observe_with_known_base(s, status, layout, SlotView(True, 0, limit))
            except HostError as error:
                log.warning("%s [%s]: observing host %s failed: %s", who, status.get("phase"), s.spec.host_name,
                            error)
                failed = settle.observe_failed(s.spec, status, error, s.now, vm=s.vm, layout=layout,
                                               deleting=s.deleting, stall_after=s.delete_stall_after)
                return _outcome(s, failed, events)
        if reading is not None:
            await reading  # a LedgerError ends the run as before (run_step)
            reading = None
        if not slots_read and str(status.get("phase")) in _COPY_PHASE_NAMES:
            slots_read = True  # reached a copy phase within this run (from Provisioned? no: a drift re-run)
            await s.slots.refresh(s.host_key)
        obs = replace(obs, slot=_slot_view(s, limit))
        result = plan_fn(s.spec, status, obs, now(), vm=s.vm, layout=layout)
        if settle.wants_slot(result):
            # Ask the host's ledger (written through the API, optimistic concurrency): a slot, or a
            # place in its first-come-first-served queue. Plan again with the answer.
            granted = await s.slots.try_acquire(s.host_key, s.vm.uid, limit, vm_label, s.now)
            obs = replace(obs, slot=_slot_view(s, limit, granted=granted))
            result = plan_fn(s.spec, status, obs, now(), vm=s.vm, layout=layout)
        use = settle.slot_use(result.action, obs, layout,
                              copy_ahead=settle.copy_ahead(s.spec.strategy, str(result.status.get("phase"))))
        if use == "hold" and slots_read:
            await s.slots.adopt(s.host_key, s.vm.uid, vm_label, s.now)
        elif use == "free" and slots_read and not settle.wants_slot(result):  # a VM in line keeps its place
            await s.slots.release(s.host_key, s.vm.uid)
        if str(result.status.get("phase")) != str(status.get("phase")):
            log.info("%s: phase %s -> %s", who, status.get("phase"), result.status.get("phase"))
        action = result.action
        if action is None and not batch:
            events += result.events
            looks += 1
            if result.requeue_after is not None and result.requeue_after <= planner.AFTER_ACTION \
                    and not result.finished and looks <= MAX_LOOKS_WITHOUT_ACTION:
                status, obs = result.status, None  # "look again now": no reason to sleep first
                continue
            log.debug("%s [%s]: %s", who, result.status.get("phase"), result.status.get("message"))
            return _outcome(s, settle.Settled(result.status, result.requeue_after, finished=result.finished),
                            events)
        if action is not None and batch and action.kind in settle.ALONE:
            # This action's failure must not be mistaken for another's: send the batch so far, then
            # plan it again on its own.
            result, action = batch[-1], batch[-1].action
        elif action is not None:
            looks = 0
            log.info("%s [%s]: host %s: %s", who, result.status.get("phase"), s.spec.host_name, action.description)
            if not batch:
                batch_from = status
            batch.append(result)
            expected = effects.expect(action, obs, layout, s.spec, s.vm.uid)
            if (expected is not None and len(batch) < MAX_BATCH and not action.starts_copy and not one_at_a_time
                    and result.requeue_after is not None and result.requeue_after <= planner.AFTER_ACTION):
                status, obs = result.status, expected  # plan the next action on the expected host state
                continue
        # Send the batch: every action planned so far, in order, in one pipeline.
        sent = [p.action for p in batch if p.action is not None]
        ahead = _take_slot_ahead(s, sent, limit, vm_label) if slots_read else None
        try:
            output = await s.client.run([st for a in sent for st in a.statements])
        except HostError as error:
            log.warning("%s [%s]: host %s: %s failed: %s", who, result.status.get("phase"), s.spec.host_name,
                        "; ".join(a.kind for a in sent), error)
            failed = settle.action_failed(s.spec, batch_from, batch, error, s.now, vm=s.vm, layout=layout,
                                          deleting=s.deleting, stall_after=s.delete_stall_after,
                                          looked_again=one_at_a_time)
            took_ahead = await _slot_taken_ahead(ahead)
            if (failed.free_slot or (took_ahead and not failed.observe_again)) and slots_read:
                await s.slots.release(s.host_key, s.vm.uid)
            if failed.observe_again:
                if failed.one_at_a_time:
                    one_at_a_time = True  # the batch's events are not posted: what ran is not known yet
                else:
                    events += [e for p in batch for e in p.events]
                status, obs, batch = failed.status, None, []
                continue
            return _outcome(s, failed, events)
        await _slot_taken_ahead(ahead)
        for p in batch:
            events += p.events
        final = result.status
        for a in sent:
            final = planner.absorb(a, final, output)
            if a.kind in ("NewVM", planner.NEW_VM_CHECKPOINTED) and final.get("vmId"):
                log.info("%s [%s]: created VM %s", who, final.get("phase"), final["vmId"])
        batch = []
        if action is None:  # the batch ran; this plan (made on its expected effect) says what is next
            events += result.events
            if result.requeue_after is not None and result.requeue_after <= planner.AFTER_ACTION \
                    and not result.finished:
                status, obs = final, None
                continue
            return _outcome(s, settle.Settled(final, result.requeue_after, finished=result.finished), events)
        if result.finished or result.requeue_after is None or result.requeue_after > planner.AFTER_ACTION:
            return _outcome(s, settle.Settled(final, result.requeue_after, finished=result.finished), events)
        status = final
        obs = effects.fold(action, obs, output, layout, s.spec, s.vm.uid)
    # Out of plans: actions still waiting to be sent were not run, so report the status before them.
    return _outcome(s, settle.Settled(batch_from if batch else status, planner.AFTER_ACTION), events)


_COPY_PHASE_NAMES = frozenset(p.value for p in COPY_PHASES)


def _slot_view(s: StepInput, limit: int, *, granted: bool | None = None) -> SlotView:
    """The slots as last read or written: `granted` is the ledger's answer when we just asked it."""
    holders = s.slots.holders(s.host_key) - {s.vm.uid}
    available = s.slots.can_acquire(s.host_key, s.vm.uid, limit) if granted is None else granted
    position = None if available else s.slots.position(s.host_key, s.vm.uid, limit)
    return SlotView(available=available, running=len(holders), limit=limit, position=position)


def _outcome(s: StepInput, settled: settle.Settled, events: Sequence[Event] = ()) -> StepOutcome:
    status = settled.status if settled.retrying else {k: v for k, v in settled.status.items() if k != "retry"}
    return StepOutcome(_complete(status, s.status), settled.requeue_after,
                       coalesce_run_events((*events, *settled.events)), settled.finished)


_PHASE_CHANGE = re.compile(r"^(?P<head>[^:]*): (?P<chain>\S+(?: -> \S+)+) (?P<tail>\(.*\))$")

PROGRESS_REASONS = ("PhaseChanged", "CopyStarted", "CopyCompleted", "Reparenting", "MergeStarted", "Independent")
"""The Normal Events that tell how provisioning goes on: one run posts them as one Event."""
MAX_EVENT_MESSAGE = 1024
"""An Event's message is cut here (events.k8s.io's `note` is at most 1 kB; core/v1 sets no limit)."""


def coalesce_run_events(events: Sequence[Event]) -> tuple[Event, ...]:
    """A run's progress as ONE Normal Event, where the run posted several: the phases it went through
    and what it did on the way, e.g. reason CopyStarted, "Quick: Pending -> CreatingVM -> Checkpointing ->
    Starting -> CopyingBase (VM 1f21...): background copy of ... started on host hv1". Every Event is an
    API write, and one run passes several phases and milestones in a row (a Quick VM's runs posted 9
    Events; now 3). The reason is the run's last milestone (PhaseChanged when it only changed phases);
    Warnings and every other reason stay Events of their own, in order. A Warning ends the progress so
    far: what came after it is a progress Event of its own, after the Warning."""
    result: list[Event] = []
    group = _Progress()
    for event in events:
        if event.type == "Normal" and event.reason in PROGRESS_REASONS:
            if group.at is None:
                group.at = len(result)
                result.append(event)  # replaced by the group's Event
            group.add(event)
            continue
        if event.type == "Warning" and group.at is not None:
            result[group.at] = group.event()
            group = _Progress()
        result.append(event)
    if group.at is not None:
        result[group.at] = group.event()
    return tuple(result)


@dataclass
class _Progress:
    """Consecutive progress Events of one run, becoming one (`coalesce_run_events`)."""

    at: int | None = None  # where its Event goes: where its first progress Event was
    chains: list[tuple[str, list[str], str]] = field(default_factory=list)  # (head, phases, tail)
    notes: list[str] = field(default_factory=list)
    reason: str = "PhaseChanged"

    def add(self, event: Event) -> None:
        match = _PHASE_CHANGE.match(event.message) if event.reason == "PhaseChanged" else None
        if match is None:
            self.notes.append(event.message)
            self.reason = event.reason if event.reason != "PhaseChanged" else self.reason
            return
        steps = match["chain"].split(" -> ")
        if self.chains and self.chains[-1][0] == match["head"] and self.chains[-1][1][-1] == steps[0]:
            # The label may change on the way (the VM's name, then its Id once New-VM ran): the last one.
            head, chain, _ = self.chains[-1]
            self.chains[-1] = (head, [*chain, *steps[1:]], match["tail"])
        else:
            self.chains.append((match["head"], steps, match["tail"]))

    def event(self) -> Event:
        said = [f"{head}: {' -> '.join(chain)} {tail}" for head, chain, tail in self.chains]
        message = "; ".join(said) + (": " if said and self.notes else "") + "; ".join(self.notes)
        if len(message) > MAX_EVENT_MESSAGE:
            message = message[:MAX_EVENT_MESSAGE - 3] + "..."
        return Event("Normal", self.reason, message)


# --- observe -------------------------------------------------------------------------------------

_NO_COPY_READ = frozenset({Phase.PROVISIONED.value, Phase.REPARENTING.value, Phase.MERGING.value,
                           Phase.FAILED.value})
_BASE_READ = frozenset({Phase.PENDING.value, Phase.FAILED.value})
_COPY_PHASES = frozenset({Phase.COPYING.value, Phase.COPYING_BASE.value})
_GUEST_PHASES = frozenset({Phase.STARTING.value, Phase.COPYING_BASE.value, Phase.REPARENTING.value,
                           Phase.MERGING.value, Phase.PROVISIONED.value})


def _unique(paths: Sequence[str]) -> list[str]:
    result: list[str] = []
    for path in paths:
        if path and not any(same_path(path, p) for p in result):
            result.append(path)
    return result


async def _read_base(client: HyperVClient, base: str) -> VhdInfo:
    """Get-VHD of the base, in its own round trip: on shared storage Get-VHD fails ("in use") on
    every host but the one that has the disk open (Get-VHD documentation), and a base shared by
    several hosts is the normal case. Then the file itself (Get-Item) stands in: its size, its format
    by extension; the chain checks that need Get-VHD are left to New-VHD / Start-VM, which fail
    loudly on a differencing or broken base."""
    try:
        out = await client.run([cmdlets.get_vhd(base)])
    except HostError as error:
        if planner.is_not_found(error) or isinstance(error, HostUnreachableError):
            raise
        log.info("Get-VHD %s failed (%s); reading the base as a file", base, error.message)
        item = (await client.run([cmdlets.get_item(base)]))[0]
        extension = str(item.get("Extension") or "").lower()
        return VhdInfo(path=str(item.get("FullName") or base), vhd_type="",
                       file_size=int(item.get("Length") or 0) or None,
                       vhd_format={".vhdx": "VHDX", ".vhd": "VHD"}.get(extension, ""),
                       in_use_elsewhere=True)
    for obj in out:
        if kind_of(obj) == "vhd":
            return parse_vhd(obj)
    raise TransientHostError(f"Get-VHD {base} returned no disk")


async def _denied_base(client: HyperVClient, spec: VirtualMachineSpec, phase: str, base_exists: bool, *,
                       deleting: bool) -> frozenset[str]:
    """Test-Path answers $false for a share the session may not read (the second hop): ask again, so
    access denied is told from not found."""
    if (phase == Phase.PENDING.value and not deleting and not base_exists and second_hop.unc_server(spec.base_vhd)
            and await second_hop.read_denied(client, spec.base_vhd)):
        return frozenset([spec.base_vhd.rstrip("\\").lower()])
    return frozenset()


async def _observe_listing(
    client: HyperVClient,
    vm: VmRef,
    spec: VirtualMachineSpec,
    status: Mapping[str, Any],
    layout: Layout,
    slot: SlotView,
    *,
    deleting: bool = False,
) -> Observation:
    """Read what exists on the host in two round trips (a third only after a crash mid-checkpoint).

    Round 1 cannot fail on missing objects: every VM (picked by vmId / uid tag) and Test-Path of
    every path of interest. Round 2 reads only what exists: Get-VHD chains, the copy status file,
    the VM's drives and checkpoints.
    """
    phase = str(status.get("phase") or Phase.PENDING.value)
    recorded = [str(p) for p in status.get("createdFiles") or []]
    disk_path = (status.get("disk") or {}).get("path")
    paths = _unique([spec.base_vhd, layout.disk, layout.partial, layout.copy_status, *recorded,
                     *([str(disk_path)] if disk_path else []), *bootstrap.paths(spec, layout, status),
                     *((layout.copy_status_tmp, *layout.folders_bottom_up) if deleting else ())])
    first = await client.run([cmdlets.get_all_vms(), cmdlets.test_paths(paths)])
    vms, flags, _, _, _, _ = _parse(first, copy_read=False)
    if len(flags) != len(paths):
        raise TransientHostError(f"Test-Path returned {len(flags)} results for {len(paths)} paths")
    existing = frozenset(p.rstrip("\\").lower() for p, flag in zip(paths, flags, strict=True) if flag)
    host_vm, found_by = pick_vm(vms, status.get("vmId"), vm.uid, layout)

    def exists(path: str | None) -> bool:
        return path is not None and path.rstrip("\\").lower() in existing

    denied = await _denied_base(client, spec, phase, exists(spec.base_vhd), deleting=deleting)

    vhds: dict[str, VhdInfo] = {}
    if phase in _BASE_READ and not deleting and exists(spec.base_vhd):
        base = await _read_base(client, spec.base_vhd)
        vhds[base.path.rstrip("\\").lower()] = base
    vhd_paths = _unique([
        *([layout.disk] if exists(layout.disk) and not deleting else []),
        *([p for p in [*recorded, *([str(disk_path)] if disk_path else [])]
           if is_avhdx(p) and exists(p) and not deleting]),
    ])
    second: list[Statement] = [cmdlets.get_vhd(p) for p in vhd_paths]
    read_copy = exists(layout.copy_status) and (deleting or phase not in _NO_COPY_READ)
    if read_copy:
        second.append(cmdlets.read_text_file(layout.copy_status))
    copy_phase = (deleting or phase in _COPY_PHASES) and not exists(layout.disk)
    recorded_pid = _recorded_worker(status, copy_phase)
    second += _worker_reads(recorded_pid)
    if host_vm is not None:
        second += [cmdlets.get_vm_hard_disk_drives(host_vm.id), cmdlets.get_vm_snapshots(host_vm.id)]
    read_guest = host_vm is not None and host_vm.state == planner.RUNNING and not deleting
    guest_vm_id = host_vm.id if host_vm is not None else ""
    if read_guest:
        second += _guest_reads(guest_vm_id)
    guest, out = _split_guest(await client.run(second) if second else [], guest_vm_id, read=read_guest)
    _, _, vhds2, drives, snapshots, job = _parse(out, copy_read=read_copy)
    vhds.update(vhds2)
    processes = _processes(out)
    checked_pid = await _unrecorded_worker(client, job, recorded_pid, processes, look=copy_phase)
    extra_existing = set(existing)
    await _read_unknown_chains(client, drives, vhds, extra_existing, recorded_avhdx(status), deleting=deleting)
    return Observation(
        host_name=spec.host_name,
        vm=host_vm,
        found_by=found_by,
        drives=tuple(drives),
        snapshots=tuple(snapshots),
        existing=frozenset(extra_existing),
        denied=denied,
        vhds=vhds,
        copy=job,
        slot=slot,
        copy_process=processes.get(checked_pid),
        copy_process_checked=bool(checked_pid),
        guest=guest,
    )


async def observe(
    client: HyperVClient,
    vm: VmRef,
    spec: VirtualMachineSpec,
    status: Mapping[str, Any],
    layout: Layout,
    slot: SlotView,
    *,
    deleting: bool = False,
    known_base: VhdInfo | None = None,
) -> Observation:
    """Read what exists on the host, normally in ONE round trip that does not grow with the host:
    our VM by Id (`Get-VM -Id`, its drives and checkpoints), Test-Path of every path of interest,
    Get-VHD of the disks the status says exist, the copy's status file while a copy runs.

    A second round trip reads what exists and is needed but was not expected, and lists the host's
    VMs only when we have no vmId yet and New-VM's folder exists (a crash right after New-VM). If an
    expected object is gone (a read fails with not-found), the host changed under us: everything is
    read again the safe way (`_observe_listing`), which never fails on a missing object.

    `known_base`: the base disk's Get-VHD facts as read recently (base_facts.py): not read again, only
    its existence (Test-Path).
    """
    try:
        return await _observe_by_id(client, vm, spec, status, layout, slot, deleting=deleting,
                                    known_base=known_base)
    except HostError as error:
        if isinstance(error, PermanentHostError) and planner.is_not_found(error):
            log.info("%s/%s: an expected object is gone (%s); reading the host again", vm.namespace, vm.name,
                     error.message)
            return await _observe_listing(client, vm, spec, status, layout, slot, deleting=deleting)
        phase = str(status.get("phase") or Phase.PENDING.value)
        about_base = spec.base_vhd.lower() in f"{error.target}\n{error.message}\n{error.command}".lower()
        if phase not in _BASE_READ or deleting or isinstance(error, HostUnreachableError) or not about_base:
            raise
        # Get-VHD of a base on shared storage fails "in use" on the hosts that do not hold it open, and
        # on a share the session may not read it is denied: read the base on its own (by file if need be).
        log.info("%s/%s: reading the host with the base read apart (%s)", vm.namespace, vm.name, error.message)
        return await _observe_by_id(client, vm, spec, status, layout, slot, deleting=deleting, base_apart=True)


def _parse(out: Sequence[HostObject], *, copy_read: bool) -> tuple[
        list[Any], list[bool], dict[str, VhdInfo], list[str], list[str], CopyJob | None]:
    vms: list[Any] = []
    flags: list[bool] = []
    vhds: dict[str, VhdInfo] = {}
    drives: list[str] = []
    snapshots: list[str] = []
    job: CopyJob | None = None
    for obj in out:
        kind = kind_of(obj)
        if kind == "vm":
            vms.append(parse_vm(obj))
        elif kind == "bool":
            flags.append(bool(obj.value))
        elif kind == "vhd":
            info = parse_vhd(obj)
            vhds[info.path.rstrip("\\").lower()] = info
        elif kind == "drive":
            drives.append(str(obj.get("Path") or ""))
        elif kind == "snapshot":
            snapshots.append(str(obj.get("Name") or ""))
        elif kind == "string" and copy_read:
            job = CopyJob.parse(str(obj.value))
    return vms, flags, vhds, drives, snapshots, job


async def _observe_by_id(
    client: HyperVClient,
    vm: VmRef,
    spec: VirtualMachineSpec,
    status: Mapping[str, Any],
    layout: Layout,
    slot: SlotView,
    *,
    deleting: bool,
    base_apart: bool = False,
    known_base: VhdInfo | None = None,
) -> Observation:
    phase = str(status.get("phase") or Phase.PENDING.value)
    on_checkpoint = planner.runs_on_checkpoint(spec.strategy)  # Quick: the VM runs on a checkpoint of the base
    vm_id = str(status.get("vmId") or "")
    config_dir = join(layout.vm_dir, layout.vm_name)  # New-VM -Path vm_dir creates it
    recorded = [str(p) for p in status.get("createdFiles") or []]
    disk_path = (status.get("disk") or {}).get("path")
    paths = _unique([spec.base_vhd, layout.disk, layout.partial, layout.copy_status, *recorded,
                     *([str(disk_path)] if disk_path else []), layout.vm_dir, config_dir,
                     *bootstrap.paths(spec, layout, status),  # issue 14
                     *((layout.copy_status_tmp, *layout.folders_bottom_up) if deleting else ())])
    want = expected_reads(phase, on_checkpoint, status, layout, spec.base_vhd, deleting=deleting)
    if base_apart or known_base is not None:
        want = replace(want, vhds=tuple(p for p in want.vhds if not same_path(p, spec.base_vhd)))
    first: list[Statement] = [cmdlets.test_paths(paths)]
    first += [cmdlets.get_vhd(p) for p in want.vhds]
    if want.copy_status:
        first.append(cmdlets.read_text_file(layout.copy_status))
    if vm_id:
        first += [cmdlets.get_vm_by_id(vm_id), cmdlets.get_vm_hard_disk_drives(vm_id),
                  cmdlets.get_vm_snapshots(vm_id)]
    copy_phase = deleting or phase in _COPY_PHASES
    recorded_pid = _recorded_worker(status, copy_phase)
    first += _worker_reads(recorded_pid)
    # A VM that may run (the phases from Starting on): its guest, in the same round trip.
    read_guest = bool(vm_id) and not deleting and (phase in _GUEST_PHASES or network.reads_adapters(spec, phase))
    if read_guest:
        first += _guest_reads(vm_id)
    guest, out1 = _split_guest(await client.run(first), vm_id, read=read_guest)
    vms, flags, vhds, drives, snapshots, job = _parse(out1, copy_read=want.copy_status)
    processes = _processes(out1)
    if len(flags) != len(paths):
        raise TransientHostError(f"Test-Path returned {len(flags)} results for {len(paths)} paths")
    existing = {p.rstrip("\\").lower() for p, flag in zip(paths, flags, strict=True) if flag}
    base_key = spec.base_vhd.rstrip("\\").lower()
    if known_base is not None and base_key in existing:
        vhds.setdefault(base_key, known_base)
    host_vm, found_by = (vms[0], "id") if vm_id and vms else (None, "")
    running = host_vm is not None and host_vm.state == planner.RUNNING
    obs = Observation(host_name=spec.host_name, vm=host_vm, found_by=found_by, drives=tuple(drives),
                      snapshots=tuple(snapshots), existing=frozenset(existing), vhds=vhds, copy=job, slot=slot,
                      guest=guest if running else None, adapters=guest.adapters if guest is not None else None)

    need = needed_reads(phase, on_checkpoint, status, layout, spec.base_vhd, obs, deleting=deleting)
    if base_apart:
        obs = replace(obs, denied=await _denied_base(client, spec, phase, obs.exists(spec.base_vhd), deleting=deleting))
        if obs.exists(spec.base_vhd) and any(same_path(p, spec.base_vhd) for p in need.vhds):
            base = await _read_base(client, spec.base_vhd)
            vhds[base.path.rstrip("\\").lower()] = base
    second: list[Statement] = [cmdlets.get_vhd(p) for p in need.vhds if obs.vhd(p) is None]
    read_copy = need.copy_status and not want.copy_status
    if read_copy:
        second.append(cmdlets.read_text_file(layout.copy_status))
    # New-VM may have run without its Id reaching the status (a crash right after it) only if its
    # folder exists, or if vm_dir and what New-VM needs exist: New-VM -VHDPath needs the disk, and
    # after a copy it is sent behind the removal of the copy's status file (so while that file is
    # there, it has not run); Quick's vm_dir is made right before New-VM. Only then list the host's
    # VMs to find ours by tag / folder.
    disk_ready = obs.exists(layout.disk) and not obs.exists(layout.copy_status)
    new_vm_possible = obs.exists(layout.vm_dir) and (on_checkpoint or disk_ready)
    list_vms = not vm_id and (obs.exists(config_dir) or new_vm_possible)
    if list_vms:
        second.append(cmdlets.get_all_vms())
    if second:
        out2 = await client.run(second)
        vms2, _, vhds2, _, _, job2 = _parse(out2, copy_read=read_copy)
        vhds.update(vhds2)
        job = job2 if read_copy else job
        if list_vms:
            host_vm, found_by = pick_vm(vms2, None, vm.uid, layout)
        if host_vm is not None and not vm_id:
            third = [cmdlets.get_vm_hard_disk_drives(host_vm.id), cmdlets.get_vm_snapshots(host_vm.id)]
            _, _, _, drives3, snapshots3, _ = _parse(await client.run(third), copy_read=False)
            drives, snapshots = drives3, snapshots3
    checked_pid = await _unrecorded_worker(client, job, recorded_pid, processes,
                                           look=copy_phase and not obs.exists(layout.disk))
    await _read_unknown_chains(client, drives, vhds, existing, recorded_avhdx(status), deleting=deleting)
    return replace(obs, vm=host_vm, found_by=found_by, drives=tuple(drives), snapshots=tuple(snapshots),
                   existing=frozenset(existing), vhds=vhds, copy=job, copy_process=processes.get(checked_pid),
                   copy_process_checked=bool(checked_pid))


def _recorded_worker(status: Mapping[str, Any], copy_phase: bool) -> int:
    """The copy worker's PID the status recorded, while its liveness matters (0: none to look up)."""
    return int((status.get("copy") or {}).get("processId") or 0) if copy_phase else 0


def _worker_reads(pid: int) -> list[Statement]:
    """The copy worker's liveness: the process with the recorded PID (the planner checks it is ours).
    Get-CimInstance of a PID that is gone outputs nothing, so it cannot fail the batch."""
    return [cmdlets.get_process(pid)] if pid else []


async def _unrecorded_worker(client: HyperVClient, job: CopyJob | None, recorded_pid: int,
                             processes: dict[int, ProcessInfo], *, look: bool) -> int:
    """The PID whose process the planner judges: the recorded one, or the one a running copy's status
    file names when the status does not know it (a crash between the start and its record), looked up
    in one more round trip (into `processes`)."""
    if look and job is not None and job.state == "Running" and job.process_id and job.process_id != recorded_pid:
        processes.update(_processes(await client.run([cmdlets.get_process(job.process_id)])))
        return job.process_id
    return recorded_pid


def _guest_reads(vm_id: str) -> list[Statement]:
    """Issue 14: the guest's adapters and KVP items, in the observation's round trip (its heartbeat is a
    property of the VM the observation reads anyway: guest.py)."""
    return [cmdlets.get_vm_network_adapters(vm_id), cmdlets.get_kvp_component(vm_id)]


def _split_guest(out: Sequence[HostObject], vm_id: str, *, read: bool) -> tuple[guest_mod.GuestInfo | None,
                                                                                 list[HostObject]]:
    """The guest read from `out` (if it was asked for) and the rest of `out`, without the guest's objects."""
    guest = guest_mod.parse(out, vm_id) if read else None
    return guest, [obj for obj in out if guest_mod.kind(obj) is None]


async def _read_unknown_chains(client: HyperVClient, drives: Sequence[str], vhds: dict[str, VhdInfo],
                               existing: set[str], recorded: str | None, *, deleting: bool) -> None:
    """After a crash mid-checkpoint the status may not know the .avhdx yet: read its chain too, in one
    more round trip (into `vhds` and `existing`). The .avhdx the status records is not unknown: the
    observation reads its chain when the planner needs it (`needed_reads`; not while it is merged)."""
    missing = [d for d in drives if is_avhdx(d) and d.rstrip("\\").lower() not in vhds and not deleting
               and not same_path(d, recorded)]
    if missing:
        for obj in await client.run([cmdlets.get_vhd(d) for d in missing]):
            if kind_of(obj) == "vhd":
                info = parse_vhd(obj)
                vhds[info.path.rstrip("\\").lower()] = info
                existing.add(info.path.rstrip("\\").lower())


def _processes(out: Sequence[HostObject]) -> dict[int, ProcessInfo]:
    found: dict[int, ProcessInfo] = {}
    for obj in out:
        if kind_of(obj) == "process":
            info = parse_process(obj)
            found[info.process_id] = info
    return found
