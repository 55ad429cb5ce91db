"""VirtualMachineClass: sizes an admin offers, and what a VM naming one may still choose. Pure.

A class (cluster scope) sets cpus, memory and generation, optionally the namespaces that may use it,
and whether a VM may override its size. A VM with `spec.className` gets the class's values; explicit
`cpus` / `memory` / `generation` on it are refused (by the admission webhook at apply time, and by the
controller, which stalls) unless the class has `allowOverrides: true`. Class changes reach running
VMs through the resize rules (provisioning/resize.py) on the next reconcile (at most the drift
interval later).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hyperv_operator.tenancy.policy import Refusal

SIZED_FIELDS = ("cpus", "memory", "generation", "dynamicMemory")


@dataclass(frozen=True)
class ClassSpec:
    cpus: int
    memory: str
    generation: int | None = None
    namespaces: tuple[str, ...] | None = None  # None: every namespace
    allow_overrides: bool = False
    dynamic_memory: Mapping[str, Any] | None = None  # issue 14: {minimum, maximum, buffer}, as on a VM

    @classmethod
    def from_dict(cls, spec: Mapping[str, Any]) -> ClassSpec:
        namespaces = spec.get("namespaces")
        return cls(cpus=int(spec["cpus"]), memory=str(spec["memory"]),
                   generation=int(spec["generation"]) if spec.get("generation") else None,
                   namespaces=tuple(str(n) for n in namespaces) if namespaces is not None else None,
                   allow_overrides=bool(spec.get("allowOverrides", False)),
                   dynamic_memory=dict(spec["dynamicMemory"]) if spec.get("dynamicMemory") else None)


def check(namespace: str, vm_spec: Mapping[str, Any], class_spec: Mapping[str, Any] | None) -> Refusal | None:
    """May this VM use the class it names? None when it names none, or when it may."""
    name = vm_spec.get("className")
    if not name:
        return None
    if class_spec is None:
        return Refusal("ClassNotFound", f"VirtualMachineClass {name} does not exist")
    klass = ClassSpec.from_dict(class_spec)
    if klass.namespaces is not None and namespace not in klass.namespaces:
        return Refusal("ClassNotAdmitted", f"VirtualMachineClass {name} is not offered to namespace {namespace} "
                                           f"(it admits: {', '.join(klass.namespaces) or 'none'})")
    explicit = [f for f in SIZED_FIELDS if vm_spec.get(f) is not None]
    if explicit and not klass.allow_overrides:
        return Refusal("ClassOverrideRefused",
                       f"VirtualMachineClass {name} sets {', '.join(explicit)}; remove "
                       f"{'them' if len(explicit) > 1 else 'it'} from the VM (the class does not allow overrides)")
    return None


def effective(vm_spec: Mapping[str, Any], class_spec: Mapping[str, Any] | None) -> dict[str, Any]:
    """The VM's spec with the class's size filled in (explicit values stay only where allowed)."""
    result = dict(vm_spec)
    if not vm_spec.get("className") or class_spec is None:
        return result
    klass = ClassSpec.from_dict(class_spec)
    values: dict[str, Any] = {"cpus": klass.cpus, "memory": klass.memory}
    if klass.generation is not None:
        values["generation"] = klass.generation
    if klass.dynamic_memory is not None:
        values["dynamicMemory"] = dict(klass.dynamic_memory)
    for key, value in values.items():
        if not (klass.allow_overrides and vm_spec.get(key) is not None):
            result[key] = value
    return result
