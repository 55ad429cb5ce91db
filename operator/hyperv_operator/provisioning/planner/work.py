"""What every part of the planner shares: requeue delays and VM states, the values a phase plan
returns (`_Act`, `_Wait`, `_Fail`, `DONE`), the `Action` and `Plan` it hands the engine, and `_Work`,
the one step being planned (spec, status being built, observation, clock)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import Strategy, VirtualMachineSpec
from hyperv_operator.hyperv.commands import Statement
from hyperv_operator.provisioning import guest as guest_mod
from hyperv_operator.provisioning.layout import Layout, is_avhdx, same_path
from hyperv_operator.provisioning.model import Event, VmRef
from hyperv_operator.provisioning.observation import Observation
from hyperv_operator.provisioning.phases import Phase, Step, copies_base, runs_on_checkpoint

# Requeue delays (seconds).
HOST_ACCESS_CATEGORIES = frozenset({"AuthenticationError", "SecurityError"})
"""Error categories the WinRM client gives to 401s and TLS trust failures: the host, not the VM."""
AFTER_ACTION = 0.3  # right after a command: observe its effect promptly
COPY_POLL = 2.0
MERGE_POLL = 1.0
SHORT_WAIT = 0.5
POWER_POLL = 5.0
TRANSIENT_BACKOFF = 5.0
CLEANUP_RETRY = 30.0
STOP_TIMEOUT = 60.0  # graceful shutdown, then -TurnOff
MERGE_TIMEOUT = 3600.0  # a checkpoint merge still running after this stalls with a reason (it may still finish)
CRITICAL_POLL = 30.0  # re-check a VM Hyper-V reports as *Critical (lost storage) or Saved

# Hyper-V's VMState values (Microsoft.HyperV.PowerShell.VMState): Other, Running, Off, Stopping, Saved,
# Paused, Starting, Reset, Saving, Pausing, Resuming, FastSaved, FastSaving, and a *Critical twin of
# each (RunningCritical, OffCritical, ...), which Hyper-V reports when the VM lost access to its
# storage. Every state has an outcome below; none is waited for without a word.
PAUSED = "Paused"
SAVED_STATES = frozenset({"Saved", "FastSaved"})
COPY_STALL_SECONDS = 120.0  # the worker reports every second: this long without progress means it hangs
MAX_COPY_RESTARTS = 3  # a copy whose worker died is restarted this many times, then the VM fails

RUNNING = "Running"
OFF = "Off"


def is_critical(state: str) -> bool:
    return state.endswith("Critical")


NEW_VM_CHECKPOINTED = "NewVMCheckpointed"
"""Quick: New-VM | Set-VM | Checkpoint-VM in one statement, then the drives of the VMs of its name."""


@dataclass(frozen=True)
class Action:
    """One host operation: one client.run() of one or a few statements."""

    kind: str  # CamelCase name for logs and result handling (NewVM, StartCopy, RemoveFolders, ...)
    statements: tuple[Statement, ...]
    description: str  # the host step, human readable
    tolerate_not_found: bool = False  # finalize: "already gone" counts as done
    starts_copy: bool = False


@dataclass(frozen=True)
class Plan:
    action: Action | None
    status: dict[str, Any]  # the status after the action succeeds
    requeue_after: float | None
    events: tuple[Event, ...] = ()
    finished: bool = False


# --- results of a phase handler ------------------------------------------------------------------


@dataclass(frozen=True)
class _Done:
    pass


@dataclass(frozen=True)
class _Act:
    action: Action
    message: str
    requeue: float = AFTER_ACTION


@dataclass(frozen=True)
class _Wait:
    message: str
    requeue: float | None
    stall: str | None = None  # Stalled=True with this reason (the user must act; re-checked every `requeue`)


@dataclass(frozen=True)
class _Fail:
    reason: str
    message: str


_Result = _Done | _Act | _Wait | _Fail
DONE = _Done()


@dataclass
class _Work:
    spec: VirtualMachineSpec
    status: dict[str, Any]
    obs: Observation
    now: datetime
    vm: VmRef
    layout: Layout
    rows: tuple[Step, ...]  # the strategy's phase table
    events: list[Event] = field(default_factory=list)

    @property
    def strategy(self) -> Strategy:
        return self.spec.strategy

    @property
    def on_checkpoint(self) -> bool:
        """Quick: made on the base, runs on a checkpoint until its copy is merged (from the table)."""
        return runs_on_checkpoint(self.rows)

    @property
    def copies_base(self) -> bool:
        """Copy, Quick: the VM's own disk is a full copy of the base (from the table)."""
        return copies_base(self.rows)

    @property
    def vm_label(self) -> str:
        vm_id = self.status.get("vmId")
        return f"VM {vm_id[:8]}..." if vm_id else f"VM {self.layout.vm_name}"

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def created(self, *paths: str) -> None:
        files: list[str] = list(self.status.get("createdFiles") or [])
        for path in paths:
            if not any(same_path(path, f) for f in files):
                files.append(path)
        self.status["createdFiles"] = files

    def timing(self, key: str, value: Any) -> None:
        timings = dict(self.status.get("timings") or {})
        timings[key] = value
        self.status["timings"] = timings

    def reached(self, at_key: str, seconds_key: str | None = None) -> None:
        """The first time the VM reaches a milestone: record when (ms precision) and, with
        `seconds_key`, how long since createdAt. Later calls change nothing."""
        timings = self.status.get("timings") or {}
        if timings.get(at_key):
            return
        self.timing(at_key, cond.precise_timestamp(self.now))
        if seconds_key:
            seconds = _seconds_between(timings.get("createdAt"), self.now)
            if seconds is not None:
                self.timing(seconds_key, seconds)

    def copy_status(self, **values: Any) -> None:
        current = dict(self.status.get("copy") or {})
        current.update(values)
        self.status["copy"] = current

    def recorded_avhdx(self) -> str | None:
        disk = self.status.get("disk") or {}
        if is_avhdx(disk.get("path")):
            return str(disk["path"])
        for path in self.status.get("createdFiles") or []:
            if is_avhdx(path):
                return str(path)
        return self.obs.avhdx_drive()

    def adopt_vm(self) -> None:
        vm = self.obs.vm
        if vm is None:
            return
        if not self.status.get("vmId"):
            if self.obs.found_by in ("tag", "folder"):
                self.event("Adopted", f"adopted existing VM {vm.id} found by its {self.obs.found_by} on host "
                                      f"{self.obs.host_name}")
            self.status["vmId"] = vm.id
        if self.on_checkpoint:
            avhdx = self.obs.avhdx_drive()
            if avhdx and not any(same_path(avhdx, f) for f in self.status.get("createdFiles") or []):
                self.created(avhdx)


def _seconds_between(start: str | None, end: datetime) -> float | None:
    begun = cond.parse_timestamp(start)
    return None if begun is None else round((end - begun).total_seconds(), 3)


def _guest_verdict(w: _Work) -> guest_mod.Verdict:
    """Issue 14: is the running VM's guest ready per spec.readiness (from the status.guest before this step)."""
    vm_id = w.obs.vm.id if w.obs.vm else str(w.status.get("vmId") or "")
    return guest_mod.verdict(w.spec.readiness, w.spec.readiness_timeout_seconds, vm_id, w.obs.guest,
                             w.status.get("guest"), w.now)


def _phase_of(status: Mapping[str, Any]) -> Phase:
    try:
        return Phase(status.get("phase") or Phase.PENDING.value)
    except ValueError:
        return Phase.PENDING
