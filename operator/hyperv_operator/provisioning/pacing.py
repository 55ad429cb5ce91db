"""When to look again while the host works (pure)."""

from __future__ import annotations

from hyperv_operator import conditions as cond
from hyperv_operator.provisioning.observation import CopyJob

MIN_COPY_POLL = 0.5
MAX_COPY_POLL = 60.0
ETA_MARGIN = 1.1  # land just after the copy's expected end, not just before it


def copy_poll_delay(job: CopyJob | None, default: float) -> float:
    """Seconds until the next look at a running copy: its expected time to finish, from the rate the
    copy's own status file shows (bytes copied between its start and its last update, both host
    clock), so a copy is polled a few times whatever its size instead of every `default` seconds.
    Without a rate yet (nothing copied), `default`."""
    if job is None or job.state != "Running" or job.bytes_total <= 0 or job.bytes_copied <= 0:
        return default
    started, updated = cond.parse_timestamp(job.started_at), cond.parse_timestamp(job.updated_at)
    if started is None or updated is None:
        return default
    elapsed = (updated - started).total_seconds()
    if elapsed <= 0:
        return default
    rate = job.bytes_copied / elapsed
    remaining = max(job.bytes_total - job.bytes_copied, 0)
    return round(min(max(remaining / rate * ETA_MARGIN, MIN_COPY_POLL), MAX_COPY_POLL), 3)
