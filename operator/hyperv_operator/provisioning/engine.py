"""The provisioning engine: one reconcile step per call (observe -> plan -> act).

`handlers.py` (kopf glue) calls `reconcile` / `finalize`, writes `StepOutcome.status`, posts the events
and calls again after `requeue_after` seconds. Decisions live in the pure `planner`; this module only
does I/O around it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from hyperv_operator.api import DeletionPolicy, HyperVHostSpec, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets, second_hop
from hyperv_operator.hyperv.client import HyperVClient
from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import HostError, HostUnreachableError, PermanentHostError, TransientHostError
from hyperv_operator.provisioning import guest as guest_mod
from hyperv_operator.provisioning import planner
from hyperv_operator.provisioning.layout import Layout, is_avhdx, layout_for, same_path
from hyperv_operator.provisioning.model import Event, VmRef
from hyperv_operator.provisioning.observation import (
    CopyJob,
    Observation,
    SlotView,
    VhdInfo,
    kind_of,
    parse_vhd,
    parse_vm,
    pick_vm,
)
from hyperv_operator.provisioning.phases import Phase

__all__ = ["CopySlots", "Event", "StepOutcome", "VmRef", "finalize", "observe", "reconcile"]

log = logging.getLogger("hyperv_operator.provisioning")


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
    return await _step(client, vm, spec, status, host, host_key, slots, now, deleting=False)


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
    return await _step(client, vm, spec, status, host, host_key, slots, now, deleting=True)


def _complete(new: Mapping[str, Any], old: Mapping[str, Any]) -> dict[str, Any]:
    """The full status: keys that disappeared are set to None so the handler deletes them."""
    result = dict(new)
    for key in old:
        result.setdefault(key, None)
    return result


async def _step(
    client: HyperVClient,
    vm: VmRef,
    spec: VirtualMachineSpec,
    status: Mapping[str, Any],
    host: HyperVHostSpec,
    host_key: str,
    slots: CopySlots,
    now: datetime,
    *,
    deleting: bool,
) -> StepOutcome:
    who = f"{vm.namespace}/{vm.name}"
    layout = layout_for(vm.name, vm.uid, spec.vm_path, host.default_vm_path)
    phase = str(status.get("phase") or Phase.PENDING.value)
    if deleting and spec.deletion_policy is DeletionPolicy.RETAIN:
        result = planner.plan_delete(spec, status, Observation(host_name=spec.host_name), now, vm=vm, layout=layout)
        slots.release(host_key, vm.uid)
        log.info("%s: deletionPolicy Retain: leaving VM and files on host %s", who, spec.host_name)
        return StepOutcome(_complete(result.status, status), None, result.events, finished=True)
    if not deleting and (phase == Phase.DELETING.value
                         or (phase == Phase.FAILED.value and not planner.retryable_failure(status))):
        slots.release(host_key, vm.uid)
        return StepOutcome(_complete(dict(status), status), None, ())  # terminal: nothing to observe
    holders = slots.holders(host_key) - {vm.uid}
    limit = host.max_concurrent_copies
    slot = SlotView(available=slots.can_acquire(host_key, vm.uid, limit), running=len(holders), limit=limit)
    try:
        obs = await observe(client, vm, spec, status, layout, slot, deleting=deleting)
    except HostError as error:
        log.warning("%s [%s]: observing host %s failed: %s", who, phase, spec.host_name, error)
        if isinstance(error, PermanentHostError) and planner.is_not_found(error):
            error = TransientHostError(f"host state changed while observing: {error.message}",
                                       category=error.category, command=error.command)
        new, requeue, events = planner.error_status(
            spec, status, status, error, now, vm=vm, layout=layout, host_name=spec.host_name, step="observe",
            deleting=deleting)
        return StepOutcome(_complete(new, status), requeue, events)

    result = (planner.plan_delete if deleting else planner.plan)(spec, status, obs, now, vm=vm, layout=layout)
    new_phase = str(result.status.get("phase"))
    if new_phase != phase:
        log.info("%s: phase %s -> %s", who, phase, new_phase)

    if result.action is not None and result.action.starts_copy and not slots.try_acquire(host_key, vm.uid, limit):
        # Another VM on this host took the last slot while we were observing: plan again without one.
        running = len(slots.holders(host_key) - {vm.uid})
        obs = replace(obs, slot=SlotView(available=False, running=running, limit=limit))
        result = planner.plan(spec, status, obs, now, vm=vm, layout=layout)
        new_phase = str(result.status.get("phase"))

    copy_running = obs.copy is not None and obs.copy.state == "Running" and not obs.exists(layout.disk)
    action = result.action
    if action is not None and action.starts_copy:
        pass  # the slot was taken just above, with no await in between
    elif copy_running and not (action is not None and action.kind == "CancelCopy"):
        slots.adopt(host_key, vm.uid)  # a copy running on the host keeps (or reclaims) its slot
    else:
        slots.release(host_key, vm.uid)

    if action is None:
        log.debug("%s [%s]: %s", who, new_phase, result.status.get("message"))
        return StepOutcome(_complete(result.status, status), result.requeue_after, result.events, result.finished)

    log.info("%s [%s]: host %s: %s", who, new_phase, spec.host_name, action.description)
    try:
        output = await client.run(action.statements)
    except HostError as error:
        if action.tolerate_not_found and planner.is_not_found(error):
            log.info("%s [%s]: %s: already gone (%s)", who, new_phase, action.kind, error.message)
            return StepOutcome(_complete(result.status, status), planner.AFTER_ACTION, result.events)
        if deleting and action.kind == "RemoveFolders" and isinstance(error, PermanentHostError):
            message = f"left folder(s) in place, not empty or not removable: {error.message}"
            log.warning("%s [Deleting]: %s", who, message)
            done = dict(result.status, message=f"deleted; {message}")
            return StepOutcome(_complete(done, status), None,
                               (*result.events, Event("Warning", "FolderNotRemoved", message)), finished=True)
        if action.starts_copy:
            slots.release(host_key, vm.uid)
        log.warning("%s [%s]: host %s: %s failed: %s", who, new_phase, spec.host_name, action.kind, error)
        new, requeue, events = planner.error_status(
            spec, status, result.status, error, now, vm=vm, layout=layout, host_name=spec.host_name,
            step=action.description, deleting=deleting)
        return StepOutcome(_complete(new, status), requeue, events)
    new_status = planner.absorb(action, result.status, output)
    if action.kind == "NewVM" and new_status.get("vmId"):
        log.info("%s [%s]: created VM %s", who, new_phase, new_status["vmId"])
    return StepOutcome(_complete(new_status, status), result.requeue_after, result.events, result.finished)


# --- observe -------------------------------------------------------------------------------------

_NO_COPY_READ = frozenset({Phase.PROVISIONED.value, Phase.REPARENTING.value, Phase.MERGING.value,
                           Phase.FAILED.value})
_BASE_READ = frozenset({Phase.PENDING.value, Phase.FAILED.value})


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


async def observe(
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
                     *([str(disk_path)] if disk_path else []),
                     *((layout.copy_status_tmp, *layout.folders_bottom_up) if deleting else ())])
    first = await client.run([cmdlets.get_all_vms(), *(cmdlets.test_path(p) for p in paths)])
    vms = [parse_vm(o) for o in first if kind_of(o) == "vm"]
    flags = [bool(o.value) for o in first if kind_of(o) == "bool"]
    if len(flags) != len(paths):
        raise TransientHostError(f"Test-Path returned {len(flags)} results for {len(paths)} paths")
    existing = frozenset(p.rstrip("\\").lower() for p, flag in zip(paths, flags, strict=True) if flag)
    host_vm, found_by = pick_vm(vms, status.get("vmId"), vm.uid, layout)

    def exists(path: str | None) -> bool:
        return path is not None and path.rstrip("\\").lower() in existing

    # Test-Path answers $false for a share the session may not read (the second hop): ask again.
    denied = frozenset(
        [spec.base_vhd.rstrip("\\").lower()]
        if phase == Phase.PENDING.value and not deleting and not exists(spec.base_vhd)
        and second_hop.unc_server(spec.base_vhd) and await second_hop.read_denied(client, spec.base_vhd)
        else []
    )

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
    if host_vm is not None:
        second += [cmdlets.get_vm_hard_disk_drives(host_vm.id), cmdlets.get_vm_snapshots(host_vm.id)]
    # --- guest (issue 14): integration services of a running VM, in the same round trip ---
    read_guest = host_vm is not None and host_vm.state == planner.RUNNING and not deleting
    if read_guest and host_vm is not None:
        second += [cmdlets.get_vm_heartbeat(host_vm.id), cmdlets.get_vm_network_adapters(host_vm.id),
                   cmdlets.get_kvp_components()]
    out: list[HostObject] = await client.run(second) if second else []
    guest = guest_mod.parse(out, host_vm.id) if read_guest and host_vm is not None else None
    out = [obj for obj in out if guest_mod.kind(obj) is None]
    # --- end guest ---
    drives: list[str] = []
    snapshots: list[str] = []
    job: CopyJob | None = None
    for obj in out:
        kind = kind_of(obj)
        if kind == "vhd":
            info = parse_vhd(obj)
            vhds[info.path.rstrip("\\").lower()] = info
        elif kind == "drive":
            drives.append(str(obj.get("Path") or ""))
        elif kind == "snapshot":
            snapshots.append(str(obj.get("Name") or ""))
        elif kind == "string" and read_copy:
            job = CopyJob.parse(str(obj.value))
    # After a crash mid-checkpoint the status may not know the .avhdx yet: read its chain too.
    missing = [d for d in drives if is_avhdx(d) and d.rstrip("\\").lower() not in vhds and not deleting]
    extra_existing = set(existing)
    if missing:
        for obj in await client.run([cmdlets.get_vhd(d) for d in missing]):
            if kind_of(obj) == "vhd":
                info = parse_vhd(obj)
                vhds[info.path.rstrip("\\").lower()] = info
                extra_existing.add(info.path.rstrip("\\").lower())
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
        guest=guest,
    )
