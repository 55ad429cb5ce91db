"""`plan_delete`: the next step of finalize (cancel a copy, remove the VM, our files, our folders)."""

from __future__ import annotations

import copy as _copy
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import DeletionPolicy, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.provisioning.layout import Layout, is_avhdx, is_checkpoint_of, same_path
from hyperv_operator.provisioning.model import VmRef
from hyperv_operator.provisioning.observation import Observation
from hyperv_operator.provisioning.phases import Phase
from hyperv_operator.provisioning.planner.copying import _copy_worker_alive
from hyperv_operator.provisioning.planner.table import PHASE_TABLES
from hyperv_operator.provisioning.planner.work import AFTER_ACTION, MERGE_POLL, OFF, Action, Plan, _phase_of, _Work

# --- finalize ------------------------------------------------------------------------------------


def _deletable(w: _Work, path: str) -> bool:
    """Only our files: under our uid-specific vm_dir, or the checkpoint .avhdx recorded for this VM;
    never the base, never anything else."""
    if same_path(path, w.spec.base_vhd):
        return False
    if path.lower().startswith(w.layout.vm_dir.lower() + "\\"):
        return True
    # Outside vm_dir only the quick-provision checkpoint disk Hyper-V put beside the base:
    # <base folder>\<base stem>_<GUID>.avhdx, and only if it was recorded for this VM.
    recorded = any(same_path(path, f) for f in w.status.get("createdFiles") or []) or same_path(
        path, (w.status.get("disk") or {}).get("path"))
    return recorded and is_checkpoint_of(path, w.spec.base_vhd)


def plan_delete(
    spec: VirtualMachineSpec, status: Mapping[str, Any], observation: Observation, now: datetime, *,
    vm: VmRef, layout: Layout,
) -> Plan:
    """The next step of deletion. Pure. `finished=True` when the finalizer may go."""
    w = _Work(spec, _copy.deepcopy(dict(status)), observation, now, vm, layout, PHASE_TABLES[spec.strategy])
    obs = observation
    if spec.deletion_policy is DeletionPolicy.RETAIN:
        w.status["message"] = (f"deletionPolicy Retain: VM {status.get('vmId') or layout.vm_name} and its files in "
                               f"{layout.vm_dir} were left on host {obs.host_name}")
        w.event("Retained", w.status["message"])
        return Plan(None, w.status, None, tuple(w.events), finished=True)
    start = _phase_of(status)
    if start is not Phase.DELETING:
        w.event("PhaseChanged", f"{spec.strategy.value}: {start.value} -> Deleting ({w.vm_label})")
    w.status["phase"] = Phase.DELETING.value
    w.status["lastError"] = None

    def act(action: Action, message: str, requeue: float = AFTER_ACTION) -> Plan:
        return _deleting(w, message, action, requeue)

    job = obs.copy
    if job is not None and job.state == "Running" and not obs.exists(layout.disk):
        pid = job.process_id or int((status.get("copy") or {}).get("processId") or 0)
        # Stop only a process proven to be our worker: its PID may now be another VM's vmwp.exe.
        ours = pid and _copy_worker_alive(w, job)
        statements = ([cmdlets.stop_process(pid)] if ours else []) + [cmdlets.remove_file(layout.copy_status)]
        how = (f"stopping worker process {pid}" if ours
               else f"process {pid} is not running or is not the copy worker: not stopped")
        w.event("CopyCancelled", f"cancelling the background copy to {layout.disk} ({how})")
        return act(Action("CancelCopy", tuple(statements), " ; ".join(str(s) for s in statements),
                          tolerate_not_found=True), f"cancelling the background copy ({how})")
    host_vm = obs.vm
    if host_vm is not None:
        if host_vm.merging:
            return _deleting(w, f"waiting for the merge of VM {host_vm.id} to finish before removing it", None,
                             MERGE_POLL)
        for drive in obs.drives:  # record the checkpoint disk before the VM that names it goes away
            if is_avhdx(drive) and not any(same_path(drive, f) for f in w.status.get("createdFiles") or []):
                w.created(drive)
                return _deleting(w, f"recording checkpoint disk {drive} for removal", None, 0.0)
        statements = ([] if host_vm.state == OFF else [cmdlets.stop_vm(host_vm.id, turn_off=True)])
        statements.append(cmdlets.remove_vm(host_vm.id))
        return act(Action("RemoveVM", tuple(statements), f"Stop-VM {host_vm.id} -TurnOff; Remove-VM {host_vm.id}",
                          tolerate_not_found=True), f"turning off and removing VM {host_vm.id}")
    partial = obs.vhd(layout.config_partial) if obs.exists(layout.config_partial) else None
    if partial is not None and partial.attached:  # issue 14: built half-way, still mounted on the host
        return act(Action("DismountConfigDisk", (cmdlets.dismount_vhd(layout.config_partial),),
                          f"Dismount-VHD {layout.config_partial}", tolerate_not_found=True),
                   f"dismounting the incomplete configuration disk {layout.config_partial}")
    own = obs.vhd(layout.disk) if obs.exists(layout.disk) else None
    if own is not None and own.attached:  # issue 14: mounted on the host to write unattend.xml (unattend.py)
        return act(Action("DismountSystemDisk", (cmdlets.dismount_vhd(layout.disk),),
                          f"Dismount-VHD {layout.disk}", tolerate_not_found=True),
                   f"dismounting the VM's disk {layout.disk} (mounted to write unattend.xml)")
    candidates: list[str] = []
    for path in [*(w.status.get("createdFiles") or []), *layout.owned_files]:
        if not any(same_path(path, c) for c in candidates):
            candidates.append(path)
    files = [p for p in candidates if obs.exists(p) and _deletable(w, p)]
    if files:
        return act(Action("RemoveFiles", tuple(cmdlets.remove_file(p) for p in files),
                          "Remove-Item " + ", ".join(files), tolerate_not_found=True),
                   "removing files created for this VM: " + ", ".join(files))
    folders = [f for f in layout.folders_bottom_up if obs.exists(f)]
    if folders:
        return act(Action("RemoveFolders", tuple(cmdlets.remove_empty_directory(f) for f in folders),
                          "Remove-Item (empty folders) " + ", ".join(folders), tolerate_not_found=True),
                   "removing empty folders " + ", ".join(folders))
    w.event("Deleted", f"VM and files of {vm.namespace}/{vm.name} removed from host {obs.host_name}; base "
                       f"{spec.base_vhd} untouched")
    w.status["message"] = "deleted"
    return Plan(None, w.status, None, tuple(w.events), finished=True)


def _deleting(w: _Work, message: str, action: Action | None, requeue: float) -> Plan:
    w.status["message"] = f"Deleting: {message}"
    prev, gen = w.status.get("conditions"), w.vm.generation
    w.status["conditions"] = cond.merge(prev, [
        cond.make(prev, cond.RECONCILING, True, Phase.DELETING.value, w.status["message"], gen, w.now),
        cond.make(prev, cond.READY, False, Phase.DELETING.value, w.status["message"], gen, w.now),
    ])
    return Plan(action, w.status, requeue, tuple(w.events))
