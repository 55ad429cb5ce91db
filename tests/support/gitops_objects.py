"""Hand-built VirtualMachine / HyperVHost objects in each state, shaped as the operator writes them."""

from __future__ import annotations

from typing import Any

T = "2026-01-01T12:00:00Z"


def cond(type_: str, status: str, reason: str = "Reason", message: str = "", generation: int = 1) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "message": message or f"{type_} is {status}",
            "observedGeneration": generation, "lastTransitionTime": T}


def vm(phase: str | None = None, *, generation: int = 1, observed: int | None = 1, strategy: str = "Quick",
       spec_power: str = "Running", conditions: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "hyperv-operator.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": "vm1", "namespace": "default", "generation": generation, "uid": "u1"},
        "spec": {"hostRef": {"name": "hv01"}, "baseVhd": "\\\\FS\\VMSHARE\\BASE.VHDX", "strategy": strategy,
                 "powerState": spec_power},
    }
    if phase is not None:
        obj["status"] = {"phase": phase, "conditions": conditions or [], **status}
        if observed is not None:
            obj["status"]["observedGeneration"] = observed
    return obj


def reconciling(phase: str, message: str) -> dict[str, Any]:
    return vm(phase, conditions=[cond("Ready", "False", phase, message), cond("Reconciling", "True", phase, message),
                                 cond("Stalled", "False", phase, message)])


def stalled(message: str) -> dict[str, Any]:
    return vm("Failed", conditions=[cond("Ready", "False", "BaseNotFound", message),
                                    cond("Reconciling", "False", "BaseNotFound", message),
                                    cond("Stalled", "True", "BaseNotFound", message)])


def ready(strategy: str = "Quick", *, power: str = "Running", spec_power: str = "Running",
          independent_at: str | None = T) -> dict[str, Any]:
    timings: dict[str, Any] = {"createdAt": T, "runningAt": T, "secondsToRunning": 3.2}
    if independent_at:
        timings.update(independentAt=independent_at, secondsToIndependent=240.0)
    return vm("Provisioned", strategy=strategy, spec_power=spec_power, powerState=power, timings=timings,
              conditions=[cond("Ready", "True", "Provisioned", "VM is running"),
                          cond("Reconciling", "False", "Provisioned", "VM is running"),
                          cond("Stalled", "False", "Provisioned", "VM is running")])


def host(reachable: str | None, message: str = "", *, version: str | None = "10.0.20348") -> dict[str, Any]:
    obj: dict[str, Any] = {"apiVersion": "hyperv-operator.io/v1alpha1", "kind": "HyperVHost",
                           "metadata": {"name": "hv01", "namespace": "default", "generation": 1},
                           "spec": {"address": "hv01.example", "defaultVmPath": "D:\\VMs"}}
    if reachable is not None:
        obj["status"] = {"observedGeneration": 1,
                         "conditions": [cond("Reachable", reachable, "Probed", message or "WinRM reachable")]}
        if version:
            obj["status"]["hyperVVersion"] = version
    return obj
