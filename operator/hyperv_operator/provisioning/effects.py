"""What a host action does to the observation (pure), so one handler run can go on without re-reading.

`expect(action, obs, layout, spec)` is the observation after `action` succeeded, when it does not
depend on the action's output (the engine may then plan the next action on it and send both in one
pipeline). `fold(action, obs, output, ...)` is the same with the output in hand (a new VM's Id, the
checkpoint's .avhdx), used once the pipeline ran. Both return None for an action whose effect is
unknown (a copy, a merge, a shutdown, an action kind this module does not know): the engine then
observes the host again, or requeues. Guessing wrong would only cost a round trip, never a wrong
host command: the planner re-checks everything on the next real observation. A batch does not stop
at a failed statement on Windows (the next one runs: see SAFETY_CRITICAL), and any prefix may have run
when the operator dies; the next observation tells what did.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from hyperv_operator.api import UID_TAG_PREFIX, VirtualMachineSpec
from hyperv_operator.hyperv.commands import HostObject
from hyperv_operator.provisioning import planner
from hyperv_operator.provisioning.layout import Layout, join
from hyperv_operator.provisioning.observation import (
    CopyJob,
    Observation,
    VhdInfo,
    VmInfo,
    checkpointed_vm,
    kind_of,
    parse_vhd,
    parse_vm,
)


def _key(path: str) -> str:
    return path.rstrip("\\").lower()


def _with(obs: Observation, *paths: str) -> frozenset[str]:
    return obs.existing | {_key(p) for p in paths}


def _without(obs: Observation, *paths: str) -> frozenset[str]:
    return obs.existing - {_key(p) for p in paths}


def _paths_of(action: object, parameter: str = "LiteralPath") -> list[str]:
    paths: list[str] = []
    for statement in getattr(action, "statements", ()):
        for command in statement.commands:
            value = command.parameter(parameter)
            if isinstance(value, str):
                paths.append(value)
    return paths


def expect(action: object, obs: Observation, layout: Layout, spec: VirtualMachineSpec,
           uid: str) -> Observation | None:
    """The observation after `action` succeeded, if its effect does not depend on its output.
    Never for a SAFETY_CRITICAL action: nothing is planned, or batched, behind it until the host answers."""
    kind = str(getattr(action, "kind", ""))
    if kind in SAFETY_CRITICAL:
        return None
    vm = obs.vm
    if kind == "CreateDifferencingDisk":
        vhds = dict(obs.vhds)
        vhds[_key(layout.disk)] = VhdInfo(layout.disk, "Differencing", spec.base_vhd)
        return replace(obs, existing=_with(obs, layout.vm_dir, layout.disk), vhds=vhds)
    if kind == "ConfigureVM" and vm is not None:
        quick = any(c.parameter("CheckpointType") for s in getattr(action, "statements", ()) for c in s.commands)
        notes = vm.notes if vm.tagged_for(uid) else f"{UID_TAG_PREFIX}{uid}"
        return replace(obs, vm=replace(vm, notes=notes, processor_count=spec.cpus,
                                       checkpoint_type="Standard" if quick else vm.checkpoint_type))
    if kind == "StartVM" and vm is not None:
        return replace(obs, vm=replace(vm, state="Running"))
    if kind in ("RemoveCopyStatus", "RemoveFiles", "RemoveFolders"):
        return replace(obs, existing=_without(obs, *_paths_of(action)))
    return None


SAFETY_CRITICAL = frozenset({"Checkpoint", planner.NEW_VM_CHECKPOINTED, "Reparent", "RemoveVM"})
"""Actions whose failure must stop what follows, which Windows does not promise inside one pipeline:
in a batch of statements only an ActionPreferenceStopException (a non-terminating error under
-ErrorAction Stop) ends the batch; a statement-terminating error is appended to the error stream and
the next statement runs (PowerShell.cs BatchInvocationWorkItem / BatchInvocationCallback). Start-VM
after a failed Checkpoint-VM would run the VM on the base, Remove-VMSnapshot after a failed Set-VHD
would merge the checkpoint into the base, and the VM's files would go behind a failed Remove-VM while
the VM still uses them. `expect` gives no effect for them: they are sent, and the next step is planned
on the host's answer (`fold`)."""


def fold(action: object, obs: Observation, output: Sequence[HostObject], layout: Layout,
         spec: VirtualMachineSpec, uid: str) -> Observation | None:
    """The observation after `action` succeeded, from its output where needed; None = observe again."""
    kind = str(getattr(action, "kind", ""))
    if kind == "NewVM":
        vms = [parse_vm(o) for o in output if kind_of(o) == "vm"]
        if not vms:
            return None
        # New-VM | Set-VM -Passthru | Start-VM -Passthru: the last object is the VM as it is now.
        vm = vms[-1]
        return replace(obs, vm=vm, found_by="id",
                       existing=_with(obs, layout.vm_dir, join(layout.vm_dir, layout.vm_name)),
                       drives=(spec.base_vhd if planner.runs_on_checkpoint(spec.strategy) else layout.disk,))
    if kind == planner.NEW_VM_CHECKPOINTED:
        # The VMSnapshot names the VM; the VM is as New-VM | Set-VM made it: Off, tagged, configured.
        made = checkpointed_vm(output)
        if made is None or not made[2]:
            return None
        vm_id, name, drives = made
        vm = VmInfo(id=vm_id, name=name or layout.vm_name, state="Off", notes=f"{UID_TAG_PREFIX}{uid}",
                    path=join(layout.vm_dir, layout.vm_name), processor_count=spec.cpus, checkpoint_type="Standard",
                    memory_startup=spec.memory_bytes, dynamic_memory=False, generation=spec.generation)
        return replace(obs, vm=vm, found_by="id", drives=drives, snapshots=(layout.checkpoint_name,),
                       existing=_with(obs, layout.vm_dir, join(layout.vm_dir, layout.vm_name), *drives))
    if kind == "RemoveVM":  # it succeeded: the VM is gone
        return replace(obs, vm=None, drives=(), snapshots=())
    if kind == "Checkpoint":
        drives = tuple(str(o.get("Path") or "") for o in output if kind_of(o) == "drive")
        if not drives:
            return None
        return replace(obs, drives=drives, snapshots=(*obs.snapshots, layout.checkpoint_name),
                       existing=_with(obs, *drives))
    if kind == "Reparent":
        # Set-VHD -Passthru: the disk as the host has it now; the merge is planned on its real parent.
        answered = [parse_vhd(o) for o in output if kind_of(o) == "vhd"]
        if not answered:
            return None
        vhds = dict(obs.vhds)
        for info in answered:
            vhds[_key(info.path)] = info
        return replace(obs, vhds=vhds)
    if kind == "StartCopy":
        total = 0
        base = obs.vhd(spec.base_vhd)
        if base is not None:
            total = base.file_size or base.size or 0
        return replace(obs, existing=_with(obs, layout.vm_dir, layout.partial, layout.copy_status),
                       copy=CopyJob(state="Running", bytes_total=total))
    return expect(action, obs, layout, spec, uid)
