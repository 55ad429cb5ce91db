"""metav1.Condition helpers (kstatus: Reconciling, Stalled, Ready, Independent).

A condition is a plain dict in the metav1.Condition shape: type, status ("True"/"False"/"Unknown"),
observedGeneration, lastTransitionTime, reason (CamelCase), message. `lastTransitionTime` changes
only when `status` changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

RECONCILING = "Reconciling"
STALLED = "Stalled"
READY = "Ready"
INDEPENDENT = "Independent"

ORDER = (READY, RECONCILING, STALLED, INDEPENDENT)

_REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")


def timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with a trailing Z, second precision (what metav1.Time carries)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def precise_timestamp(moment: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a trailing Z: for status.timings, where whole seconds would
    make a 0.3 s step look like 1 s (conditions keep metav1.Time's second precision)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def parse_timestamp(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def find(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> Mapping[str, Any] | None:
    for condition in conditions or ():
        if condition.get("type") == type_:
            return condition
    return None


def is_true(conditions: Iterable[Mapping[str, Any]] | None, type_: str) -> bool:
    condition = find(conditions, type_)
    return condition is not None and condition.get("status") == "True"


def make(
    previous: Iterable[Mapping[str, Any]] | None,
    type_: str,
    status: bool | None,
    reason: str,
    message: str,
    generation: int,
    now: datetime,
) -> dict[str, Any]:
    """One condition; keeps the previous lastTransitionTime when the status did not change."""
    if not _REASON.match(reason):
        raise ValueError(f"condition reason {reason!r} is not CamelCase")
    text = "Unknown" if status is None else ("True" if status else "False")
    old = find(previous, type_)
    transition = old.get("lastTransitionTime") if old and old.get("status") == text else None
    return {
        "type": type_,
        "status": text,
        "observedGeneration": generation,
        "lastTransitionTime": transition or timestamp(now),
        "reason": reason,
        "message": message,
    }


def merge(
    previous: Iterable[Mapping[str, Any]] | None, updates: Iterable[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """The previous list with `updates` replacing conditions of the same type; stable order."""
    by_type: dict[str, dict[str, Any]] = {str(c["type"]): dict(c) for c in previous or ()}
    for update in updates:
        by_type[str(update["type"])] = dict(update)
    known = [by_type.pop(t) for t in ORDER if t in by_type]
    return known + [by_type[t] for t in sorted(by_type)]
