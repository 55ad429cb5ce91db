"""Retries with an end (pure): exponential backoff with jitter and a cap for transient host errors,
recorded in the status (`status.retry`: attempts, since, nextRetryAt) so it is visible and survives
restarts; a deletion that cannot reach its host for DELETE_STALL_AFTER is Stalled with the reason
and the way out (the abandon annotation, see docs)."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from hyperv_operator import conditions as cond

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
