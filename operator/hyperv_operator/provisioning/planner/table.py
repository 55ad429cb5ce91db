"""The phase tables: each strategy's rows, in order, with the function that plans each phase, the
Independent condition while in it and the time recorded when it is done. What differs between the
strategies is said here (and derived from here, see `_Work.on_checkpoint` / `copies_base`), not by
tests of the strategy in the plan functions."""

from __future__ import annotations

from hyperv_operator.api import Strategy
from hyperv_operator.provisioning import phases as phases_mod
from hyperv_operator.provisioning.phases import Independence, Milestone, Phase, Step
from hyperv_operator.provisioning.planner.copying import _copying
from hyperv_operator.provisioning.planner.steps import (
    _checkpointing,
    _creating_disk,
    _creating_vm,
    _merging,
    _pending,
    _provisioned,
    _reparenting,
    _starting,
)

CREATED = Milestone("createdAt")
INDEPENDENT = Milestone("independentAt", "secondsToIndependent")

DIFFERENCING_DISK = Independence(False, "DifferencingDisk", "the VM's disk is a differencing child of the base")
COPY_IN_PROGRESS = Independence(False, "CopyInProgress", "the base is being copied")
FULL_COPY = Independence(True, "FullCopy", "the VM's disk is a full copy of the base")
RUNNING_ON_BASE = Independence(False, "RunningOnBase",
                               "the VM runs on a checkpoint of the base until the copy is merged")
MERGING_INTO_COPY = Independence(False, "Merging",
                                 "the VM's checkpoint is being re-parented and merged into its own disk")
MERGED = Independence(True, "Merged", "the checkpoint was merged into the VM's own disk")


def _pending_step(independent: Independence) -> Step:
    return Step(Phase.PENDING, _pending,
                "check the base: Get-VHD must find it, not a differencing disk; nothing is created",
                "the base is a standalone VHDX", watches_vm=False, independent=independent, reached=CREATED)


PHASE_TABLES: dict[Strategy, tuple[Step, ...]] = {
    Strategy.DIFFERENCING: (
        _pending_step(DIFFERENCING_DISK),
        Step(Phase.CREATING_DISK, _creating_disk, "New-Item vm_dir; New-VHD disk -ParentPath base -Differencing",
             "Get-VHD disk exists with ParentPath = base", watches_vm=False, independent=DIFFERENCING_DISK),
        Step(Phase.CREATING_VM, _creating_vm, "New-VM -Path vm_dir -VHDPath disk | Set-VM Notes=uid tag, CPUs "
                                              "-Passthru | Start-VM -Passthru (record vmId)",
             "a VM with our uid tag (or status.vmId) exists, configured", independent=DIFFERENCING_DISK),
        Step(Phase.STARTING, _starting, "Start-VM (skipped when powerState is Off)", "VM State Running",
             independent=DIFFERENCING_DISK),
        Step(Phase.PROVISIONED, _provisioned, "power and drift: start/stop per spec.powerState; report "
                                              "out-of-band changes", "converged", independent=DIFFERENCING_DISK),
    ),
    Strategy.COPY: (
        _pending_step(COPY_IN_PROGRESS),
        Step(Phase.COPYING, _copying, "wait for a copy slot; start the background copy base -> disk.partial "
                                      "(renamed to disk when whole); poll its status file by its ETA",
             "disk exists (the rename happened)", independent=COPY_IN_PROGRESS),
        Step(Phase.CREATING_VM, _creating_vm, "New-VM -VHDPath disk | Set-VM Notes=uid tag, CPUs -Passthru | "
                                              "Start-VM -Passthru (record vmId)",
             "a VM with our uid tag exists, configured", independent=FULL_COPY, reached=INDEPENDENT),
        Step(Phase.STARTING, _starting, "Start-VM (skipped when powerState is Off)", "VM State Running",
             independent=FULL_COPY),
        Step(Phase.PROVISIONED, _provisioned, "power and drift", "converged", independent=FULL_COPY),
    ),
    Strategy.QUICK: (
        _pending_step(RUNNING_ON_BASE),
        Step(Phase.CREATING_VM, _creating_vm, "New-VM -VHDPath base | Set-VM Notes=uid tag, CPUs, CheckpointType "
                                              "Standard -Passthru | Checkpoint-VM -Passthru; Get-VMHardDiskDrive "
                                              "-VMName (NOT started: the base is read-only; without Checkpoint-VM "
                                              "when the VM is configured while off first)",
             "a VM with our tag exists, configured", independent=RUNNING_ON_BASE),
        Step(Phase.CHECKPOINTING, _checkpointing, "(done with New-VM unless configured first) "
                                                  "Checkpoint-VM hyperv-operator-quick-provision (the VM moves "
                                                  "onto <base>_<GUID>.avhdx next to the base, so the base's "
                                                  "FOLDER must be writable for the host; recorded in createdFiles)",
             "the checkpoint exists", independent=RUNNING_ON_BASE),
        Step(Phase.STARTING, _starting, "Start-VM: the VM runs on the .avhdx (Ready=True from here)",
             "VM State Running", independent=RUNNING_ON_BASE),
        Step(Phase.COPYING_BASE, _copying, "wait for a copy slot; background copy base -> disk.partial -> disk; "
                                           "poll by its ETA", "disk exists", independent=RUNNING_ON_BASE),
        Step(Phase.REPARENTING, _reparenting, "Set-VHD avhdx -ParentPath disk -LeafPath avhdx (never "
                                              "-IgnoreIdMismatch)", "Get-VHD avhdx ParentPath = disk",
             independent=MERGING_INTO_COPY),
        Step(Phase.MERGING, _merging, "Remove-VMSnapshot (merges the .avhdx into disk online; never into the "
                                      "base); poll (Stalled MergeTimedOut after an hour); then Set-VM "
                                      "-CheckpointType <the type before>",
             "drive = disk, .avhdx gone, disk has no parent, VM Status not 'Merging disks', checkpoint type "
             "restored", independent=MERGING_INTO_COPY, reached=INDEPENDENT),
        Step(Phase.PROVISIONED, _provisioned, "power and drift (Independent=True)", "converged", independent=MERGED),
    ),
}


def runs_on_checkpoint(strategy: Strategy) -> bool:
    """Quick: see phases.runs_on_checkpoint."""
    return phases_mod.runs_on_checkpoint(PHASE_TABLES[strategy])


def copies_base(strategy: Strategy) -> bool:
    """Copy, Quick: see phases.copies_base."""
    return phases_mod.copies_base(PHASE_TABLES[strategy])


def phases(strategy: Strategy) -> tuple[Phase, ...]:
    return tuple(step.phase for step in PHASE_TABLES[strategy])


def step_of(strategy: Strategy, phase: Phase) -> Step:
    return next(step for step in PHASE_TABLES[strategy] if step.phase is phase)


def next_phase(strategy: Strategy, phase: Phase) -> Phase:
    order = phases(strategy)
    return order[min(order.index(phase) + 1, len(order) - 1)]


def is_before(strategy: Strategy, phase: Phase, other: Phase) -> bool:
    order = phases(strategy)
    return phase in order and other in order and order.index(phase) < order.index(other)
