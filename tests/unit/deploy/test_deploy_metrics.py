"""hyperv_operator.metrics: names, labels and the status-diff rules, read from the scrape text."""

from __future__ import annotations

import asyncio
import socket
import time
import urllib.request
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from hyperv_operator import metrics
from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import (
    HostError,
    HostUnreachableError,
    PermanentHostError,
    TransientHostError,
)

T0 = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def scrape() -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples = {}
    for family in text_string_to_metric_families(generate_latest().decode()):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(name: str, **labels: str) -> float:
    return scrape().get((name, frozenset(labels.items())), 0.0)


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_every_metric_is_exposed_with_its_labels() -> None:
    metrics.PROVISIONS_TOTAL.labels(strategy="Copy", outcome="provisioned")
    metrics.PHASE_DURATION_SECONDS.labels(strategy="Copy", phase="Copying")
    metrics.TIME_TO_RUNNING_SECONDS.labels(strategy="Copy")
    metrics.TIME_TO_INDEPENDENT_SECONDS.labels(strategy="Copy")
    metrics.COPIES_IN_FLIGHT.labels(host="h")
    metrics.COPY_BYTES_TOTAL.labels(host="h")
    metrics.HOST_REACHABLE.labels(namespace="ns", host="h")
    metrics.WINRM_CALL_DURATION_SECONDS.labels(host="h")
    metrics.WINRM_ERRORS_TOTAL.labels(host="h", kind="transient")
    families = {f.name: f for f in text_string_to_metric_families(generate_latest().decode())}
    expected = {
        "hyperv_operator_provisions": ("counter", {"strategy", "outcome"}),
        "hyperv_operator_phase_duration_seconds": ("histogram", {"strategy", "phase"}),
        "hyperv_operator_time_to_running_seconds": ("histogram", {"strategy"}),
        "hyperv_operator_time_to_independent_seconds": ("histogram", {"strategy"}),
        "hyperv_operator_copies_in_flight": ("gauge", {"host"}),
        "hyperv_operator_copy_bytes": ("counter", {"host"}),
        "hyperv_operator_host_reachable": ("gauge", {"namespace", "host"}),
        "hyperv_operator_winrm_call_duration_seconds": ("histogram", {"host"}),
        "hyperv_operator_winrm_errors": ("counter", {"host", "kind"}),
    }
    for name, (kind, labels) in expected.items():
        assert families[name].type == kind, name
        sample_labels = {k for s in families[name].samples for k in s.labels} - {"le"}
        assert sample_labels == labels, name
    assert "process_cpu_seconds_total" in generate_latest().decode(), "default registry carries process metrics"


def status(phase: str, **extra: Any) -> dict[str, Any]:
    return {"phase": phase, "vmName": "vm", **extra}


def test_outcome_counted_once_on_the_transition() -> None:
    strategy = unique("S")
    host = unique("h")
    uid = unique("u")
    before = status("Merging")
    after = status("Provisioned")
    metrics.observe_status_change(strategy, host, before, after, T0, uid=uid)
    metrics.observe_status_change(strategy, host, after, after, T0, uid=uid)  # unchanged: nothing
    metrics.observe_status_change(strategy, host, after, dict(after), T0 + timedelta(seconds=5), uid=uid)
    assert value("hyperv_operator_provisions_total", strategy=strategy, outcome="provisioned") == 1
    metrics.observe_status_change(strategy, host, status("Copying"), status("Failed"), T0, uid=unique("u"))
    assert value("hyperv_operator_provisions_total", strategy=strategy, outcome="failed") == 1


def test_phase_durations_from_observed_entries() -> None:
    strategy, host, uid = unique("S"), unique("h"), unique("u")
    observe = metrics.observe_status_change
    observe(strategy, host, {}, status("Pending"), T0, uid=uid)
    observe(strategy, host, status("Pending"), status("CreatingDisk"), T0 + timedelta(seconds=2), uid=uid)
    observe(strategy, host, status("CreatingDisk"), status("CreatingDisk"), T0 + timedelta(seconds=3), uid=uid)
    observe(strategy, host, status("CreatingDisk"), status("Starting"), T0 + timedelta(seconds=7), uid=uid)
    observe(strategy, host, status("Starting"), status("Provisioned"), T0 + timedelta(seconds=8), uid=uid)
    name = "hyperv_operator_phase_duration_seconds"
    assert value(f"{name}_sum", strategy=strategy, phase="Pending") == 2
    assert value(f"{name}_sum", strategy=strategy, phase="CreatingDisk") == 5
    assert value(f"{name}_count", strategy=strategy, phase="CreatingDisk") == 1
    assert value(f"{name}_sum", strategy=strategy, phase="Starting") == 1
    # Provisioned is a steady state, not a phase with a duration.
    observe(strategy, host, status("Provisioned"), status("Deleting"), T0 + timedelta(seconds=60), uid=uid)
    assert value(f"{name}_count", strategy=strategy, phase="Provisioned") == 0


def test_phase_entered_before_a_restart_is_not_observed() -> None:
    strategy, host = unique("S"), unique("h")
    metrics.observe_status_change(strategy, host, status("Copying"), status("CreatingVM"), T0, uid=unique("u"))
    assert value("hyperv_operator_phase_duration_seconds_count", strategy=strategy, phase="Copying") == 0


def test_without_uid_the_vm_name_keys_the_phase_record() -> None:
    strategy, host = unique("S"), unique("h")
    metrics.observe_status_change(strategy, host, {}, status("Pending"), T0)
    metrics.observe_status_change(strategy, host, status("Pending"), status("Copying"), T0 + timedelta(seconds=4))
    assert value("hyperv_operator_phase_duration_seconds_sum", strategy=strategy, phase="Pending") == 4


def test_time_to_running_and_independent_observed_when_first_set() -> None:
    strategy, host, uid = unique("S"), unique("h"), unique("u")
    running = status("CopyingBase", timings={"secondsToRunning": 4.5})
    metrics.observe_status_change(strategy, host, status("Starting"), running, T0, uid=uid)
    metrics.observe_status_change(strategy, host, running, running, T0, uid=uid)
    independent = status("Provisioned", timings={"secondsToRunning": 4.5, "secondsToIndependent": 300})
    metrics.observe_status_change(strategy, host, running, independent, T0, uid=uid)
    metrics.observe_status_change(strategy, host, independent, independent, T0, uid=uid)
    assert value("hyperv_operator_time_to_running_seconds_count", strategy=strategy) == 1
    assert value("hyperv_operator_time_to_running_seconds_sum", strategy=strategy) == 4.5
    assert value("hyperv_operator_time_to_independent_seconds_count", strategy=strategy) == 1
    assert value("hyperv_operator_time_to_independent_seconds_sum", strategy=strategy) == 300
    assert value("hyperv_operator_time_to_running_seconds_bucket", strategy=strategy, le="5.0") == 1


def copying(copied: int, **copy: Any) -> dict[str, Any]:
    return status("Copying", copy={"bytesCopied": copied, "bytesTotal": 1000, "startedAt": "t", **copy})


def test_copy_bytes_follow_progress_deltas() -> None:
    strategy, host, uid = unique("S"), unique("h"), unique("u")
    observe = metrics.observe_status_change
    observe(strategy, host, status("Pending"), copying(100), T0, uid=uid)
    observe(strategy, host, copying(100), copying(400), T0, uid=uid)
    observe(strategy, host, copying(400), copying(400), T0, uid=uid)  # no progress: nothing
    observe(strategy, host, copying(400), copying(50), T0, uid=uid)  # copy restarted: 50 new bytes
    assert value("hyperv_operator_copy_bytes_total", host=host) == 450


def test_copies_in_flight_per_host_never_double_counts() -> None:
    strategy, host = unique("S"), unique("h")
    a, b = unique("u"), unique("u")
    observe = metrics.observe_status_change
    queued = status("Copying", copy={"queued": True})
    observe(strategy, host, status("Pending"), queued, T0, uid=a)
    assert value("hyperv_operator_copies_in_flight", host=host) == 0
    observe(strategy, host, queued, copying(10), T0, uid=a)
    observe(strategy, host, copying(10), copying(20), T0, uid=a)
    observe(strategy, host, copying(20), copying(20), T0, uid=a)
    observe(strategy, host, {}, copying(5), T0, uid=b)
    assert value("hyperv_operator_copies_in_flight", host=host) == 2
    done = copying(1000, finishedAt="t2")
    observe(strategy, host, copying(20), done, T0, uid=a)
    observe(strategy, host, done, done, T0, uid=a)
    assert value("hyperv_operator_copies_in_flight", host=host) == 1
    metrics.forget(b)
    assert value("hyperv_operator_copies_in_flight", host=host) == 0


def test_none_values_and_missing_sections_are_ignored() -> None:
    strategy, host = unique("S"), unique("h")
    metrics.observe_status_change(strategy, host, {"copy": None, "timings": None}, {"phase": None, "copy": None},
                                  T0, uid=unique("u"))
    assert value("hyperv_operator_copy_bytes_total", host=host) == 0


class FakeClient:
    def __init__(self, error: Exception | None = None, delay: float = 0.0) -> None:
        self.error = error
        self.delay = delay
        self.closed = False
        self.calls = 0

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.error is not None:
            raise self.error
        return []

    async def close(self) -> None:
        self.closed = True

    async def probe(self) -> str:
        return "probed"


def test_metered_client_times_successful_calls() -> None:
    host = unique("h")
    inner = FakeClient(delay=0.02)
    client = metrics.MeteredClient(inner, host)
    assert asyncio.run(client.run([])) == []
    assert value("hyperv_operator_winrm_call_duration_seconds_count", host=host) == 1
    assert value("hyperv_operator_winrm_call_duration_seconds_sum", host=host) >= 0.02
    assert not any(name == "hyperv_operator_winrm_errors_total" and ("host", host) in labels
                   for name, labels in scrape())
    asyncio.run(client.close())
    assert inner.closed
    assert asyncio.run(client.probe()) == "probed"  # optional extras pass through


@pytest.mark.parametrize(
    ("error", "kind"),
    [
        (HostUnreachableError("connection refused"), "unreachable"),
        (TransientHostError("object is in use"), "transient"),
        (PermanentHostError("not found"), "permanent"),
        (HostError("unclassified"), "permanent"),
    ],
)
def test_metered_client_counts_errors_by_kind_and_reraises(error: HostError, kind: str) -> None:
    host = unique("h")
    client = metrics.MeteredClient(FakeClient(error=error), host)
    with pytest.raises(type(error)) as raised:
        asyncio.run(client.run([]))
    assert raised.value is error
    assert value("hyperv_operator_winrm_errors_total", host=host, kind=kind) == 1
    assert value("hyperv_operator_winrm_call_duration_seconds_count", host=host) == 1
    others = {"unreachable", "transient", "permanent"} - {kind}
    assert all(value("hyperv_operator_winrm_errors_total", host=host, kind=k) == 0 for k in others)


def test_metered_client_does_not_count_non_host_errors() -> None:
    host = unique("h")
    client = metrics.MeteredClient(FakeClient(error=RuntimeError("bug")), host)
    with pytest.raises(RuntimeError):
        asyncio.run(client.run([]))
    assert sum(value("hyperv_operator_winrm_errors_total", host=host, kind=k)
               for k in ("unreachable", "transient", "permanent")) == 0
    assert value("hyperv_operator_winrm_call_duration_seconds_count", host=host) == 1


def test_host_reachable_gauge() -> None:
    host = unique("h")
    metrics.HOST_REACHABLE.labels(namespace="ns", host=host).set(1)
    assert value("hyperv_operator_host_reachable", namespace="ns", host=host) == 1
    metrics.HOST_REACHABLE.labels(namespace="ns", host=host).set(0)
    assert value("hyperv_operator_host_reachable", namespace="ns", host=host) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_metrics_server_serves_the_scrape() -> None:
    host = unique("h")
    metrics.HOST_REACHABLE.labels(namespace="ns", host=host).set(1)
    port = _free_port()
    metrics.start_metrics_server(port, "127.0.0.1")
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as response:
                body = response.read().decode()
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    assert f'hyperv_operator_host_reachable{{host="{host}",namespace="ns"}} 1.0' in body
