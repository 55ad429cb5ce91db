"""Resizing (issue 14): decisions per Hyper-V's rules and spec.updatePolicy, and the planner around them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from tests.unit.provisioning.helpers import DISK, LAYOUT, NOW, REF, VM_ID, later, observe, spec, status, vm

from hyperv_operator.api import UpdatePolicy
from hyperv_operator.provisioning import resize
from hyperv_operator.provisioning.observation import VmInfo
from hyperv_operator.provisioning.planner import STOP_TIMEOUT, plan

GiB = 2**30


def host_vm(state: str, *, cpus: int = 2, memory: int = GiB, generation: int = 2, dynamic: bool = False) -> VmInfo:
    return replace(vm(state, cpus=cpus), memory_startup=memory, dynamic_memory=dynamic, generation=generation)


def decide(s: Any, v: VmInfo, st: dict[str, Any] | None = None, seconds: float = 0) -> resize.Decision:
    return resize.decide(s, s.update_policy, v, st or {}, later(seconds), stop_timeout=STOP_TIMEOUT)


def kinds(d: resize.Decision) -> str | None:
    return d.action[0] if d.action else None


def test_no_change_nothing_to_do() -> None:
    d = decide(spec("Differencing"), host_vm("Running"))
    assert (d.action, d.wait, d.pending) == (None, None, None)


def test_memory_grows_online_only_on_generation_2_with_static_memory() -> None:
    s = spec("Differencing", memory="2Gi")
    assert kinds(decide(s, host_vm("Running"))) == "ResizeMemoryOnline"
    assert kinds(decide(s, host_vm("Running", generation=1))) is None
    assert decide(s, host_vm("Running", generation=1)).pending
    assert kinds(decide(s, host_vm("Running", dynamic=True))) is None
    shrink = decide(spec("Differencing", memory="512Mi"), host_vm("Running"))
    assert kinds(shrink) is None and shrink.pending and "OnPowerOff" in shrink.pending


def test_cpu_change_waits_for_power_off_then_applies_while_off() -> None:
    s = spec("Differencing", cpus=4)
    running = decide(s, host_vm("Running"))
    assert kinds(running) is None and running.pending and "cpus 2 -> 4" in running.pending
    off = decide(s, host_vm("Off"))
    assert kinds(off) == "Resize"
    assert off.action is not None
    assert len(off.action[1]) == 1 and "ProcessorCount" in str(off.action[1][0])


def test_restart_policy_stops_applies_and_starts() -> None:
    s = spec("Differencing", cpus=4, memory="2Gi", updatePolicy="Restart")
    assert s.update_policy is UpdatePolicy.RESTART
    # memory grows online first; the CPUs then need the restart
    assert kinds(decide(s, host_vm("Running"))) == "ResizeMemoryOnline"
    s_cpu = spec("Differencing", cpus=4, updatePolicy="Restart")
    stop = decide(s_cpu, host_vm("Running"))
    assert kinds(stop) == "StopVMForResize" and stop.status[resize.RESTART_KEY]
    waiting = decide(s_cpu, host_vm("Running"), stop.status, seconds=10)
    assert kinds(waiting) is None and waiting.wait is not None
    assert kinds(decide(s_cpu, host_vm("Running"), stop.status, seconds=STOP_TIMEOUT + 1)) == "TurnOffVMForResize"
    applied = decide(s_cpu, host_vm("Off"), stop.status, seconds=20)
    assert kinds(applied) == "Resize"
    start = decide(s_cpu, host_vm("Off", cpus=4), stop.status, seconds=21)
    assert kinds(start) == "StartVM" and start.status == {resize.RESTART_KEY: None}


def _provisioned(**extra: Any) -> dict[str, Any]:
    return status("Provisioned", vmId=VM_ID, disk={"path": DISK}, createdFiles=[DISK], powerState="Running",
                  observedGeneration=1, **extra)


def _cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == type_)


def test_planner_sets_resize_pending_and_clears_it_once_applied() -> None:
    s = spec("Differencing", cpus=4)
    running = observe(files=(DISK,), host_vm=host_vm("Running"), drives=(DISK,))
    pending = plan(s, _provisioned(), running, NOW, vm=REF, layout=LAYOUT)
    assert pending.action is None
    assert _cond(pending.status, "ResizePending")["status"] == "True"
    assert _cond(pending.status, "Ready")["status"] == "True"  # still serving at the old size
    off = observe(files=(DISK,), host_vm=host_vm("Off"), drives=(DISK,))
    s_off = spec("Differencing", cpus=4, powerState="Off")
    applied = plan(s_off, pending.status, off, later(5), vm=REF, layout=LAYOUT)
    assert applied.action is not None and applied.action.kind == "Resize"
    done = plan(s_off, applied.status, observe(files=(DISK,), host_vm=host_vm("Off", cpus=4), drives=(DISK,)),
                later(6), vm=REF, layout=LAYOUT)
    assert done.action is None
    assert _cond(done.status, "ResizePending")["status"] == "False"


def test_vms_without_a_resize_get_no_resize_condition() -> None:
    result = plan(spec("Differencing"), _provisioned(),
                  observe(files=(DISK,), host_vm=host_vm("Running"), drives=(DISK,)), NOW, vm=REF, layout=LAYOUT)
    assert all(c["type"] != "ResizePending" for c in result.status["conditions"])
