"""`plan`: walk the strategy's phase table from `status.phase` (the shared prologue, each phase's plan
function, PhaseChanged between them) up to the first action or wait."""

from __future__ import annotations

import copy as _copy
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import VirtualMachineSpec
from hyperv_operator.provisioning import bootstrap as bootstrap_mod
from hyperv_operator.provisioning.layout import Layout
from hyperv_operator.provisioning.model import VmRef
from hyperv_operator.provisioning.observation import Observation
from hyperv_operator.provisioning.pacing import copy_poll_delay, progress_sample
from hyperv_operator.provisioning.phases import COPY_PHASES, Phase
from hyperv_operator.provisioning.planner.status import _fail, _finish_status, retryable_failure
from hyperv_operator.provisioning.planner.steps import _critical
from hyperv_operator.provisioning.planner.table import PHASE_TABLES, next_phase, phases, step_of
from hyperv_operator.provisioning.planner.work import Plan, _Act, _Done, _Fail, _phase_of, _Result, _Work


def _vm_gone(w: _Work) -> _Fail | None:
    if w.obs.vm is not None or not w.status.get("vmId"):
        return None
    files = ", ".join(w.status.get("createdFiles") or []) or "none"
    return _Fail("VMDeletedOutOfBand",
                 f"VM {w.status['vmId']} was deleted outside the operator on host {w.obs.host_name}; its disks were "
                 f"left in place (created files: {files}) and nothing was re-created. Delete this resource to clean "
                 f"up, or recreate it.")


def plan(
    spec: VirtualMachineSpec, status: Mapping[str, Any], observation: Observation, now: datetime, *,
    vm: VmRef, layout: Layout,
) -> Plan:
    """The next step of provisioning / power management. Pure."""
    observation = bootstrap_mod.split(observation, layout)  # issue 14: the configuration disk apart
    w = _Work(spec, _copy.deepcopy(dict(status)), observation, now, vm, layout, PHASE_TABLES[spec.strategy])
    start = _phase_of(status)
    start_conditions = status.get("conditions")
    if start is Phase.DELETING:
        return Plan(None, w.status, None)
    phase: Phase = start
    if start is Phase.FAILED:
        if not retryable_failure(status):
            return Plan(None, w.status, None)
        phase = Phase.PENDING
    if phase not in phases(spec.strategy):
        return _fail(w, start, _Fail("UnknownPhase", f"phase {phase} is not part of the {spec.strategy} strategy"))
    while True:
        step = step_of(spec.strategy, phase)
        critical = _critical(w) if phase is not Phase.PENDING else None
        gone = _vm_gone(w) if step.watches_vm and critical is None else None
        if gone is not None:
            return _fail(w, start, gone)
        if step.watches_vm and critical is None:
            w.adopt_vm()
        result: _Result = critical if critical is not None else step.plan(w)
        if isinstance(result, _Done):
            if step.reached is not None:  # the first time the VM gets past this phase
                w.reached(step.reached.at, step.reached.seconds)
            nxt = next_phase(spec.strategy, phase)
            if nxt == phase:  # Provisioned never reports done; guard anyway
                return Plan(None, _finish_status(w, phase, "provisioned", converged=True), None, tuple(w.events))
            w.event("PhaseChanged", f"{spec.strategy.value}: {phase.value} -> {nxt.value} ({w.vm_label})")
            phase = nxt
            continue
        if isinstance(result, _Fail):
            return _fail(w, start, result)
        if isinstance(result, _Act):
            status_out = _finish_status(w, phase, f"{phase.value}: {result.message}", converged=False)
            return Plan(result.action, status_out, result.requeue, tuple(w.events))
        converged = result.requeue is None and phase is Phase.PROVISIONED
        requeue = result.requeue
        if phase in COPY_PHASES and requeue is not None and observation.copy is not None:
            requeue = copy_poll_delay(observation.copy, requeue, now=now,  # poll by the copy's ETA
                                      previous=progress_sample(status.get("copy")))
        status_out = _finish_status(w, phase, f"{phase.value}: {result.message}" if not converged
                                    else result.message, converged=converged, stall=result.stall)
        stalled_before = cond.find(start_conditions, cond.STALLED) or {}
        if result.stall and not (stalled_before.get("status") == "True"
                                 and stalled_before.get("reason") == result.stall):
            w.event(result.stall, result.message, warning=True)  # once, when the stall begins
        return Plan(None, status_out, requeue, tuple(w.events))
