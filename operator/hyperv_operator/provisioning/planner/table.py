"""The phase tables: each strategy's rows, in order, with the function that plans each phase."""

from __future__ import annotations

from hyperv_operator.api import Strategy
from hyperv_operator.provisioning.phases import Phase, Step
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

PENDING = Step(Phase.PENDING, _pending,
               "check the base: Get-VHD must find it, not a differencing disk; nothing is created",
               "the base is a standalone VHDX", watches_vm=False)

PHASE_TABLES: dict[Strategy, tuple[Step, ...]] = {
    Strategy.DIFFERENCING: (
        PENDING,
        Step(Phase.CREATING_DISK, _creating_disk, "New-Item vm_dir; New-VHD disk -ParentPath base -Differencing",
             "Get-VHD disk exists with ParentPath = base", watches_vm=False),
        Step(Phase.CREATING_VM, _creating_vm, "New-VM -Path vm_dir -VHDPath disk | Set-VM Notes=uid tag, CPUs "
                                              "-Passthru | Start-VM -Passthru (record vmId)",
             "a VM with our uid tag (or status.vmId) exists, configured"),
        Step(Phase.STARTING, _starting, "Start-VM (skipped when powerState is Off)", "VM State Running"),
        Step(Phase.PROVISIONED, _provisioned, "power and drift: start/stop per spec.powerState; report "
                                              "out-of-band changes", "converged"),
    ),
    Strategy.COPY: (
        PENDING,
        Step(Phase.COPYING, _copying, "wait for a copy slot; start the background copy base -> disk.partial "
                                      "(renamed to disk when whole); poll its status file by its ETA",
             "disk exists (the rename happened)"),
        Step(Phase.CREATING_VM, _creating_vm, "New-VM -VHDPath disk | Set-VM Notes=uid tag, CPUs -Passthru | "
                                              "Start-VM -Passthru (record vmId)",
             "a VM with our uid tag exists, configured"),
        Step(Phase.STARTING, _starting, "Start-VM (skipped when powerState is Off)", "VM State Running"),
        Step(Phase.PROVISIONED, _provisioned, "power and drift", "converged"),
    ),
    Strategy.QUICK: (
        PENDING,
        Step(Phase.CREATING_VM, _creating_vm, "New-VM -VHDPath base | Set-VM Notes=uid tag, CPUs, CheckpointType "
                                              "Standard -Passthru (NOT started: the base is read-only)",
             "a VM with our tag exists, configured"),
        Step(Phase.CHECKPOINTING, _checkpointing, "Checkpoint-VM hyperv-operator-quick-provision (the VM moves "
                                                  "onto <base>_<GUID>.avhdx next to the base, so the base's "
                                                  "FOLDER must be writable for the host; recorded in createdFiles)",
             "the checkpoint exists"),
        Step(Phase.STARTING, _starting, "Start-VM: the VM runs on the .avhdx (Ready=True from here)",
             "VM State Running"),
        Step(Phase.COPYING_BASE, _copying, "wait for a copy slot; background copy base -> disk.partial -> disk; "
                                           "poll by its ETA", "disk exists"),
        Step(Phase.REPARENTING, _reparenting, "Set-VHD avhdx -ParentPath disk -LeafPath avhdx (never "
                                              "-IgnoreIdMismatch)", "Get-VHD avhdx ParentPath = disk"),
        Step(Phase.MERGING, _merging, "Remove-VMSnapshot (merges the .avhdx into disk online; never into the "
                                      "base); poll (Stalled MergeTimedOut after an hour); then Set-VM "
                                      "-CheckpointType <the type before>",
             "drive = disk, .avhdx gone, disk has no parent, VM Status not 'Merging disks', checkpoint type "
             "restored"),
        Step(Phase.PROVISIONED, _provisioned, "power and drift (Independent=True)", "converged"),
    ),
}


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
