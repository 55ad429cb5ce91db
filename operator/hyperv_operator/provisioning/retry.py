"""Retries with an end (pure): exponential backoff with jitter and a cap for transient host errors,
recorded in the status (`status.retry`: attempts, since, nextRetryAt) so it is visible and survives
restarts; a deletion that cannot reach its host for DELETE_STALL_AFTER is Stalled with the reason
and the way out (the abandon annotation, see docs)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.provisioning.phases import Phase

BASE_DELAY = 2.0
MAX_DELAY = 300.0
DELETE_STALL_AFTER = 600.0
"""Seconds a deletion keeps failing on an unreachable host before it is reported Stalled."""
ABANDON_ANNOTATION = "hyperv-operator.io/abandon-host-resources"
RETRY_ANNOTATION = "hyperv-operator.io/retry"


def backoff(attempt: int, key: str) -> float:
    """Seconds before retry number `attempt` (1-based): doubling from BASE_DELAY up to MAX_DELAY, with
    "equal jitter" (half fixed, half spread) so VMs failing together do not retry together. The
    jitter comes from a hash of (key, attempt): pure and repeatable, yet different per VM."""
    ceiling = min(MAX_DELAY, BASE_DELAY * 2 ** max(0, attempt - 1))
    spread = int(hashlib.sha256(f"{key}:{attempt}".encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return float(round(ceiling / 2 + spread * ceiling / 2, 3))


def next_attempt(status: Mapping[str, Any], now: datetime, key: str) -> tuple[dict[str, Any], float]:
    """The `retry` record after one more failed attempt, and the delay before the next one."""
    previous = status.get("retry") or {}
    attempts = int(previous.get("attempts") or 0) + 1
    delay = backoff(attempts, key)
    record = {"attempts": attempts, "since": previous.get("since") or cond.timestamp(now),
              "nextRetryAt": cond.timestamp(now + timedelta(seconds=delay))}
    return record, delay


def failing_for(record: Mapping[str, Any], now: datetime) -> float:
    since = cond.parse_timestamp(str(record.get("since") or ""))
    return 0.0 if since is None else (now - since).total_seconds()


COPY_ATTEMPTS = 4
"""A failed copy (disk full, share dropped) is tried this many times in all, then Failed (Stalled)."""
COPY_RETRY_BASE = 30.0
"""Seconds before the first copy retry (doubling, jittered): time for its cause to go (space freed)."""


@dataclass(frozen=True)
class CopyRetry:
    record: dict[str, Any]  # merged into status.copy
    give_up: bool
    wait: float  # seconds until the copy may start again (0: now)


def copy_failed(copy: Mapping[str, Any], failed_at: str, now: datetime, key: str) -> CopyRetry:
    """Pure. A copy found Failed on the host: counted once per failure (its status file's finishedAt
    tells a new failure from the same one seen again), retried after a backoff while attempts remain."""
    failures = int(copy.get("failures") or 0)
    retry_at = cond.parse_timestamp(str(copy.get("retryAt") or ""))
    if copy.get("lastFailureAt") != failed_at or retry_at is None:
        failures += 1
        delay = COPY_RETRY_BASE * 2 ** (failures - 1) * (0.75 + 0.25 * backoff(1, f"{key}:{failures}") / BASE_DELAY)
        retry_at = now + timedelta(seconds=delay)
    record = {"failures": failures, "lastFailureAt": failed_at, "retryAt": cond.timestamp(retry_at)}
    if failures >= COPY_ATTEMPTS:
        return CopyRetry({**record, "retryAt": None}, give_up=True, wait=0.0)
    return CopyRetry(record, give_up=False, wait=max(0.0, (retry_at - now).total_seconds()))


def requested(status: Mapping[str, Any], value: str, copy_phase: str) -> dict[str, Any] | None:
    """Pure. The retry annotation got a value not handled yet: the status to run from (failure counts
    reset; a failed copy goes back to its copy phase; a failure before anything was created starts
    over), or None when there is nothing to do."""
    if not value or value == status.get("retryRequest"):
        return None
    new = dict(status)
    new["retryRequest"] = value
    new.pop("retry", None)
    copy = dict(new.get("copy") or {})
    for key in ("failures", "lastFailureAt", "retryAt"):
        copy.pop(key, None)
    if new.get("copy") is not None:
        new["copy"] = copy
    if status.get("phase") == Phase.FAILED.value:
        stalled = cond.find(status.get("conditions"), cond.STALLED) or {}
        if stalled.get("reason") == "CopyFailed":
            new["phase"] = copy_phase
        elif not status.get("vmId") and not status.get("createdFiles"):
            new["phase"] = Phase.PENDING.value
    return new
