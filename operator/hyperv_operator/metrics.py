"""Prometheus metrics of the operator (prometheus-client), served on an HTTP port.

All metrics live in prometheus-client's default ``REGISTRY``, next to its process and Python
collectors (CPU, memory, open file descriptors, GC), so ``start_metrics_server`` serves everything
and any code or test can read them with ``prometheus_client.generate_latest()`` without passing a
registry around. Metrics are process-wide: tests compare values before and after, never absolutes.

Status-derived metrics come from ``observe_status_change(strategy, host, old, new, now)``, called by
the handlers with the VM's status before and after each reconcile step. It is a pure diff of the two
statuses plus a small in-memory record of when each VM entered its current phase (the status has no
per-phase timestamp), so:

* an unchanged status counts nothing, a repeated identical transition counts nothing twice;
* outcomes count on the transition into ``Provisioned`` / ``Failed``;
* phase durations are observed when a VM leaves a phase whose entry this process saw. A phase that
  was entered before an operator restart is not observed (rather than observed wrong);
* time to Running / Independent are observed when ``timings.secondsToRunning`` /
  ``timings.secondsToIndependent`` first appear (set by the engine from the VM's creation);
* copied bytes are the growth of ``copy.bytesCopied`` (a restarted copy counts from zero again);
* copies in flight is, per host, the set of VMs whose copy runs (started, not queued, not finished).

The per-VM record is keyed by ``uid`` when given (preferred: pass ``uid=`` from the handler), else
by host and ``vmName``. ``forget(uid)`` drops it when the object is gone.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from hyperv_operator.hyperv.client import HyperVClient
from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import HostError, HostUnreachableError, PermanentHostError, TransientHostError
from hyperv_operator.provisioning.phases import Phase

__all__ = [
    "COPIES_IN_FLIGHT",
    "COPY_BYTES_TOTAL",
    "HOST_REACHABLE",
    "PHASE_DURATION_SECONDS",
    "PROVISIONS_TOTAL",
    "TIME_TO_INDEPENDENT_SECONDS",
    "TIME_TO_RUNNING_SECONDS",
    "WINRM_CALL_DURATION_SECONDS",
    "WINRM_ERRORS_TOTAL",
    "MeteredClient",
    "forget",
    "observe_status_change",
    "start_metrics_server",
]

# Seconds: a disk step takes well under a second, a 9 GB base copy many minutes.
_LONG_BUCKETS = (0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0, 7200.0)
_WINRM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

PROVISIONS_TOTAL = Counter(
    "hyperv_operator_provisions_total",
    "VirtualMachines that finished provisioning, by strategy and outcome (provisioned|failed).",
    ["strategy", "outcome"],
)
PHASE_DURATION_SECONDS = Histogram(
    "hyperv_operator_phase_duration_seconds",
    "Time a VirtualMachine spent in a provisioning phase, observed when it leaves the phase.",
    ["strategy", "phase"],
    buckets=_LONG_BUCKETS,
)
TIME_TO_RUNNING_SECONDS = Histogram(
    "hyperv_operator_time_to_running_seconds",
    "From the VirtualMachine's creation until its VM first ran (status.timings.secondsToRunning).",
    ["strategy"],
    buckets=_LONG_BUCKETS,
)
TIME_TO_INDEPENDENT_SECONDS = Histogram(
    "hyperv_operator_time_to_independent_seconds",
    "From the VirtualMachine's creation until its disk no longer needed the base "
    "(status.timings.secondsToIndependent).",
    ["strategy"],
    buckets=_LONG_BUCKETS,
)
COPIES_IN_FLIGHT = Gauge(
    "hyperv_operator_copies_in_flight",
    "Base-disk copies currently running on a host (queued copies not included).",
    ["host"],
)
COPY_BYTES_TOTAL = Counter(
    "hyperv_operator_copy_bytes_total",
    "Bytes of base disks copied on a host (from the copy progress the operator observed).",
    ["host"],
)
HOST_REACHABLE = Gauge(
    "hyperv_operator_host_reachable",
    "1 if the last probe reached the HyperVHost over WinRM, else 0.",
    ["namespace", "host"],
)
WINRM_CALL_DURATION_SECONDS = Histogram(
    "hyperv_operator_winrm_call_duration_seconds",
    "Latency of one round trip (a pipeline of statements) to a host, successful or not.",
    ["host"],
    buckets=_WINRM_BUCKETS,
)
WINRM_ERRORS_TOTAL = Counter(
    "hyperv_operator_winrm_errors_total",
    "Failed round trips to a host, by kind (transient|permanent|unreachable).",
    ["host", "kind"],
)

_TERMINAL_PHASES = frozenset({Phase.PROVISIONED, Phase.FAILED})
_NOT_COPYING_PHASES = frozenset({Phase.PROVISIONED, Phase.FAILED, Phase.DELETING})
_OUTCOMES = {Phase.PROVISIONED.value: "provisioned", Phase.FAILED.value: "failed"}
_MAX_TRACKED = 10_000

_lock = threading.Lock()
# key -> (phase, when this process saw the VM enter it); bounded, oldest dropped first.
_phase_entered: OrderedDict[str, tuple[str, datetime]] = OrderedDict()
# host -> keys of the VMs whose copy is running there.
_copying: dict[str, set[str]] = {}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _key(host: str, old: Mapping[str, Any], new: Mapping[str, Any], uid: str | None) -> str | None:
    if uid:
        return f"uid:{uid}"
    vm_name = new.get("vmName") or old.get("vmName")
    return f"name:{host}/{vm_name}" if vm_name else None


def _copy_running(status: Mapping[str, Any]) -> bool:
    copy = _mapping(status.get("copy"))
    if not copy or status.get("phase") in _NOT_COPYING_PHASES:
        return False
    started = copy.get("startedAt") is not None or _number(copy.get("bytesCopied")) is not None
    return started and not copy.get("queued") and copy.get("finishedAt") is None


def observe_status_change(
    strategy: str,
    host: str,
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    now: datetime,
    *,
    uid: str | None = None,
) -> None:
    """Update the status-derived metrics from one status transition (old -> new) of a VM."""
    old = _mapping(old)
    new = _mapping(new)
    key = _key(host, old, new, uid)
    old_phase, new_phase = old.get("phase"), new.get("phase")

    with _lock:
        if new_phase and new_phase != old_phase:
            if key is not None:
                entered = _phase_entered.pop(key, None)
                if entered is not None and entered[0] == old_phase and old_phase not in _TERMINAL_PHASES:
                    seconds = (now - entered[1]).total_seconds()
                    if seconds >= 0:
                        PHASE_DURATION_SECONDS.labels(strategy=strategy, phase=str(old_phase)).observe(seconds)
                _phase_entered[key] = (str(new_phase), now)
                while len(_phase_entered) > _MAX_TRACKED:
                    _phase_entered.popitem(last=False)
            outcome = _OUTCOMES.get(str(new_phase))
            if outcome is not None:
                PROVISIONS_TOTAL.labels(strategy=strategy, outcome=outcome).inc()

        old_timings, new_timings = _mapping(old.get("timings")), _mapping(new.get("timings"))
        for field, histogram in (("secondsToRunning", TIME_TO_RUNNING_SECONDS),
                                 ("secondsToIndependent", TIME_TO_INDEPENDENT_SECONDS)):
            value = _number(new_timings.get(field))
            if value is not None and _number(old_timings.get(field)) is None and value >= 0:
                histogram.labels(strategy=strategy).observe(value)

        old_bytes = _number(_mapping(old.get("copy")).get("bytesCopied"))
        new_bytes = _number(_mapping(new.get("copy")).get("bytesCopied"))
        if new_bytes is not None:
            # First progress seen, or the copy restarted from zero: all of new_bytes is new.
            restarted = old_bytes is None or new_bytes < old_bytes
            delta = new_bytes if restarted or old_bytes is None else new_bytes - old_bytes
            if delta > 0:
                COPY_BYTES_TOTAL.labels(host=host).inc(delta)

        if key is not None:
            running = _copying.setdefault(host, set())
            if _copy_running(new):
                running.add(key)
            else:
                running.discard(key)
            COPIES_IN_FLIGHT.labels(host=host).set(len(running))


def forget(uid: str) -> None:
    """Drop what is remembered about a VM (call when its object is gone)."""
    key = f"uid:{uid}"
    with _lock:
        _phase_entered.pop(key, None)
        for host, running in _copying.items():
            if key in running:
                running.discard(key)
                COPIES_IN_FLIGHT.labels(host=host).set(len(running))


def _error_kind(exc: HostError) -> str:
    if isinstance(exc, HostUnreachableError):
        return "unreachable"
    if isinstance(exc, TransientHostError):
        return "transient"
    if isinstance(exc, PermanentHostError):
        return "permanent"
    return "permanent"  # an unclassified HostError: `errors.classify` treats unknowns as permanent


class MeteredClient:
    """A HyperVClient that times every round trip and counts HostErrors by kind, then re-raises.

    Other attributes of the wrapped client (e.g. an optional ``probe``) are passed through.
    """

    def __init__(self, inner: HyperVClient, host: str) -> None:
        self._inner = inner
        self._host = host

    @property
    def inner(self) -> HyperVClient:
        return self._inner

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        started = time.perf_counter()
        try:
            return await self._inner.run(statements)
        except HostError as exc:
            WINRM_ERRORS_TOTAL.labels(host=self._host, kind=_error_kind(exc)).inc()
            raise
        finally:
            WINRM_CALL_DURATION_SECONDS.labels(host=self._host).observe(time.perf_counter() - started)

    async def close(self) -> None:
        await self._inner.close()

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_inner", "_host"):
            raise AttributeError(name)
        return getattr(self._inner, name)


def start_metrics_server(port: int, addr: str = "0.0.0.0") -> None:  # noqa: S104 - in a pod, scraped from outside
    """Serve ``/metrics`` (the default registry) on ``addr:port`` from a daemon thread."""
    start_http_server(port, addr=addr)


# --- images (VirtualMachineImage / ClusterVirtualMachineImage; see hyperv_operator/images) ----------

IMAGE_READY = Gauge(
    "hyperv_operator_image_ready",
    "1 if the image is Ready (its current generation's file was read and is unchanged), else 0.",
    ["kind", "namespace", "image"],
)
IMAGE_DEPENDENTS = Gauge(
    "hyperv_operator_image_dependents",
    "VMs whose disks still chain to a file of the image, per generation.",
    ["kind", "namespace", "image", "generation"],
)
IMAGE_GENERATION_BYTES = Gauge(
    "hyperv_operator_image_generation_bytes",
    "Size on disk of each generation's file that is not collected yet.",
    ["kind", "namespace", "image", "generation"],
)
IMAGE_FILES_COLLECTED_TOTAL = Counter(
    "hyperv_operator_image_files_collected_total",
    "Superseded generation files the operator removed (retention Delete, no dependents).",
    ["kind"],
)
_IMAGE_GENERATIONS: dict[tuple[str, str, str], set[str]] = {}


def observe_image(kind: str, namespace: str, name: str, status: Mapping[str, Any], *, ready: bool) -> None:
    """Set the image gauges from the status the controller just computed."""
    key = (kind, namespace, name)
    _IMAGE_KEYS.add(key)
    IMAGES.labels(kind=kind).set(sum(1 for k in _IMAGE_KEYS if k[0] == kind))
    IMAGE_READY.labels(kind=kind, namespace=namespace, image=name).set(1 if ready else 0)
    seen: set[str] = set()
    for record in status.get("generations") or []:
        gen = str(record.get("generation"))
        if record.get("collected"):
            continue
        seen.add(gen)
        IMAGE_DEPENDENTS.labels(kind=kind, namespace=namespace, image=name, generation=gen).set(
            int(record.get("dependents") or 0))
        identity = str(record.get("identity") or "").split("/")
        if len(identity) == 3 and identity[1].isdigit():
            IMAGE_GENERATION_BYTES.labels(kind=kind, namespace=namespace, image=name, generation=gen).set(
                int(identity[1]))
    for gen in _IMAGE_GENERATIONS.get(key, set()) - seen:
        for gauge in (IMAGE_DEPENDENTS, IMAGE_GENERATION_BYTES):
            with contextlib.suppress(KeyError):
                gauge.remove(kind, namespace, name, gen)
    _IMAGE_GENERATIONS[key] = seen


def forget_image(kind: str, namespace: str, name: str) -> None:
    key = (kind, namespace, name)
    _forget_image_caches(kind, namespace, name)
    for gen in _IMAGE_GENERATIONS.pop(key, set()):
        for gauge in (IMAGE_DEPENDENTS, IMAGE_GENERATION_BYTES):
            with contextlib.suppress(KeyError):
                gauge.remove(kind, namespace, name, gen)
    with contextlib.suppress(KeyError):
        IMAGE_READY.remove(kind, namespace, name)


IMAGES = Gauge(
    "hyperv_operator_images",
    "Images (VirtualMachineImage / ClusterVirtualMachineImage) this operator keeps, per kind.",
    ["kind"],
)
IMAGE_CACHE_BYTES = Gauge(
    "hyperv_operator_image_cache_bytes",
    "Bytes of each image's Ready per-share cached copies.",
    ["kind", "namespace", "image", "share"],
)
IMAGE_CACHE_DEPENDENTS = Gauge(
    "hyperv_operator_image_cache_dependents",
    "VMs whose disks chain to (or wait for) a per-share cached copy of the image.",
    ["kind", "namespace", "image", "share"],
)
IMAGE_CACHE_HITS = Counter(
    "hyperv_operator_image_cache_hits_total",
    "VMs on another share than their image's file that found a Ready cached copy on their share.",
    ["kind", "namespace", "image"],
)
IMAGE_CACHE_MISSES = Counter(
    "hyperv_operator_image_cache_misses_total",
    "VMs on another share than their image's file that found no Ready cached copy (Differencing waits for "
    "one; Quick and Copy use the image's file).",
    ["kind", "namespace", "image"],
)
IMAGE_CACHE_COPIES_TOTAL = Counter(
    "hyperv_operator_image_cache_copies_total",
    "Cache copies started (one per image generation per share, plus restarts after a lost worker).",
    ["kind"],
)
_IMAGE_SHARES: dict[tuple[str, str, str], set[str]] = {}
_IMAGE_KEYS: set[tuple[str, str, str]] = set()


def observe_image_caches(kind: str, namespace: str, name: str, entries: Iterable[Mapping[str, Any]]) -> None:
    """Set the cache gauges from the image's cache entries (Ready bytes, dependents per share)."""
    key = (kind, namespace, name)
    _IMAGE_KEYS.add(key)
    IMAGES.labels(kind=kind).set(sum(1 for k in _IMAGE_KEYS if k[0] == kind))
    size: dict[str, int] = {}
    users: dict[str, int] = {}
    for entry in entries:
        if entry.get("state") == "Collected":
            continue
        share = str(entry.get("share") or "")
        users[share] = users.get(share, 0) + int(entry.get("dependents") or 0) + int(entry.get("waiting") or 0)
        if entry.get("state") == "Ready":
            size[share] = size.get(share, 0) + int(entry.get("bytes") or 0)
    for share in users:
        IMAGE_CACHE_BYTES.labels(kind=kind, namespace=namespace, image=name, share=share).set(size.get(share, 0))
        IMAGE_CACHE_DEPENDENTS.labels(kind=kind, namespace=namespace, image=name, share=share).set(users[share])
    for share in _IMAGE_SHARES.get(key, set()) - set(users):
        for gauge in (IMAGE_CACHE_BYTES, IMAGE_CACHE_DEPENDENTS):
            with contextlib.suppress(KeyError):
                gauge.remove(kind, namespace, name, share)
    _IMAGE_SHARES[key] = set(users)


def _forget_image_caches(kind: str, namespace: str, name: str) -> None:
    key = (kind, namespace, name)
    _IMAGE_KEYS.discard(key)
    IMAGES.labels(kind=kind).set(sum(1 for k in _IMAGE_KEYS if k[0] == kind))
    for share in _IMAGE_SHARES.pop(key, set()):
        for gauge in (IMAGE_CACHE_BYTES, IMAGE_CACHE_DEPENDENTS):
            with contextlib.suppress(KeyError):
                gauge.remove(kind, namespace, name, share)
