"""How a step's outcome is settled (pure): the decisions around observing and acting that are not a
phase's own work: nothing to observe (Retain, terminal), the host changed while we observed, an
action failed (already gone is fine while deleting, a folder that will not go is left), and whether
this VM keeps, takes or frees its copy slot."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from hyperv_operator import conditions as cond
from hyperv_operator.api import DeletionPolicy, Strategy, VirtualMachineSpec
from hyperv_operator.hyperv.errors import ClientClosedError, HostError, PermanentHostError, TransientHostError
from hyperv_operator.provisioning import planner, retry
from hyperv_operator.provisioning.layout import Layout
from hyperv_operator.provisioning.model import Event, VmRef
from hyperv_operator.provisioning.observation import Observation
from hyperv_operator.provisioning.phases import COPY_PHASES, Phase


@dataclass(frozen=True)
class Settled:
    status: dict[str, Any]
    requeue_after: float | None
    events: tuple[Event, ...] = ()
    finished: bool = False
    free_slot: bool = False
    observe_again: bool = False  # the run may go on: observe the host now instead of requeueing
    retrying: bool = False  # keeps status.retry (a transient failure); any other outcome clears it
    one_at_a_time: bool = False  # with observe_again: send the rest of this run's actions one per pipeline


ALONE = frozenset({"RemoveFolders"})
"""Actions sent in a pipeline of their own: their failure is settled differently from the others'
(a folder that will not go ends the deletion), which needs to know that it was theirs."""


def without_host(spec: VirtualMachineSpec, status: Mapping[str, Any], now: datetime, *, vm: VmRef, layout: Layout,
                 deleting: bool) -> Settled | None:
    """A step that needs nothing from the host: deletion with Retain, or a terminal phase."""
    phase = str(status.get("phase") or Phase.PENDING.value)
    if deleting and spec.deletion_policy is DeletionPolicy.RETAIN:
        result = planner.plan_delete(spec, status, Observation(host_name=spec.host_name), now, vm=vm, layout=layout)
        return Settled(result.status, None, result.events, finished=True, free_slot=True)
    if not deleting and (phase == Phase.DELETING.value
                         or (phase == Phase.FAILED.value and not planner.retryable_failure(status))):
        return Settled(dict(status), None, free_slot=True)
    return None


CLIENT_CLOSED_RETRY = 1.0
"""A closed client (replaced after an edit, or the operator shutting down) is retried this soon."""


def client_closed(status: Mapping[str, Any]) -> Settled:
    """The client was closed under the call: nothing happened to the VM or the host, so nothing is
    reported (no condition, message, lastError or event): the status stays as it was before the call."""
    return Settled(dict(status), CLIENT_CLOSED_RETRY, retrying=True)


def _failed(spec: VirtualMachineSpec, status: Mapping[str, Any], intended: Mapping[str, Any], error: HostError,
            now: datetime, *, vm: VmRef, layout: Layout, step: str, deleting: bool,
            free_slot: bool = False, stall_after: float = retry.DELETE_STALL_AFTER) -> Settled:
    """planner.error_status, with transient errors retried on a growing, jittered delay recorded in
    status.retry; a deletion whose host stays unreachable is Stalled after retry.DELETE_STALL_AFTER."""
    if deleting:
        # The deletion has begun even when its first look at the host fails: the phase says Deleting
        # (and Ready=False), as the deletion's first plan would, not the phase the VM had before.
        intended = {**intended, "phase": Phase.DELETING.value}
    if not isinstance(error, TransientHostError):
        new, requeue, events = planner.error_status(spec, status, intended, error, now, vm=vm, layout=layout,
                                                    host_name=spec.host_name, step=step, deleting=deleting)
        if deleting:
            new, events = _deleting_begun(status, new, events, spec, vm, layout, now)
        return Settled(new, requeue, events, free_slot=free_slot)
    record, delay = retry.next_attempt(status, now, vm.uid)
    new, requeue, events = planner.error_status(spec, status, intended, error, now, vm=vm, layout=layout,
                                                host_name=spec.host_name, step=step, deleting=deleting,
                                                retry_in=delay)
    new["retry"] = record
    if deleting:
        new, events = _deleting_begun(status, new, events, spec, vm, layout, now)
    if record["attempts"] > 1:
        events = ()  # one Warning per streak of failures, not one per retry
    if deleting and retry.failing_for(record, now) >= stall_after:
        message = (f"Deleting: host {spec.host_name} unreachable since {record['since']}, still retrying "
                   f"(attempt {record['attempts']}, next at {record['nextRetryAt']}): {error}. To remove this "
                   f"VirtualMachine and leave its VM and files on the host, annotate it "
                   f"{retry.ABANDON_ANNOTATION}=\"true\"")
        prev = status.get("conditions")  # as before this failure: the transition time stays put
        stalled_before = cond.is_true(prev, cond.STALLED)
        new["message"] = message
        new["conditions"] = cond.merge(new.get("conditions"), [
            cond.make(prev, cond.STALLED, True, "DeleteHostUnreachable", message, vm.generation, now),
            cond.make(prev, cond.RECONCILING, True, "Deleting", message, vm.generation, now),
        ])
        if not stalled_before:
            events = (Event("Warning", "DeleteStalled", message),)
    return Settled(new, requeue, events, free_slot=free_slot, retrying=True)


def _deleting_begun(status: Mapping[str, Any], new: dict[str, Any], events: tuple[Event, ...],
                    spec: VirtualMachineSpec, vm: VmRef, layout: Layout, now: datetime
                    ) -> tuple[dict[str, Any], tuple[Event, ...]]:
    """A failed step of a deletion: Ready=False (Deleting) as in the deletion's plans, and the
    PhaseChanged event the first plan would have posted if the phase changes here."""
    prev = new.get("conditions")
    new["conditions"] = cond.merge(prev, [cond.make(prev, cond.READY, False, Phase.DELETING.value,
                                                    str(new.get("message") or ""), vm.generation, now)])
    before = str(status.get("phase") or Phase.PENDING.value)
    if before != Phase.DELETING.value:
        label = f"VM {str(status['vmId'])[:8]}..." if status.get("vmId") else f"VM {layout.vm_name}"
        events = (Event("Normal", "PhaseChanged", f"{spec.strategy.value}: {before} -> Deleting ({label})"), *events)
    return new, events


def observe_failed(spec: VirtualMachineSpec, status: Mapping[str, Any], error: HostError, now: datetime, *,
                   vm: VmRef, layout: Layout, deleting: bool, stall_after: float = retry.DELETE_STALL_AFTER) -> Settled:
    """Reading never fails for a missing object (that is data); a not-found here means the host changed
    while we read it: retry, do not fail the VM."""
    if isinstance(error, ClientClosedError):
        return client_closed(status)
    if isinstance(error, PermanentHostError) and planner.is_not_found(error):
        error = TransientHostError(f"host state changed while observing: {error.message}",
                                   category=error.category, command=error.command)
    return _failed(spec, status, status, error, now, vm=vm, layout=layout, step="observe", deleting=deleting,
                   stall_after=stall_after)


def action_failed(spec: VirtualMachineSpec, status: Mapping[str, Any], batch: Sequence[planner.Plan],
                  error: HostError, now: datetime, *, vm: VmRef, layout: Layout, deleting: bool,
                  stall_after: float = retry.DELETE_STALL_AFTER, looked_again: bool = False) -> Settled:
    """A pipeline of the batch's actions failed with `error` (any prefix of it may have run, and on
    Windows statements after a statement-terminating error may have run too: the next observation
    tells; nothing that must not run after a failure is ever batched, see effects.SAFETY_CRITICAL).

    `status` is the status before the batch; `batch` the plans whose actions were sent, in order.
    """
    actions = [p.action for p in batch if p.action is not None]
    last = batch[-1]
    if isinstance(error, ClientClosedError):
        # The copy may have started before the close: its slot is kept (the next run starts or adopts it).
        return client_closed(status)
    if planner.is_not_found(error) and any(a.tolerate_not_found for a in actions):
        # "Already gone" is what a tolerant action wanted; look again before the rest.
        return Settled(last.status, planner.AFTER_ACTION, last.events, observe_again=True)
    if (deleting and len(actions) == 1 and actions[0].kind == "RemoveFolders"
            and isinstance(error, PermanentHostError)):
        message = f"left folder(s) in place, not empty or not removable: {error.message}"
        done = dict(last.status, message=f"deleted; {message}")
        return Settled(done, None, (*last.events, Event("Warning", "FolderNotRemoved", message)), finished=True)
    # Keep the intent (createdFiles) of every action sent: any of them may have run.
    files: list[str] = []
    for plan in batch:
        for path in plan.status.get("createdFiles") or []:
            if path not in files:
                files.append(path)
    # Quick's New-VM | Set-VM | Checkpoint-VM is followed by a read of the drives of that name: its
    # failure (a JEA role registered before the read was added refuses -VMName) says nothing of the VM,
    # which may well exist with its checkpoint: look again (once per run) rather than fail on it.
    unsure = len(actions) == 1 and actions[0].kind == planner.NEW_VM_CHECKPOINTED
    if (len(actions) > 1 or unsure) and not looked_again:
        # Which action failed, and which of the others ran (on Windows, those after it too), only the
        # host can tell: look again from the status before the batch, and send the next action alone,
        # so that its failure, if it fails again, is its own. Nothing is decided on the batch's error.
        looked = dict(status)
        if files:
            looked["createdFiles"] = list(dict.fromkeys([*(status.get("createdFiles") or []), *files]))
        return Settled(looked, planner.AFTER_ACTION, observe_again=True, one_at_a_time=True)
    # Retry from the action's phase.
    intended = dict(batch[0].status)
    if files:
        intended["createdFiles"] = files
    step = "; ".join(a.description for a in actions)
    return _failed(spec, status, intended, error, now, vm=vm, layout=layout, step=step, deleting=deleting,
                   free_slot=any(a.starts_copy for a in actions), stall_after=stall_after)


def wants_slot(result: planner.Plan) -> bool:
    """The plan needs a copy slot: it starts a copy, or it waits in a copy phase because none was free
    as last read (then the VM takes its place in the host's queue, or the slot freed since)."""
    if result.action is not None:
        return result.action.starts_copy
    copy = result.status.get("copy") or {}
    return bool(copy.get("queued")) and str(result.status.get("phase")) in _COPY_PHASE_NAMES


_COPY_PHASE_NAMES = frozenset(p.value for p in COPY_PHASES)

SlotUse = Literal["take", "hold", "keep", "free"]


def slot_use(action: planner.Action | None, obs: Observation, layout: Layout, *, copy_ahead: bool = False) -> SlotUse:
    """A copy about to start takes a slot; a copy running on the host keeps (or, after a restart,
    reclaims) its slot unless we are cancelling it; a VM whose copy is still ahead in its phase table
    keeps a slot it took early (the engine takes it while New-VM runs, when one is free); anything
    else frees it."""
    if action is not None and action.starts_copy:
        return "take"
    if action is not None and action.kind == "CancelCopy":
        return "free"
    if obs.copy is not None and obs.copy.state == "Running" and not obs.exists(layout.disk):
        return "hold"
    return "keep" if copy_ahead else "free"


def copy_ahead(strategy: Strategy, phase: str) -> bool:
    """Whether a VM in `phase` (as a plan left it) has its base copy still ahead: a phase of its
    table before the copy phase (Failed, Deleting and the phases after the copy are not)."""
    order = [p.value for p in planner.phases(strategy)]
    copy = next((i for i, p in enumerate(planner.phases(strategy)) if p in COPY_PHASES), None)
    return copy is not None and phase in order[:copy]


HOST_MISCONFIGURED_RETRY = 30.0


def _waiting(status: Mapping[str, Any], generation: int, reason: str, message: str, now: datetime, *,
             stalled: bool) -> dict[str, Any]:
    new = dict(status)
    prev = new.get("conditions")
    new["conditions"] = cond.merge(prev, [
        cond.make(prev, cond.RECONCILING, not stalled, reason, message, generation, now),
        cond.make(prev, cond.STALLED, stalled, reason, message, generation, now),
    ])
    new["phase"] = new.get("phase") or Phase.PENDING.value
    new["message"] = message
    return new


def host_missing(status: Mapping[str, Any], generation: int, host: str, now: datetime, *, deleting: bool,
                 retry: float) -> Settled:
    """No HyperVHost of that name: wait for it; a deletion with nothing created on any host is done."""
    if deleting and not status.get("vmId") and not status.get("createdFiles"):
        return Settled(dict(status), None, finished=True)
    message = f"waiting for HyperVHost {host} to exist"
    return Settled(_waiting(status, generation, "HostNotFound", message, now, stalled=False), retry)


def _rechecked(waiting: dict[str, Any], status: Mapping[str, Any], now: datetime, key: str,
               cap: float, floor: float = 0.0) -> Settled:
    """A wait for something outside (a host, a Secret, an admission) is re-checked on a backoff that
    starts short (the fix is often seconds away: GitOps applying the host after the VM) and grows to
    `cap` (never below `floor`); the attempts show in status.retry. An edit of the host or its Secret
    re-checks it at once (wakeups.py), whatever the backoff."""
    record, delay = retry.next_attempt(status, now, key)
    delay = min(max(delay, floor), max(cap, floor))
    record["nextRetryAt"] = cond.timestamp(now + timedelta(seconds=delay))
    waiting["retry"] = record
    return Settled(waiting, delay, retrying=True)


def host_misconfigured(status: Mapping[str, Any], generation: int, message: str, now: datetime, *,
                       key: str = "", cap: float = HOST_MISCONFIGURED_RETRY, floor: float = 0.0) -> Settled:
    """The HyperVHost cannot be used as configured (its Secret, its settings): stalled until it changes."""
    return _rechecked(_waiting(status, generation, "HostMisconfigured", message, now, stalled=True), status, now,
                      key, cap, floor)


def refused(status: Mapping[str, Any], generation: int, reason: str, message: str, now: datetime, *,
            retry: float, key: str = "", floor: float = 0.0) -> Settled:
    """The VM may not use its host (host missing, namespace not admitted, a path outside the host's roots):
    Stalled with the reason, re-checked in the cluster only (backoff from ~1 s up to `retry` seconds);
    nothing is sent to any host."""
    return _rechecked(_waiting(status, generation, reason, message, now, stalled=True), status, now, key, retry,
                      floor)
