"""Copy polls follow the copy's rate as the operator saw it between two polls, bounded below and above."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hyperv_operator.provisioning.observation import CopyJob
from hyperv_operator.provisioning.pacing import MAX_COPY_POLL, MIN_COPY_POLL, copy_poll_delay, progress_sample

GIB = 2**30
T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def job(copied: int, total: int, state: str = "Running") -> CopyJob:
    # The host's own timestamps are deliberately far off: pacing must not depend on the host's clock.
    return CopyJob(state, copied, total, 1, "2001-01-01T00:00:00Z", updated_at="2001-01-01T00:00:01Z")


def test_next_poll_lands_just_after_the_expected_end() -> None:
    # 1 GiB more seen in 10 s of the operator's clock, 2 GiB to go: 20 s, plus a 10% margin.
    assert copy_poll_delay(job(2 * GIB, 4 * GIB), 2.0, previous=(GIB, T0), now=T0 + timedelta(seconds=10)) == 22.0


def test_no_rate_yet_uses_the_default() -> None:
    now = T0 + timedelta(seconds=10)
    assert copy_poll_delay(job(GIB, 4 * GIB), 2.0, previous=None, now=now) == 2.0
    assert copy_poll_delay(job(GIB, 4 * GIB), 2.0, previous=(GIB, T0), now=now) == 2.0  # no progress
    assert copy_poll_delay(None, 2.0, previous=(0, T0), now=now) == 2.0
    assert copy_poll_delay(job(GIB, 4 * GIB, state="Completed"), 2.0, previous=(0, T0), now=now) == 2.0


def test_bounded_both_ways() -> None:
    now = T0 + timedelta(seconds=10)
    assert copy_poll_delay(job(4 * GIB - 1, 4 * GIB), 2.0, previous=(0, T0), now=now) == MIN_COPY_POLL
    assert copy_poll_delay(job(2, 400 * GIB), 2.0, previous=(1, T0), now=now) == MAX_COPY_POLL


def test_a_host_clock_running_60_times_faster_does_not_stretch_the_polls() -> None:
    """The simulated host's clock runs x60 in tests and the demo: a 120 s copy takes 2 s of wall time.
    The next poll must come within those 2 s, not 60 s (the cap) later."""
    half = job(GIB, 2 * GIB)  # half done after 1 s of the operator's clock
    assert copy_poll_delay(half, 2.0, previous=(0, T0), now=T0 + timedelta(seconds=1)) == 1.1


def test_progress_sample_reads_the_last_mark() -> None:
    assert progress_sample({"progressMark": "1024@2001-01-01T00:00:01Z", "progressSeenAt": "2025-01-01T12:00:00Z"}) == (
        1024, T0)
    assert progress_sample({}) is None
    assert progress_sample({"progressMark": "x@y", "progressSeenAt": "2025-01-01T12:00:00Z"}) is None


def test_a_merge_is_looked_at_soon_after_it_starts_then_as_long_as_it_ran() -> None:
    from hyperv_operator.provisioning.pacing import FIRST_MERGE_POLL, merge_poll_delay

    assert merge_poll_delay(None, 1.0) == FIRST_MERGE_POLL == merge_poll_delay(0.0, 1.0)
    assert FIRST_MERGE_POLL > 0.3  # a real wait: the engine re-reads at once at or below 0.3 s
    assert merge_poll_delay(0.6, 1.0) == 0.6
    assert merge_poll_delay(30.0, 1.0) == 1.0
