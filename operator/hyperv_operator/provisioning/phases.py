"""The phase tables: every strategy's phases in order, and what each phase does on the host.

Read top to bottom; this is the whole provisioning state machine. Each call to `engine.reconcile`
observes the host, skips every phase whose result the host already shows ("done when"), and issues
the one command of the first phase that is not done. `status.phase` is the phase whose command was
issued last (or that is being waited for). A crash after any command therefore converges: the next
call sees the command's effect and moves on without repeating it.

Differencing:  Pending -> CreatingDisk -> CreatingVM -> Starting -> Provisioned
Copy:          Pending -> Copying -> CreatingVM -> Starting -> Provisioned
Quick:         Pending -> CreatingVM -> Checkpointing -> Starting -> CopyingBase -> Reparenting
                       -> Merging -> Provisioned
Any strategy:  -> Failed (Stalled=True, terminal; a missing base is re-checked while nothing exists)
Delete:        -> Deleting (finalize) -> finalizer removed
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from hyperv_operator.api import Strategy


class Phase(enum.StrEnum):
    PENDING = "Pending"
    CREATING_DISK = "CreatingDisk"
    COPYING = "Copying"
    CREATING_VM = "CreatingVM"
    CHECKPOINTING = "Checkpointing"
    STARTING = "Starting"
    COPYING_BASE = "CopyingBase"
    REPARENTING = "Reparenting"
    MERGING = "Merging"
    PROVISIONED = "Provisioned"
    FAILED = "Failed"
    DELETING = "Deleting"


@dataclass(frozen=True)
class Step:
    phase: Phase
    does: str
    done_when: str


PENDING = Step(Phase.PENDING, "check the base: Get-VHD must find it, not a differencing disk; nothing is created",
               "the base is a standalone VHDX")

PHASE_TABLES: dict[Strategy, tuple[Step, ...]] = {
    Strategy.DIFFERENCING: (
        PENDING,
        Step(Phase.CREATING_DISK, "New-Item vm_dir; New-VHD disk -ParentPath base -Differencing",
             "Get-VHD disk exists with ParentPath = base"),
        Step(Phase.CREATING_VM, "New-VM -Path vm_dir -VHDPath disk (record vmId); then Set-VM Notes=uid tag, CPUs",
             "a VM with our uid tag (or status.vmId) exists, configured"),
        Step(Phase.STARTING, "Start-VM (skipped when powerState is Off)", "VM State Running"),
        Step(Phase.PROVISIONED, "power and drift: start/stop per spec.powerState; report out-of-band changes",
             "converged"),
    ),
    Strategy.COPY: (
        PENDING,
        Step(Phase.COPYING, "wait for a copy slot; start the background copy base -> disk.partial (renamed to "
                            "disk when whole); poll its status file", "disk exists (the rename happened)"),
        Step(Phase.CREATING_VM, "New-VM -VHDPath disk (record vmId); then Set-VM Notes=uid tag, CPUs",
             "a VM with our uid tag exists, configured"),
        Step(Phase.STARTING, "Start-VM (skipped when powerState is Off)", "VM State Running"),
        Step(Phase.PROVISIONED, "power and drift", "converged"),
    ),
    Strategy.QUICK: (
        PENDING,
        Step(Phase.CREATING_VM, "New-VM -VHDPath base (NOT started: the base is read-only); then Set-VM Notes=uid "
                                "tag, CPUs, CheckpointType Standard", "a VM with our tag exists, configured"),
        Step(Phase.CHECKPOINTING, "Checkpoint-VM hyperv-operator-quick-provision (the VM moves onto "
                                  "<base>_<GUID>.avhdx next to the base, so the base's FOLDER must be writable "
                                  "for the host; recorded in createdFiles)",
             "the checkpoint exists"),
        Step(Phase.STARTING, "Start-VM: the VM runs on the .avhdx (Ready=True from here)", "VM State Running"),
        Step(Phase.COPYING_BASE, "wait for a copy slot; background copy base -> disk.partial -> disk; poll",
             "disk exists"),
        Step(Phase.REPARENTING, "Set-VHD avhdx -ParentPath disk -LeafPath avhdx (never -IgnoreIdMismatch)",
             "Get-VHD avhdx ParentPath = disk"),
        Step(Phase.MERGING, "Remove-VMSnapshot (merges the .avhdx into disk online; never into the base); poll "
                            "(Stalled MergeTimedOut after an hour); then Set-VM -CheckpointType <the type before>",
             "drive = disk, .avhdx gone, disk has no parent, VM Status not 'Merging disks', checkpoint type restored"),
        Step(Phase.PROVISIONED, "power and drift (Independent=True)", "converged"),
    ),
}

COPY_PHASES = frozenset({Phase.COPYING, Phase.COPYING_BASE})


def phases(strategy: Strategy) -> tuple[Phase, ...]:
    return tuple(step.phase for step in PHASE_TABLES[strategy])


def next_phase(strategy: Strategy, phase: Phase) -> Phase:
    order = phases(strategy)
    return order[min(order.index(phase) + 1, len(order) - 1)]


def is_before(strategy: Strategy, phase: Phase, other: Phase) -> bool:
    order = phases(strategy)
    return phase in order and other in order and order.index(phase) < order.index(other)
