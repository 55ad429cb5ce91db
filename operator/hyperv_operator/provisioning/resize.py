"""Resizing a provisioned VM: spec.cpus / spec.memory changes reach the host. Pure.

Hyper-V's rules (docs/windows-fidelity.md, "Guest, resize and bootstrap"):
- Set-VM -ProcessorCount needs the VM off.
- Set-VMMemory -StartupBytes on a running VM ("runtime memory resize", Windows Server 2016+) works
  only with static memory and a guest that supports it; Linux guests can grow but not shrink. The
  operator therefore changes memory online only to GROW a Generation 2 VM with static memory (the
  issue's contract); every other change waits for the VM to be off.
- spec.updatePolicy decides what "off" means: OnPowerOff (default) - the change stays pending
  (condition ResizePending=True) until the VM is off for another reason (the user sets powerState Off,
  or shuts the guest down); Restart - graceful shutdown now, apply, start again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import PowerState, UpdatePolicy, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.commands import Statement
from hyperv_operator.provisioning.observation import VmInfo

RESIZE_PENDING = "ResizePending"
RESTART_KEY = "resizeRestartAt"  # status: when the operator shut the VM down to resize it
MiB = 1024 * 1024


@dataclass(frozen=True)
class Change:
    cpus: tuple[int, int] | None = None  # (now, wanted)
    memory: tuple[int, int] | None = None  # (now, wanted) startup bytes
    dynamic: tuple[str, str] | None = None  # (now, wanted) Dynamic Memory, described (issue 14)

    def __bool__(self) -> bool:
        return self.cpus is not None or self.memory is not None or self.dynamic is not None

    def describe(self) -> str:
        parts = []
        if self.dynamic:
            parts.append(f"memory mode {self.dynamic[0]} -> {self.dynamic[1]}")
        if self.cpus:
            parts.append(f"cpus {self.cpus[0]} -> {self.cpus[1]}")
        if self.memory:
            parts.append(f"memory {self.memory[0] // MiB}Mi -> {self.memory[1] // MiB}Mi")
        return ", ".join(parts)


def diff(spec: VirtualMachineSpec, vm: VmInfo) -> Change:
    """What the host shows against what the spec asks (unknown values are not a change)."""
    cpus = (vm.processor_count, spec.cpus) if vm.processor_count is not None and vm.processor_count != spec.cpus \
        else None
    memory = (vm.memory_startup, spec.memory_bytes) if vm.memory_startup is not None \
        and vm.memory_startup != spec.memory_bytes else None
    return Change(cpus, memory, _dynamic_change(spec, vm))


def _dynamic_change(spec: VirtualMachineSpec, vm: VmInfo) -> tuple[str, str] | None:
    """Dynamic Memory on/off and its range (the buffer is not on Get-VM: applied with them, not compared)."""
    want = spec.dynamic_memory
    if vm.dynamic_memory is None:
        return None  # not observed
    now = (f"dynamic {_mi(vm.memory_minimum)}-{_mi(vm.memory_maximum)}" if vm.dynamic_memory else "static")
    if want is None:
        return (now, "static") if vm.dynamic_memory else None
    if vm.dynamic_memory and vm.memory_minimum == want.minimum_bytes and vm.memory_maximum == want.maximum_bytes:
        return None
    return now, f"dynamic {_mi(want.minimum_bytes)}-{_mi(want.maximum_bytes)}"


def _mi(value: int | None) -> str:
    return "?" if value is None else f"{value // MiB}Mi"


def memory_statement(spec: VirtualMachineSpec, vm_id: str) -> Statement:
    """Set-VMMemory for the whole memory configuration the spec asks for (the VM must be off when Dynamic
    Memory is switched or its range changes)."""
    want = spec.dynamic_memory
    if want is None:
        return cmdlets.set_vm_static_memory(vm_id, spec.memory_bytes)
    return cmdlets.set_vm_dynamic_memory(vm_id, spec.memory_bytes, want.minimum_bytes, want.maximum_bytes, want.buffer)


def before_first_start(spec: VirtualMachineSpec, vm: VmInfo) -> tuple[str, tuple[Statement, ...], str] | None:
    """Issue 14: Dynamic Memory is configured while the new VM is still off (New-VM makes it static)."""
    change = diff(spec, vm)
    if change.dynamic is None or vm.state != "Off":
        return None
    return ("ConfigureMemory", (memory_statement(spec, vm.id),),
            f"Set-VMMemory {vm.id}: memory mode {change.dynamic[0]} -> {change.dynamic[1]}")


def online_memory(vm: VmInfo, change: Change) -> bool:
    """Grow a running Generation 2 VM with static memory (runtime memory resize)."""
    return (change.memory is not None and change.memory[1] > change.memory[0] and vm.generation == 2
            and vm.dynamic_memory is False and change.dynamic is None)


@dataclass(frozen=True)
class Decision:
    """What the planner does about resizing in this step. `action` None with `wait` None: nothing
    to do here, go on with power management."""

    action: tuple[str, tuple[Statement, ...], str] | None = None  # (kind, statements, description)
    message: str = ""
    wait: float | None = None  # wait (no action) this long, e.g. for the shutdown
    pending: str | None = None  # ResizePending=True with this message
    status: dict[str, Any] = field(default_factory=dict)  # status keys to set
    events: tuple[tuple[str, str], ...] = ()


def decide(
    spec: VirtualMachineSpec, policy: UpdatePolicy, vm: VmInfo, status: Mapping[str, Any], now: datetime,
    *, stop_timeout: float,
) -> Decision:
    change = diff(spec, vm)
    restarting = cond.parse_timestamp(status.get(RESTART_KEY))
    if not change:
        if restarting is not None and vm.state == "Off" and spec.power_state is PowerState.RUNNING:
            return Decision(("StartVM", (cmdlets.start_vm(vm.id),), f"Start-VM {vm.id}"),
                            f"resized; starting VM {vm.id} again", status={RESTART_KEY: None},
                            events=(("Resized", f"VM {vm.id} resized; starting it again (spec.updatePolicy "
                                                f"Restart)"),))
        if restarting is not None and vm.state != "Off":
            return Decision(status={RESTART_KEY: None})
        return Decision()
    what = change.describe()
    if vm.state == "Off":
        statements: list[Statement] = []
        if change.cpus:
            statements.append(cmdlets.set_vm(vm.id, processor_count=change.cpus[1]))
        if change.dynamic or (change.memory and spec.dynamic_memory is not None):
            statements.append(memory_statement(spec, vm.id))
        elif change.memory:
            statements.append(cmdlets.set_vm_memory(vm.id, change.memory[1]))
        return Decision(("Resize", tuple(statements), f"Set-VM/Set-VMMemory {vm.id}: {what}"),
                        f"resizing VM {vm.id} while it is off: {what}",
                        pending=f"{what}: applying while VM {vm.id} is off",
                        events=(("Resized", f"VM {vm.id}: {what} (applied while off)"),))
    if vm.state != "Running":
        return Decision(wait=5.0, message=f"resize ({what}) waits for VM {vm.id} to settle (state {vm.state})") \
            if restarting is not None else Decision(pending=f"{what}: waiting for VM {vm.id} (state {vm.state})")
    if online_memory(vm, change) and change.memory is not None:
        return Decision(("ResizeMemoryOnline", (cmdlets.set_vm_memory(vm.id, change.memory[1]),),
                         f"Set-VMMemory {vm.id} -StartupBytes {change.memory[1]}"),
                        f"growing the memory of running VM {vm.id}: {change.memory[0] // MiB}Mi -> "
                        f"{change.memory[1] // MiB}Mi (runtime memory resize)",
                        events=(("ResizedOnline", f"VM {vm.id}: memory {change.memory[0] // MiB}Mi -> "
                                                  f"{change.memory[1] // MiB}Mi while running"),))
    why = ("Hyper-V changes processors only while the VM is off" if change.cpus else
           "the operator switches Dynamic Memory and changes its range only while the VM is off" if change.dynamic
           else
           "Hyper-V grows memory online only for a Generation 2 VM with static memory; it never shrinks it under "
           "a running guest here")
    if policy is UpdatePolicy.ON_POWER_OFF:
        return Decision(pending=f"{what}: applied when VM {vm.id} is next powered off ({why}; spec.updatePolicy "
                                f"OnPowerOff). Set powerState Off, or updatePolicy Restart")
    if restarting is None:
        return Decision(("StopVMForResize", (cmdlets.stop_vm(vm.id, turn_off=False),), f"Stop-VM {vm.id} -Force"),
                        f"shutting down VM {vm.id} to resize it ({what}; spec.updatePolicy Restart)",
                        pending=f"{what}: restarting VM {vm.id} (spec.updatePolicy Restart)",
                        status={RESTART_KEY: cond.timestamp(now)},
                        events=(("RestartingForResize", f"shutting down VM {vm.id} to apply {what} ({why})"),))
    waited = (now - restarting).total_seconds()
    if waited >= stop_timeout:
        return Decision(("TurnOffVMForResize", (cmdlets.stop_vm(vm.id, turn_off=True),), f"Stop-VM {vm.id} -TurnOff"),
                        f"turning off VM {vm.id} (graceful shutdown for the resize timed out)",
                        pending=f"{what}: restarting VM {vm.id} (spec.updatePolicy Restart)",
                        events=(("GracefulStopTimedOut", f"VM {vm.id} did not shut down within {int(stop_timeout)}s; "
                                                         f"turning it off to resize it"),))
    return Decision(wait=5.0, message=f"waiting for VM {vm.id} to shut down for the resize ({int(waited)}s)",
                    pending=f"{what}: restarting VM {vm.id} (spec.updatePolicy Restart)")


def pending_condition(prev: Any, pending: str | None, generation: int, now: datetime) -> list[dict[str, Any]]:
    """ResizePending, only on VMs that ever had a resize waiting (no noise on the others)."""
    if pending:
        return [cond.make(prev, RESIZE_PENDING, True, "ResizePending", pending, generation, now)]
    if cond.find(prev, RESIZE_PENDING) is not None:
        return [cond.make(prev, RESIZE_PENDING, False, "Applied", "the VM has the size the spec asks for",
                          generation, now)]
    return []
