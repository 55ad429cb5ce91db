"""The status a step leaves behind: phase, message, guest record and the conditions (Ready,
Reconciling, Stalled, Independent); a failure's status."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import PowerState, Strategy
from hyperv_operator.hyperv import second_hop
from hyperv_operator.provisioning import guest as guest_mod
from hyperv_operator.provisioning.phases import Phase
from hyperv_operator.provisioning.planner.table import is_before, step_of
from hyperv_operator.provisioning.planner.work import OFF, RUNNING, Plan, _Fail, _guest_verdict, _Work

# --- conditions ----------------------------------------------------------------------------------


def _independent(strategy: Strategy, phase: Phase) -> tuple[bool, str, str]:
    row = step_of(strategy, phase).independent  # the phase table says it, per strategy and phase
    return row.independent, row.reason, row.message


def _with_conditions(
    w: _Work, phase: Phase, *, converged: bool, failure: tuple[str, str] | None = None,
    busy: tuple[str, str] | None = None,
) -> None:
    s, prev, gen, now = w.status, w.status.get("conditions"), w.vm.generation, w.now
    message = str(s.get("message") or "")
    updates: list[dict[str, Any]] = []
    if failure:
        updates.append(cond.make(prev, cond.STALLED, True, failure[0], failure[1], gen, now))
        updates.append(cond.make(prev, cond.RECONCILING, False, "Stalled", failure[1], gen, now))
        updates.append(cond.make(prev, cond.READY, False, failure[0], failure[1], gen, now))
        if cond.find(prev, cond.INDEPENDENT) is None:
            updates.append(cond.make(prev, cond.INDEPENDENT, None, Phase.FAILED.value, failure[1], gen, now))
        s["conditions"] = cond.merge(prev, updates)
        return
    updates.append(cond.make(prev, cond.STALLED, False, "NoError", "", gen, now))
    if busy:
        updates.append(cond.make(prev, cond.RECONCILING, True, busy[0], busy[1], gen, now))
    elif converged:
        updates.append(cond.make(prev, cond.RECONCILING, False, Phase.PROVISIONED.value, message, gen, now))
    else:
        updates.append(cond.make(prev, cond.RECONCILING, True, phase.value, message, gen, now))
    vm = w.obs.vm
    state = vm.state if vm else None
    started = not is_before(w.strategy, phase, Phase.STARTING)  # Ready from Starting on (Quick: on the .avhdx)
    seen = _guest_verdict(w) if state == RUNNING else None  # issue 14
    if w.spec.power_state is PowerState.RUNNING and state == RUNNING and started and seen is not None:
        updates.append(cond.make(prev, cond.READY, seen.ready, seen.reason, seen.message, gen, now))
    elif w.spec.power_state is PowerState.OFF and state == OFF and phase is Phase.PROVISIONED:
        updates.append(cond.make(prev, cond.READY, True, "PoweredOff", f"VM {vm.id if vm else ''} is off as "
                                                                        f"requested", gen, now))
    else:
        reason = phase.value if phase is not Phase.PROVISIONED else (
            "Stopping" if w.spec.power_state is PowerState.OFF else "Starting")
        updates.append(cond.make(prev, cond.READY, False, reason, message, gen, now))
    ok, reason, text = _independent(w.strategy, phase)
    updates.append(cond.make(prev, cond.INDEPENDENT, ok, reason, text, gen, now))
    s["conditions"] = cond.merge(prev, updates)


def _finish_status(w: _Work, phase: Phase, message: str, *, converged: bool,
                   stall: str | None = None) -> dict[str, Any]:
    s = w.status
    s["phase"] = phase.value
    s["message"] = message
    s["lastError"] = None
    s["observedGeneration"] = w.vm.generation
    if w.obs.vm is not None:
        s["powerState"] = w.obs.vm.state
        s["vmName"] = w.obs.vm.name or s.get("vmName")
    # --- guest (issue 14) ---
    running = w.obs.vm is not None and w.obs.vm.state == RUNNING
    s["guest"] = guest_mod.record(s.get("guest"), w.obs.guest, running, running and _guest_verdict(w).ready, w.now)
    if stall:
        _with_conditions(w, phase, converged=False, failure=(stall, message))
    else:
        _with_conditions(w, phase, converged=converged)
    return s


def _fail(w: _Work, phase_before: Phase, failure: _Fail) -> Plan:
    s = w.status
    s["phase"] = Phase.FAILED.value
    s["message"] = failure.message
    s["lastError"] = failure.message
    s["observedGeneration"] = w.vm.generation
    if phase_before is not Phase.FAILED:
        w.event("PhaseChanged", f"{w.strategy.value}: {phase_before.value} -> Failed ({w.vm_label})", warning=True)
        w.event(failure.reason, failure.message, warning=True)
    _with_conditions(w, Phase.FAILED, converged=False, failure=(failure.reason, failure.message))
    return Plan(None, s, None, tuple(w.events))


def retryable_failure(status: Mapping[str, Any]) -> bool:
    """A missing (or, across the second hop, unreadable) base is re-checked (e.g. by the periodic timer)
    while nothing was created."""
    stalled = cond.find(status.get("conditions"), cond.STALLED)
    return (stalled is not None and stalled.get("reason") in ("BaseDiskNotFound", second_hop.REASON)
            and not status.get("vmId")
            and not status.get("createdFiles"))
