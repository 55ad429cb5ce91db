"""After an action: `absorb` folds its output into the status; `error_status` turns a host error into
the status the handler writes."""

from __future__ import annotations

import copy as _copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import VirtualMachineSpec
from hyperv_operator.hyperv import errors
from hyperv_operator.hyperv.commands import HostObject
from hyperv_operator.hyperv.errors import HostError, HostUnreachableError, TransientHostError
from hyperv_operator.provisioning import bootstrap as bootstrap_mod
from hyperv_operator.provisioning import unattend as unattend_mod
from hyperv_operator.provisioning.layout import Layout, is_avhdx, same_path
from hyperv_operator.provisioning.model import Event, VmRef
from hyperv_operator.provisioning.observation import Observation, checkpointed_vm, kind_of, parse_vm
from hyperv_operator.provisioning.phases import Phase
from hyperv_operator.provisioning.planner.status import _fail
from hyperv_operator.provisioning.planner.table import PHASE_TABLES
from hyperv_operator.provisioning.planner.work import (
    CLEANUP_RETRY,
    HOST_ACCESS_CATEGORIES,
    NEW_VM_CHECKPOINTED,
    TRANSIENT_BACKOFF,
    Action,
    _Fail,
    _phase_of,
    _Work,
)

# --- action results and errors -------------------------------------------------------------------


def absorb(action: Action, status: Mapping[str, Any], output: Sequence[HostObject]) -> dict[str, Any]:
    """Fold an action's output into the status (pure)."""
    s = _copy.deepcopy(dict(status))
    if action.kind == "NewVM":
        for obj in output:
            if kind_of(obj) == "vm":
                s["vmId"] = parse_vm(obj).id
                break
    elif action.kind == NEW_VM_CHECKPOINTED:
        made = checkpointed_vm(output)
        if made is not None:
            s["vmId"] = made[0]
            _record_avhdx(s, made[2])
    elif action.kind == "Checkpoint":
        _record_avhdx(s, [str(obj.get("Path") or "") for obj in output if kind_of(obj) == "drive"])
    elif action.kind == bootstrap_mod.BUILD:
        s = bootstrap_mod.absorb(s, output)
    elif action.kind == unattend_mod.MOUNT:  # issue 14: the VM's own disk's drive letters
        s = unattend_mod.absorb(s, output)
    elif action.kind == "StartCopy":
        for obj in output:
            pid = obj.get("ProcessId")
            if pid:
                created = obj.get("ProcessCreatedAt")
                s["copy"] = {**dict(s.get("copy") or {}), "processId": int(pid),
                             "processCreatedAt": str(created) if created else None}
    return s


def _record_avhdx(s: dict[str, Any], drives: Sequence[str]) -> None:
    """The checkpoint's .avhdx (the VM's drive now): a file we created, and the VM's disk."""
    for path in drives:
        if is_avhdx(path):
            files = list(s.get("createdFiles") or [])
            if not any(same_path(path, f) for f in files):
                files.append(path)
            s["createdFiles"] = files
            disk = dict(s.get("disk") or {})
            s["disk"] = {"path": path, "type": "Differencing",
                         "parentPath": disk.get("parentPath") if not is_avhdx(disk.get("path")) else None}


def _raised_by(error: HostError, cmdlet_class: str) -> bool:
    """Whether the cmdlet of that class raised the error: a cmdlet's FullyQualifiedErrorId ends with its
    type's name ("AccessDenied,Microsoft.HyperV.PowerShell.Commands.CheckpointVM")."""
    return error.fq_error_id.rsplit(",", 1)[-1].rsplit(".", 1)[-1].lower() == cmdlet_class.lower()


def is_not_found(error: HostError) -> bool:
    """By FullyQualifiedErrorId, exception type and category (see hyperv/errors.py), never by text."""
    return errors.is_not_found(error)


def error_status(
    spec: VirtualMachineSpec, status: Mapping[str, Any], intended: Mapping[str, Any], error: HostError,
    now: datetime, *, vm: VmRef, layout: Layout, host_name: str, step: str, deleting: bool = False,
    retry_in: float | None = None,
) -> tuple[dict[str, Any], float | None, tuple[Event, ...]]:
    """The status after a failed host call: keep the phase on transient errors (retry), Failed on
    permanent ones. `intended` is the plan's status; its createdFiles are kept (intent)."""
    s = _copy.deepcopy(dict(status))
    for key in ("createdFiles", "vmId", "vmName", "vmDir", "disk", "checkpointName", "timings", "stopRequestedAt",
                "checkpointTypeBefore"):
        if intended.get(key):  # intent and identity survive the failure
            s[key] = _copy.deepcopy(intended[key])
    if intended.get("phase") not in (None, Phase.FAILED.value):
        s["phase"] = intended["phase"]  # the phase whose host step was attempted
    phase = _phase_of(s)
    w = _Work(spec, s, Observation(host_name=host_name), now, vm, layout, PHASE_TABLES[spec.strategy])
    prev, gen = s.get("conditions"), vm.generation
    s["lastError"] = f"{step}: {error}"
    if isinstance(error, TransientHostError):
        reason = "HostUnreachable" if isinstance(error, HostUnreachableError) else "HostBusy"
        delay = TRANSIENT_BACKOFF if retry_in is None else retry_in  # [reliability] backoff from settle
        s["message"] = f"{phase.value}: {step} failed, retrying in {delay:g}s: {error}"
        s["conditions"] = cond.merge(prev, [
            cond.make(prev, cond.RECONCILING, True, reason, s["message"], gen, now),
            cond.make(prev, cond.STALLED, False, "NoError", "", gen, now),
        ])
        return s, delay, (Event("Warning", reason, f"{step} on host {host_name}: {error}"),)
    if error.category in HOST_ACCESS_CATEGORIES:
        # The host refused *us* (credentials, TLS trust), not this VM: stall visibly, keep the phase
        # and retry, so fixing the HyperVHost's Secret resumes the VM where it stopped.
        s["phase"] = phase.value
        s["message"] = f"{phase.value}: cannot use host {host_name}, retrying in {int(CLEANUP_RETRY)}s: {error}"
        updates = [
            cond.make(prev, cond.STALLED, True, "HostAccessDenied", s["message"], gen, now),
            cond.make(prev, cond.RECONCILING, False, "HostAccessDenied", s["message"], gen, now),
        ]
        if phase is not Phase.PROVISIONED and not cond.is_true(prev, cond.READY):
            updates.append(cond.make(prev, cond.READY, False, "HostAccessDenied", s["message"], gen, now))
        s["conditions"] = cond.merge(prev, updates)
        return s, CLEANUP_RETRY, (Event("Warning", "HostAccessDenied", f"{step} on host {host_name}: {error}"),)
    if deleting:
        s["message"] = f"Deleting: {step} failed, retrying in {int(CLEANUP_RETRY)}s: {error}"
        s["conditions"] = cond.merge(prev, [
            cond.make(prev, cond.STALLED, True, "CleanupFailed", s["message"], gen, now),
            cond.make(prev, cond.RECONCILING, True, Phase.DELETING.value, s["message"], gen, now),
        ])
        return s, CLEANUP_RETRY, (Event("Warning", "CleanupFailed", f"{step} on host {host_name}: {error}"),)
    if phase is Phase.PROVISIONED:  # a failed power action does not un-provision the VM
        s["message"] = f"Provisioned: {step} failed, retrying in {int(CLEANUP_RETRY)}s: {error}"
        s["conditions"] = cond.merge(prev, [
            cond.make(prev, cond.READY, False, "PowerActionFailed", s["message"], gen, now),
            cond.make(prev, cond.RECONCILING, True, "PowerActionFailed", s["message"], gen, now),
        ])
        return s, CLEANUP_RETRY, (Event("Warning", "PowerActionFailed", f"{step} on host {host_name}: {error}"),)
    checkpoint_failed = phase is Phase.CHECKPOINTING or _raised_by(error, "CheckpointVM")  # also in New-VM's pipe
    if checkpoint_failed and error.category == "PermissionDenied":
        # Checkpoint-VM puts Quick's .avhdx beside the base: the base's folder must be writable.
        folder = spec.base_vhd.rsplit("\\", 1)[0]
        result = _fail(w, phase, _Fail("BaseFolderNotWritable",
                                       f"{step} failed on host {host_name}: Hyper-V creates Quick's checkpoint disk "
                                       f"beside the base, in {folder}, and may not write there ({error}). Make that "
                                       f"folder writable for the host (the base file itself stays read-only), or use "
                                       f"strategy Copy or Differencing"))
        return result.status, None, result.events
    reason = "BaseDiskNotFound" if (is_not_found(error) and phase is Phase.PENDING) else "HostRejected"
    result = _fail(w, phase, _Fail(reason, f"{step} failed on host {host_name}: {error}"))
    return result.status, None, result.events
