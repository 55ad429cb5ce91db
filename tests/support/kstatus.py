"""kstatus, ported: the status verdict Flux (`wait`, `healthChecks`) and kpt compute for an object.

A port of sigs.k8s.io/cli-utils/pkg/kstatus/status `Compute` for custom resources: the generic
rules (`checkGenericProperties` in generic.go) and the fallback (status.go). The built-in kinds'
legacy rules (core.go: Deployment, Pod, ...) are not ported; CustomResourceDefinition's is, so
installs can be checked too. In order:

1. ``metadata.deletionTimestamp`` set -> Terminating, "Resource scheduled for deletion".
2. ``metadata.generation`` and ``status.observedGeneration`` both present and different ->
   InProgress, "<Kind> generation is G, but latest observed generation is O". (If
   observedGeneration is absent the check is skipped, as in kstatus.)
3. The first condition in ``status.conditions`` that is ``Reconciling=True`` -> InProgress, or
   ``Stalled=True`` -> Failed; the message is the condition's message.
4. Otherwise Current, "Resource is current". (Note: an object with no status at all is Current.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

IN_PROGRESS = "InProgress"
FAILED = "Failed"
CURRENT = "Current"
TERMINATING = "Terminating"

STATUSES = (IN_PROGRESS, FAILED, CURRENT, TERMINATING)


def _nested(obj: Mapping[str, Any], *path: str) -> Any:
    value: Any = obj
    for key in path:
        if not isinstance(value, Mapping) or key not in value:
            return None
        value = value[key]
    return value


def _int64(obj: Mapping[str, Any], *path: str) -> int | None:
    """unstructured.NestedInt64: absent -> None; present but not an integer -> an error."""
    value = _nested(obj, *path)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{'.'.join(path)} accessor error: {value!r} is of the type {type(value).__name__}, "
                         "expected int64")
    return value


def _conditions(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    conditions = _nested(obj, "status", "conditions")
    if conditions is None:
        return []
    if not isinstance(conditions, list):
        raise ValueError("status.conditions is not a list")
    return [c for c in conditions if isinstance(c, Mapping)]


def _crd_verdict(obj: Mapping[str, Any]) -> tuple[str, str]:
    for cond in _conditions(obj):
        if cond.get("type") == "NamesAccepted" and cond.get("status") == "False":
            return FAILED, str(cond.get("message", ""))
        if cond.get("type") == "Established":
            if cond.get("status") == "False" and cond.get("reason") != "Installing":
                return FAILED, str(cond.get("message", ""))
            if cond.get("status") == "True":
                return CURRENT, "CRD is established"
    return IN_PROGRESS, "Install in progress"


def kstatus_verdict(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(status, message) of one object as kstatus computes it."""
    if _nested(obj, "metadata", "deletionTimestamp"):
        return TERMINATING, "Resource scheduled for deletion"

    generation = _int64(obj, "metadata", "generation")
    if generation is not None:
        observed = _int64(obj, "status", "observedGeneration")
        if observed is not None and observed != generation:
            kind = obj.get("kind", "")
            return IN_PROGRESS, f"{kind} generation is {generation}, but latest observed generation is {observed}"

    for cond in _conditions(obj):
        if cond.get("type") == "Reconciling" and cond.get("status") == "True":
            return IN_PROGRESS, str(cond.get("message", ""))
        if cond.get("type") == "Stalled" and cond.get("status") == "True":
            return FAILED, str(cond.get("message", ""))

    api_version = str(obj.get("apiVersion", ""))
    if obj.get("kind") == "CustomResourceDefinition" and api_version.startswith("apiextensions.k8s.io/"):
        return _crd_verdict(obj)
    return CURRENT, "Resource is current"
