"""When to look again while the host works (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.provisioning.observation import CopyJob

MIN_COPY_POLL = 0.5
FIRST_MERGE_POLL = 0.4  # above the engine's "look again now" (0.3): a real wait, not an immediate re-read
MAX_COPY_POLL = 60.0
ETA_MARGIN = 1.1  # land just after the copy's expected end, not just before it


def progress_sample(copy_status: Mapping[str, Any] | None) -> tuple[int, datetime] | None:
    """(bytes copied, when the operator first saw that many) from the copy's status record: the last
    poll's progress mark (`<bytes>@<host updatedAt>`) and the operator's time of seeing it."""
    record = copy_status or {}
    mark, seen = str(record.get("progressMark") or ""), cond.parse_timestamp(record.get("progressSeenAt"))
    head = mark.split("@", 1)[0]
    if seen is None or not head.isdigit():
        return None
    return int(head), seen


def copy_poll_delay(job: CopyJob | None, default: float, *, previous: tuple[int, datetime] | None,
                    now: datetime) -> float:
    """Seconds until the next look at a running copy: its expected time to finish, at the rate the
    operator saw between the previous poll and this one (both on the operator's clock: the host's
    clock may be set differently, or, in a simulation, run faster), so a copy is polled a few times
    whatever its size instead of every `default` seconds. Without a rate yet, `default`."""
    if job is None or job.state != "Running" or job.bytes_total <= 0 or previous is None:
        return default
    copied = job.bytes_copied - previous[0]
    elapsed = (now - previous[1]).total_seconds()
    if copied <= 0 or elapsed <= 0:
        return default
    rate = copied / elapsed
    remaining = max(job.bytes_total - job.bytes_copied, 0)
    return round(min(max(remaining / rate * ETA_MARGIN, MIN_COPY_POLL), MAX_COPY_POLL), 3)


def merge_poll_delay(merging_for: float | None, longest: float) -> float:
    """Seconds until the next look at a checkpoint merge: soon after it starts (a checkpoint that took
    few guest writes merges in well under a second), then as long as it has already run, up to
    `longest`: a few more looks at a long merge, instead of a whole `longest` after every short one."""
    if merging_for is None:
        return FIRST_MERGE_POLL
    return round(min(max(merging_for, FIRST_MERGE_POLL), longest), 3)
