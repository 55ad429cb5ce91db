"""Copy polls follow the copy's own rate (its status file), bounded below and above."""

from __future__ import annotations

from hyperv_operator.provisioning.observation import CopyJob
from hyperv_operator.provisioning.pacing import MAX_COPY_POLL, MIN_COPY_POLL, copy_poll_delay

GIB = 2**30


def job(copied: int, total: int, seconds: float, state: str = "Running") -> CopyJob:
    return CopyJob(state, copied, total, 1, "2025-01-01T12:00:00Z",
                   updated_at=f"2025-01-01T12:00:{seconds:06.3f}Z")


def test_next_poll_lands_just_after_the_expected_end() -> None:
    # 1 GiB of 4 GiB in 10 s: 30 s to go, plus a 10% margin.
    assert copy_poll_delay(job(GIB, 4 * GIB, 10.0), 2.0) == 33.0


def test_no_rate_yet_uses_the_default() -> None:
    assert copy_poll_delay(job(0, 4 * GIB, 0.0), 2.0) == 2.0
    assert copy_poll_delay(None, 2.0) == 2.0
    assert copy_poll_delay(job(GIB, 4 * GIB, 10.0, state="Completed"), 2.0) == 2.0


def test_bounded_both_ways() -> None:
    assert copy_poll_delay(job(4 * GIB - 1, 4 * GIB, 10.0), 2.0) == MIN_COPY_POLL
    assert copy_poll_delay(job(1, 400 * GIB, 1.0), 2.0) == MAX_COPY_POLL
