"""kopf registration: thin glue between Kubernetes events and the provisioning engine.

No decisions here. Each VirtualMachine handler call runs one engine step under a per-object lock,
writes the complete status the engine returns, posts its events, and asks kopf to call again after
the engine's delay (`kopf.TemporaryError(delay=...)`) until the engine says it has converged.

Before any engine call the VM passes the tenancy check (`tenancy.policy.check_vm`: the host exists,
admits the VM's namespace, and the VM's paths are inside the host's storage roots), the same check
the admission webhook (`validate-vm`) makes at apply time. A refused VM is Stalled and re-checked in
the cluster only: the engine, hence the host, never sees it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import kopf

from hyperv_operator import api, metrics, wakeups
from hyperv_operator import conditions as cond
from hyperv_operator.api import DeletionPolicy, HyperVHostSpec, VirtualMachineSpec
from hyperv_operator.draining import Drain
from hyperv_operator.hosts import ClientFactory, HostConfigError, HostConnections, SecretReader
from hyperv_operator.hyperv.errors import ClientClosedError, HostError
from hyperv_operator.hyperv.probe import probe_client
from hyperv_operator.images import controller as images
from hyperv_operator.images.model import CLUSTER_IMAGE_KIND, IMAGE_KIND, ImageRef
from hyperv_operator.provisioning import bootstrap, engine, planner, retry, settle
from hyperv_operator.provisioning.base_facts import BaseFacts
from hyperv_operator.provisioning.engine import CopySlots, Event, StepOutcome, VmRef
from hyperv_operator.provisioning.gate import HostGate, under_way
from hyperv_operator.provisioning.phases import COPY_PHASES, Phase
from hyperv_operator.status_writer import KubeStatusWriter, KubeVmWatch, StatusConflict, StatusGone, StatusWriter
from hyperv_operator.tenancy import classes, policy
from hyperv_operator.tenancy.webhook import VALIDATE_VM_ID, WebhookCertificate, inject_ca_bundle
from hyperv_operator.wakeups import Wakeups

logger = logging.getLogger("hyperv_operator.handlers")

HOST_MISSING_RETRY_SECONDS = 10.0
"""How often a refused or waiting VM is re-checked (in the cluster only) for its host to appear or admit it."""
INLINE_WAIT_SECONDS = 5.0
"""A step that asks to be called again this soon (a copy, a merge, the guest's boot) is called again
inside the same handler call after writing its status, instead of through a kopf retry: a retry costs
two API writes (kopf's progress annotation, then its "touch" patch) and several API round trips."""
INLINE_BUDGET_SECONDS = 20.0
"""How long one handler call goes on through such waits (and waits for a copy slot) before handing back
to kopf. kopf processes one object's events one at a time: a deletion or spec change of the VM meanwhile
ends the wait at once (`VmNews`, from the metadata watch); this bounds it where no watch runs."""
REPLAN_SECONDS = 0.3
"""A step planned on a status that was not the server's any more writes nothing and is planned again this
soon, on the status as it is."""
_BASE_RV = "hyperv_operator_status_rv"
"""Handler kwargs key: the resourceVersion the status in kwargs["status"] was read at (after our own write)."""
_EVENTS_AFTER = "hyperv_operator_events_after"
"""Handler kwargs key: the step's Events, posted once its status is written (`_apply_outcome`)."""


@dataclass(frozen=True)
class Marks:
    """What in a VirtualMachine's metadata asks for other work than the running handler call's: a new
    spec (generation), deletion, a new value of the retry annotation."""

    generation: int
    deleting: bool
    retry: str

    @classmethod
    def of(cls, metadata: Mapping[str, Any]) -> Marks:
        annotations = metadata.get("annotations") or {}
        return cls(int(metadata.get("generation") or 0), bool(metadata.get("deletionTimestamp")),
                   str(annotations.get(retry.RETRY_ANNOTATION) or ""))

    def newer_than(self, known: Marks) -> bool:
        # generation only grows and deletion is never undone: a watch lagging behind the handler's
        # body is not news. The retry annotation has no order: any other value at a generation not
        # behind is news (a lagging watch costs one early hand-back at most).
        return (self.generation > known.generation or (self.deleting and not known.deleting)
                or (self.generation >= known.generation and self.retry != known.retry))


class VmNews:
    """The latest metadata marks of every VirtualMachine, as the metadata watch delivers them (kopf's
    own queue for a VM is not read while a handler call for it runs), and waits that end when a VM's
    marks move past what a handler call started from."""

    def __init__(self) -> None:
        self._latest: dict[str, Marks] = {}
        self._gone: set[str] = set()
        self._changed: dict[str, asyncio.Event] = {}

    def observe(self, metadata: Mapping[str, Any], deleted: bool = False) -> None:
        uid = str(metadata.get("uid") or "")
        if not uid:
            return
        if deleted:
            self._latest.pop(uid, None)
        else:
            self._latest[uid] = Marks.of(metadata)
        event = self._changed.get(uid)
        if event is not None:
            event.set()

    def newer(self, uid: str, known: Marks) -> bool:
        latest = self._latest.get(uid)
        return latest is not None and latest.newer_than(known)

    async def wait(self, uid: str, known: Marks, timeout: float) -> bool:
        """Sleeps `timeout` seconds, or less: True as soon as the VM's marks are newer than `known`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        event = self._changed.setdefault(uid, asyncio.Event())
        try:
            while not self.newer(uid, known):
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                event.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(event.wait(), remaining)
            return True
        finally:
            self._changed.pop(uid, None)

    def __len__(self) -> int:
        return len(self._latest)


@dataclass(frozen=True)
class WebhookConfig:
    """Where kopf's WebhookServer listens and with which certificate (see tenancy/webhook.py)."""

    port: int
    certificate: WebhookCertificate
    address: str = "0.0.0.0"  # noqa: S104 - reached by the API server through the webhook Service
    host: str | None = None
    configuration: str | None = None
    """ValidatingWebhookConfiguration to write the CA bundle into (None: cert-manager injects it)."""
    webhook_names: tuple[str, ...] = ()


@dataclass
class OperatorConfig:
    drift_interval: float = 30.0
    host_probe_interval: float = 60.0
    client_factory: ClientFactory | None = None
    secret_reader: SecretReader | None = None
    operator_namespace: str = "hyperv-operator-system"
    """Where ClusterHyperVHosts' Secrets live."""
    webhook: WebhookConfig | None = None
    peering_lifetime: int | None = None
    """kopf's settings.peering.lifetime (seconds) when peering; None: kopf's default or standalone."""
    delete_stall_after: float = retry.DELETE_STALL_AFTER
    """Seconds a deletion may fail on an unreachable host before it is Stalled (and the abandon annotation named)."""
    shutdown_grace: float = 20.0
    """On SIGTERM, seconds the running steps get to finish their host commands before the connections close
    (below the pod's terminationGracePeriodSeconds, 30 by default)."""
    wait_retry_min: float = 0.0
    """Seconds a VM waiting for its host / Secret / admission waits at least before its next check."""
    wait_retry_max: float = HOST_MISSING_RETRY_SECONDS
    """...and at most (30 s at least for a misconfigured host). An edit of the host or Secret re-checks it at once."""


class QuietWakeHandlers(logging.Filter):
    """kopf logs every successful handler run at INFO. The image and namespace wake handlers run on every
    watch event of those kinds (image status writes, any namespace edit) and mostly do nothing; a wake
    that does something logs its own line ("re-checking N waiting VirtualMachine(s) now")."""

    QUIET = frozenset({"Handler 'image-wake' succeeded.", "Handler 'namespace-wake' succeeded."})

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() not in self.QUIET


@dataclass
class _VmLock:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    users: int = 0
    """Handler calls holding or waiting for the lock; the entry goes away at 0."""
    steps: int = 0
    """Steps finished under this lock while the entry lived."""


@dataclass
class Held:
    stale: bool
    """Another step ran while this caller waited: what it read before waiting is out of date."""


class VmLocks:
    """One lock per VirtualMachine uid, kept only while someone holds or waits for it (a table of
    every VM ever seen would grow for the operator's lifetime)."""

    def __init__(self) -> None:
        self._entries: dict[str, _VmLock] = {}

    @contextlib.asynccontextmanager
    async def held(self, uid: str) -> AsyncIterator[Held]:
        entry = self._entries.setdefault(uid, _VmLock())
        entry.users += 1
        seen = entry.steps
        try:
            async with entry.lock:
                yield Held(stale=entry.steps != seen)
                entry.steps += 1
        finally:
            entry.users -= 1
            if entry.users == 0:
                del self._entries[uid]

    def __len__(self) -> int:
        return len(self._entries)


class Shutdown:
    """Graceful stop (SIGTERM): no new engine steps; the steps already running finish their host
    commands (bounded by `drain`'s timeout) before the connections close, so no step sees a closed
    client because of the stop."""

    def __init__(self) -> None:
        self.stopping = False
        self._active = 0
        self._idle: asyncio.Event | None = None

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        if self._idle is None:
            self._idle = asyncio.Event()
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if self._active == 0:
                self._idle.set()

    @property
    def active(self) -> int:
        return self._active

    async def drain(self, timeout: float) -> bool:
        """Stop starting steps and wait up to `timeout` seconds for the running ones; True if all ended."""
        self.stopping = True
        if self._active == 0 or self._idle is None:
            return True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


SHUTDOWN_RETRY_SECONDS = 5.0
"""A change that arrives while the operator stops is handled by the next process (kopf retries it)."""


@dataclass
class Runtime:
    config: OperatorConfig
    connections: HostConnections
    slots: CopySlots = field(default_factory=CopySlots)
    bases: BaseFacts = field(default_factory=BaseFacts)
    """Base disks' Get-VHD facts per host, read by VMs' first observations (provisioning/base_facts.py)."""
    locks: VmLocks = field(default_factory=VmLocks)
    gate: HostGate = field(default_factory=HostGate)
    drain: Drain = field(default_factory=Drain)
    shutdown: Shutdown = field(default_factory=Shutdown)
    wakeups: Wakeups = field(default_factory=Wakeups)
    write_status: StatusWriter | None = None
    """Writes each step's status while the VM's lock is held, guarded by the resourceVersion it was
    planned on (status_writer.KubeStatusWriter); None: kopf writes it, when the call returns (then a
    step waits inside the call only for a copy slot)."""
    news: VmNews = field(default_factory=VmNews)
    """Deletions and spec edits of VMs, seen while their handler call runs (fed by the metadata watch)."""
    watch_metadata: bool = True
    """Start the VirtualMachine metadata watch at startup (with a KubeStatusWriter)."""
    carried: set[str] = field(default_factory=set)
    """VMs (uid) a change handler call is carrying through short waits (`_go_on`): not drift-checked."""
    read_class: Callable[[str], dict[str, Any] | None] | None = None
    """Issue 14: a VirtualMachineClass's spec by name (None: absent); default: the kubernetes client."""
    touch_vm: Callable[[str, str, Mapping[str, str]], None] | None = None
    """Writes annotations on a VirtualMachine (namespace, name, annotations); default: the kubernetes client."""

    def vm_class(self, name: str) -> dict[str, Any] | None:
        if self.read_class is None:
            self.read_class = kubernetes_class_reader()
        return self.read_class(name)

    def annotate_vm(self, namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        if self.touch_vm is None:
            self.touch_vm = kubernetes_vm_annotator()
        self.touch_vm(namespace, name, annotations)


def merge_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386 merge patch turning `old` into `new` (removed keys become None)."""
    patch: dict[str, Any] = {}
    for key, value in new.items():
        previous = old.get(key)
        if isinstance(value, Mapping) and isinstance(previous, Mapping):
            nested = merge_patch(previous, value)
            if nested:
                patch[key] = nested
        elif value != previous or key not in old:
            patch[key] = value
    for key in old:
        if key not in new:
            patch[key] = None
    return patch


def set_condition(
    current: list[dict[str, Any]], type_: str, status: str, reason: str, message: str, generation: int, now: datetime
) -> list[dict[str, Any]]:
    made = cond.make(current, type_, {"True": True, "False": False}.get(status), reason, message, generation, now)
    return cond.merge(current, [made])


def _now() -> datetime:
    return datetime.now(UTC)


def kubernetes_class_reader() -> Callable[[str], dict[str, Any] | None]:
    """Issue 14: reads a VirtualMachineClass by name (GET; a kopf index would hold every handler back
    until its first listing, and classes are read only for VMs that name one)."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    objects = kubernetes.client.CustomObjectsApi()

    def read(name: str) -> dict[str, Any] | None:
        try:
            body: Any = objects.get_cluster_custom_object(api.GROUP, api.VERSION, api.VM_CLASS_PLURAL, name)
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return dict(body.get("spec") or {})

    return read


def kubernetes_vm_annotator() -> Callable[[str, str, Mapping[str, str]], None]:
    """Merge-patches annotations onto a VirtualMachine (a VM gone meanwhile is fine)."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    objects = kubernetes.client.CustomObjectsApi()

    def annotate(namespace: str, name: str, annotations: Mapping[str, str]) -> None:
        try:
            objects.patch_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VM_PLURAL, name,
                                                   {"metadata": {"annotations": dict(annotations)}})
        except kubernetes.client.ApiException as exc:
            if exc.status != 404:
                raise

    return annotate


def vm_host_key(namespace: str, spec: Mapping[str, Any]) -> str:
    """The key of the VM's host in copy slots, metrics and status ("ns/name" or "ClusterHyperVHost/name")."""
    return policy.HostRef.from_vm_spec(spec).key(namespace)


def _one(index: kopf.Index[Any, dict[str, Any]], key: Any) -> dict[str, Any] | None:
    store = index.get(key)
    return next(iter(store), None) if store else None


@dataclass(frozen=True)
class ResolvedHost:
    spec: dict[str, Any] | None
    secret_namespace: str
    """Where the host's Secrets are read: the VM's namespace, or the operator's for a ClusterHyperVHost."""
    key: str
    """Copy slots, metrics and status use this ("ns/name", or "ClusterHyperVHost/name")."""
    refusal: policy.Refusal | None


def resolve_host(
    namespace: str,
    spec: Mapping[str, Any],
    indices: Mapping[str, kopf.Index[Any, dict[str, Any]]],
    operator_namespace: str,
) -> ResolvedHost:
    """The VM's host from the indices, and the tenancy verdict (no host I/O)."""
    ref = policy.HostRef.from_vm_spec(spec)
    key = vm_host_key(namespace, spec)
    if ref.kind == policy.CLUSTER_HOST_KIND:
        host = _one(indices["cluster_hosts_by_name"], ref.name)
        labels = _one(indices["namespace_labels"], namespace)
        secret_namespace = operator_namespace
    else:
        host = _one(indices["hosts_by_name"], (namespace, ref.name))
        labels, secret_namespace = None, namespace
    return ResolvedHost(host, secret_namespace, key, policy.check_vm(namespace, spec, host, labels))


def _apply_outcome(
    body: kopf.Body,
    patch: kopf.Patch,
    old_status: Mapping[str, Any],
    outcome: StepOutcome,
    spec: VirtualMachineSpec,
    host_key: str,
    events_after: list[Event],
) -> None:
    """The outcome's status into kopf's patch; its Events into `events_after`, which the step posts
    once the status is written (the status is what users and tools wait on, the Events only tell about
    it, so they do not share the API round trip's moment with it)."""
    uid = str(body.get("metadata", {}).get("uid"))
    new_status = {k: v for k, v in outcome.status.items() if v is not None}
    for key, value in merge_patch(old_status, new_status).items():
        patch.status[key] = value
    events_after.extend(outcome.events)
    metrics.observe_status_change(
        spec.strategy.value, host_key, old_status, new_status, _now(), uid=uid
    )
    if outcome.finished:
        metrics.forget(uid)


def _post(body: kopf.Body, events: Iterable[Event]) -> None:
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    vm_resource = (api.GROUP, api.VERSION, api.VM_PLURAL)
    host_resource = (api.GROUP, api.VERSION, api.HOST_PLURAL)
    cluster_host_resource = (api.GROUP, api.VERSION, api.CLUSTER_HOST_PLURAL)
    progress = wakeups.Storage(prefix=api.ANNOTATION_PREFIX, wakeups=runtime.wakeups)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = api.FINALIZER
        # Same prefix and keys as kopf's own storages had (no migration); see wakeups.py for what they add.
        settings.persistence.progress_storage = progress
        settings.persistence.diffbase_storage = wakeups.DiffBase(
            prefix=api.ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        # kopf posts an Event for every handler log line at or above this level: at INFO that is one
        # Event per "call me again" (TemporaryError) and per success, an API write each. The
        # operator's own Events (kopf.event) are posted whatever this level.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        # A timer told to stop because its VM is deleted gets this many zero-time loop cycles to exit
        # before kopf falls back to polling it (`cancellation_polling`, by default a minute, which the
        # finalizer then waits). The drift timer cancels its check at once, which takes a few cycles;
        # the poll is the backstop. (A wall-clock `instant_exit_timeout` would also delay each timer
        # on an operator stop, where the checks under way are let finish: see check_drift.)
        settings.background.instant_exit_zero_time_cycles = 50
        settings.background.cancellation_polling = 5
        settings.networking.request_timeout = 60
        if runtime.config.peering_lifetime is not None:
            settings.peering.lifetime = runtime.config.peering_lifetime
        webhook = runtime.config.webhook
        if webhook is not None:
            settings.admission.server = kopf.WebhookServer(
                addr=webhook.address,
                port=webhook.port,
                host=webhook.host,
                certfile=webhook.certificate.cert_file,
                pkeyfile=webhook.certificate.key_file,
                cadata=webhook.certificate.ca_pem or None,
            )

    @kopf.on.startup(registry=registry)
    async def publish_ca_bundle(**_: Any) -> None:
        webhook = runtime.config.webhook
        if webhook is None or not webhook.configuration or not webhook.certificate.ca_pem:
            return
        try:
            await asyncio.to_thread(
                inject_ca_bundle, webhook.configuration, webhook.certificate.ca_pem, webhook.webhook_names
            )
        except Exception as exc:  # the controller enforces the same rules without the webhook
            logger.error("cannot write the webhook CA bundle into %s: %s", webhook.configuration, exc)

    watches: list[KubeVmWatch] = []

    @kopf.on.startup(registry=registry)
    async def watch_vm_metadata(**_: Any) -> None:
        writer = runtime.write_status
        if runtime.watch_metadata and isinstance(writer, KubeStatusWriter):
            watch = KubeVmWatch(runtime.news.observe, await asyncio.to_thread(lambda: writer.custom))
            watch.start(asyncio.get_running_loop())
            watches.append(watch)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def close_connections(**_: Any) -> None:
        # Running steps finish their host commands first (bounded): closing under them would turn a
        # stop into errors on healthy VMs. What still runs after the grace sees ClientClosedError,
        # which writes nothing (settle.client_closed).
        if not await runtime.shutdown.drain(runtime.config.shutdown_grace):
            logger.warning("stopping with %d engine step(s) still running after %.0fs", runtime.shutdown.active,
                           runtime.config.shutdown_grace)
        for watch in watches:
            watch.stop()
        await runtime.connections.close()

    @kopf.index(*host_resource, id="hosts_by_name", registry=registry)
    def hosts_by_name(
        namespace: str | None, name: str, spec: kopf.Spec, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {(str(namespace), name): dict(spec)}

    @kopf.index(api.GROUP, api.VERSION, api.CLUSTER_HOST_PLURAL, id="cluster_hosts_by_name", registry=registry)
    def cluster_hosts_by_name(name: str, spec: kopf.Spec, **_: Any) -> dict[str, dict[str, Any]]:
        return {name: dict(spec)}

    @kopf.index("v1", "namespaces", id="namespace_labels", registry=registry)
    def namespace_labels(name: str, labels: kopf.Labels, **_: Any) -> dict[str, dict[str, str]]:
        # ClusterHyperVHost.namespaceSelector is matched against these (admission and controller).
        return {name: dict(labels)}

    @kopf.index(*vm_resource, id="vms_waiting", registry=registry)
    def vms_waiting(
        namespace: str | None, name: str, uid: str | None, spec: kopf.Spec, body: kopf.Body, **_: Any
    ) -> dict[str, tuple[str, str, str]]:
        # Only VMs waiting for something outside (a retry record or Stalled) whose handler sleeps on
        # kopf's retry delay, keyed by their host: the ones a host or Secret edit may wake (wakeups.py).
        # Kept from the watch, in memory: no listing, no write.
        # Also keyed by the image it waits for (not pinned yet) and, refused for its namespace's labels,
        # by its namespace: an image or namespace change wakes it like a host edit.
        status = body.get("status") or {}
        waiting = bool(status.get("retry")) or cond.is_true(status.get("conditions"), cond.STALLED)
        if not waiting or not progress.sleeping(body):
            return {}
        entry = (str(namespace), name, str(uid))
        keys = [vm_host_key(str(namespace), spec)]
        image = ImageRef.from_vm_spec(spec)
        if image is not None and not (status.get("image") or {}).get("path"):
            kind, image_namespace, image_name = image.key(str(namespace))
            keys.append(wakeups.image_key(kind, image_namespace, image_name))
        stalled: Mapping[str, Any] = next(
            (c for c in status.get("conditions") or [] if c.get("type") == cond.STALLED), {})
        if stalled.get("reason") in wakeups.ADMISSION_REASONS:
            keys.append(wakeups.namespace_key(str(namespace)))
        return dict.fromkeys(keys, entry)

    async def wake(keys: Iterable[str], index: kopf.Index[str, tuple[str, str, str]], why: str) -> None:
        """Re-check now the waiting VMs of these hosts (or images, namespaces: the keys of `vms_waiting`):
        mark them due, and write kopf's touch annotation on each (the event ends kopf's retry sleep;
        `wakeups.Storage` then reports the handler due)."""
        targets = sorted({entry for key in keys for entry in index.get(key, ())})
        if not targets:
            return
        logger.info("%s: re-checking %d waiting VirtualMachine(s) now", why, len(targets))
        stamp = _now().isoformat()
        for namespace, name, uid in targets:
            runtime.wakeups.mark(uid)
            try:
                await asyncio.to_thread(runtime.annotate_vm, namespace, name,
                                        {f"{api.ANNOTATION_PREFIX}/{progress.touch_key}": stamp})
            except Exception as exc:  # best effort: its own backoff re-checks it anyway
                logger.warning("cannot wake %s/%s: %s", namespace, name, exc)

    def hosts_using_secret(namespace: str, name: str, indices: Mapping[str, Any]) -> list[str]:
        """Keys of the hosts whose spec names this Secret (credentials or CA bundle)."""
        def uses(spec: Mapping[str, Any]) -> bool:
            return any((spec.get(ref) or {}).get("name") == name
                       for ref in ("credentialsSecretRef", "caBundleSecretRef"))
        keys = [policy.host_key(False, ns, host) for (ns, host), store in indices["hosts_by_name"].items()
                if ns == namespace and any(uses(s) for s in store)]
        if namespace == runtime.config.operator_namespace:
            keys += [policy.host_key(True, None, host) for host, store in indices["cluster_hosts_by_name"].items()
                     if any(uses(s) for s in store)]
        return keys

    # kopf refuses to start with admission handlers but no server: register only with a webhook.
    if runtime.config.webhook is not None:

        @kopf.on.validate(*vm_resource, id=VALIDATE_VM_ID, operations=["CREATE", "UPDATE"], registry=registry)
        def validate_vm(body: kopf.Body, warnings: list[str], **kwargs: Any) -> None:
            meta = body.get("metadata") or {}
            spec = dict(body.get("spec") or {})
            old = kwargs.get("old")
            # kopf's own writes (finalizers, annotations) and deletions must never be blocked: only a
            # new or changed spec is judged.
            unchanged = old is not None and dict(old.get("spec") or {}) == spec
            if kwargs.get("operation") == "UPDATE" and (meta.get("deletionTimestamp") or unchanged):
                return
            namespace = str(meta.get("namespace") or "")
            # --- classes (issue 14): a tenant cannot size a VM beyond its class ---
            class_refusal = classes.check(namespace, spec, runtime.vm_class(str(spec["className"]))
                                          if spec.get("className") else None)
            if class_refusal is not None and class_refusal.reason != "ClassNotFound":
                raise kopf.AdmissionError(f"{class_refusal.reason}: {class_refusal.message}", code=403)
            if class_refusal is not None:
                warnings.append(class_refusal.message)  # GitOps may apply the VM before its class
            # --- end classes ---
            image = images.resolve_vm_image(namespace, spec, {}, kwargs)
            if image is not None and image.refusal is not None:
                if not image.refusal.waiting:
                    raise kopf.AdmissionError(f"{image.refusal.reason}: {image.refusal.message}", code=403)
                warnings.append(image.refusal.message)  # the controller waits for the image (Stalled)
                return
            if image is not None:
                spec["baseVhd"] = image.base_path  # the image's file is confined like a raw baseVhd
            resolved = resolve_host(namespace, spec, kwargs, runtime.config.operator_namespace)
            if resolved.refusal is None:
                return
            if resolved.refusal.host_missing:
                # GitOps may apply the VM before its host: accept, the controller waits (Stalled).
                warnings.append(resolved.refusal.message)
                return
            raise kopf.AdmissionError(f"{resolved.refusal.reason}: {resolved.refusal.message}", code=403)

    async def step(kwargs: dict[str, Any], *, deleting: bool, drift: bool = False) -> StepOutcome | None:
        # Host work counts for the graceful hand-over to the standby (draining.py).
        async with runtime.drain.working():
            return await _step(kwargs, deleting=deleting, drift=drift)

    async def _step(kwargs: dict[str, Any], *, deleting: bool, drift: bool = False) -> StepOutcome | None:
        """One engine step for the VM in kopf's handler kwargs; writes its outcome into `patch`.

        Spec and status are read only once this call holds the VM's lock. A drift check that had to
        wait for the lock does nothing (None): the step that held it changed the VM, and its status
        patch may not be visible yet, so acting on what the timer saw would act on a stale VM."""
        meta: kopf.Meta = kwargs["meta"]
        if runtime.shutdown.stopping:
            if drift:
                return None
            raise kopf.TemporaryError("the operator is stopping", delay=SHUTDOWN_RETRY_SECONDS)
        with runtime.shutdown.running():
            async with runtime.locks.held(str(meta["uid"])) as held:
                if drift and (held.stale or not _settled(kwargs)):
                    return None
                if runtime.shutdown.stopping and drift:
                    return None  # waited for the lock into a stop: the next process checks drift
                # What the step plans on, read at one instant (a timer's body is a live view that
                # kopf replaces as events arrive): the status, and the resourceVersion it is at.
                kwargs["status"] = base = dict(kwargs["status"])
                kwargs["spec"] = dict(kwargs["spec"])
                base_rv = str(kwargs.get(_BASE_RV) or meta.get("resourceVersion") or "")
                events: list[Event] = []
                kwargs[_EVENTS_AFTER] = events
                try:
                    outcome = await _step_locked(kwargs, deleting=deleting)
                except kopf.TemporaryError:
                    await _commit(kwargs, base, base_rv)
                    _post(kwargs["body"], events)
                    raise
                written = await _commit(kwargs, base, base_rv)
                _post(kwargs["body"], events)  # what the host did, whether or not this status was written
                if not written and not outcome.finished:
                    # Planned on a status that was not the server's any more: plan again, on the server's.
                    delay = REPLAN_SECONDS if outcome.requeue_after is None else min(outcome.requeue_after,
                                                                                      REPLAN_SECONDS)
                    outcome = replace(outcome, requeue_after=delay)
                return outcome

    async def _commit(kwargs: dict[str, Any], base: Mapping[str, Any], base_rv: str) -> bool:
        """Writes the step's status (its merge patch from `base`) while the VM's lock is held, only onto
        `base` itself: if the object moved on since `base_rv` and its status is not `base` any more, the
        patch would land on a status it was not planned on (a key the newer status added and this plan
        never saw would survive it): nothing is written, and kwargs get the server's status to plan
        on again (False). A move of the metadata only (kopf's annotations, a spec edit) is written over.

        On success kwargs["status"] is the server's status after the write, and kopf's patch carries no
        status. If the write fails otherwise, the status stays in kopf's patch (kopf writes it and retries)."""
        patch: kopf.Patch = kwargs["patch"]
        written = patch.get("status")
        writer = runtime.write_status
        if writer is None or not written:
            return True
        meta: kopf.Meta = kwargs["meta"]
        namespace, name = str(meta["namespace"]), str(meta["name"])
        rv = base_rv
        for _ in range(3):
            try:
                done = await writer.write(namespace, name, written, rv)
            except StatusConflict:
                try:
                    now = await writer.read(namespace, name)
                except StatusGone:
                    del patch["status"]
                    return True
                except Exception as exc:
                    logger.warning("%s/%s: status not written (%s); planning again", namespace, name, exc)
                    del patch["status"]
                    return False
                if now.status != dict(base):
                    logger.info("%s/%s: the status moved on while this step planned on an older one; "
                                "planning again on the current one", namespace, name)
                    del patch["status"]
                    kwargs["status"], kwargs[_BASE_RV] = now.status, now.resource_version
                    return False
                rv = now.resource_version
                continue
            except StatusGone:
                del patch["status"]
                return True
            except Exception as exc:  # kopf writes it when the call returns, and retries
                logger.warning("%s/%s: status not written (%s); left to kopf", namespace, name, exc)
                return True
            del patch["status"]
            kwargs["status"], kwargs[_BASE_RV] = done.status, done.resource_version
            return True
        del patch["status"]
        return False

    def _settled(kwargs: Mapping[str, Any]) -> bool:
        # Only VMs no change handler drives: settled ones (Failed is re-checked too, so a VM waiting
        # for a missing base disk starts once the base appears), and VMs left in a phase between
        # with no change handler under way (its kopf progress annotation is gone): a Failed VM the
        # timer moved on (base appeared, retry annotation) is carried by the timer to Provisioned.
        if kwargs["meta"].get("deletionTimestamp"):
            return False
        if kwargs["status"].get("phase") in (Phase.PROVISIONED.value, Phase.FAILED.value):
            return True
        annotations = kwargs["meta"].get("annotations") or {}
        return bool(kwargs["status"].get("phase")) and f"{api.ANNOTATION_PREFIX}/reconcile" not in annotations

    async def _step_locked(kwargs: Mapping[str, Any], *, deleting: bool) -> StepOutcome:
        body: kopf.Body = kwargs["body"]
        meta: kopf.Meta = kwargs["meta"]
        patch: kopf.Patch = kwargs["patch"]
        namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        generation = int(meta.get("generation") or 0)
        class_name = kwargs["spec"].get("className")  # issue 14: the class's size, if the VM names one
        klass = await asyncio.to_thread(runtime.vm_class, str(class_name)) if class_name else None
        old_status = dict(kwargs["status"])
        spec_value = dict(classes.effective(kwargs["spec"], klass))
        # --- images: spec.imageRef resolves to a pinned file before anything else (images/controller.py)
        image = images.resolve_vm_image(namespace, spec_value, old_status, kwargs)
        if image is not None:
            recorded = bool(old_status.get("vmId") or old_status.get("createdFiles"))
            if deleting and image.base_path is None and not recorded:
                return StepOutcome(status=old_status, requeue_after=None, events=(), finished=True)
            if image.refusal is not None and not (deleting and image.base_path is not None):
                # Re-checked on the waits' backoff, and at once when the image (or, for a namespace
                # the image does not admit, the namespace's labels) changes: see image_changed.
                refused = settle.refused(old_status, generation, image.refusal.reason, image.refusal.message,
                                         _now(), retry=runtime.config.wait_retry_max, key=uid,
                                         floor=runtime.config.wait_retry_min)
                new = refused.status
                if image.refusal.reason == "BaseIdentityChanged":
                    # Its disk chains to a file that changed: the VM is not fit to run on it.
                    new["conditions"] = set_condition(new["conditions"], "Ready", "False", image.refusal.reason,
                                                      image.refusal.message, generation, _now())
                patch.status["conditions"] = new["conditions"]
                patch.status["message"] = new["message"]
                patch.status["phase"] = new["phase"]
                patch.status["retry"] = new["retry"]
                raise kopf.TemporaryError(image.refusal.message, delay=refused.requeue_after)
            spec_value["baseVhd"] = image.base_path
            if image.pin is not None and not deleting:
                # Pin first, act later: the pin is stored before any host command can chain a disk
                # to the file, so the image's dependents never miss a VM.
                patch.status["image"] = image.pin
                raise kopf.TemporaryError("pinned the image's current generation", delay=0.2)
        # --- end images
        vm_spec = VirtualMachineSpec.from_dict(spec_value)
        resolved = resolve_host(namespace, spec_value, kwargs, runtime.config.operator_namespace)
        host_key = resolved.key
        refusal = resolved.refusal
        if refusal is None and not deleting:
            refusal = classes.check(namespace, kwargs["spec"], klass)
        if refusal is not None:
            recorded = bool(old_status.get("vmId") or old_status.get("createdFiles"))
            if deleting and not recorded:
                return StepOutcome(status=old_status, requeue_after=None, events=(), finished=True)
            if deleting and resolved.spec is not None and refusal.reason == "NamespaceNotAdmitted":
                # The host stopped admitting this namespace after provisioning: removing what the
                # operator itself created there is not new access, so deletion cleans up.
                refusal = policy.check_paths(spec_value, resolved.spec)
            if refusal is not None and deleting and not refusal.host_missing:
                # The recorded paths are no longer allowed on this host: send it nothing, leave them.
                kopf.event(body, type="Warning", reason="LeftOnHost",
                           message=f"not cleaned up on the host ({refusal.message}): vmId "
                           f"{old_status.get('vmId')}, files {old_status.get('createdFiles') or []}")
                return StepOutcome(status=old_status, requeue_after=None, events=(), finished=True)
            if refusal is not None:
                refused = settle.refused(old_status, generation, refusal.reason, refusal.message, _now(),
                                         retry=runtime.config.wait_retry_max, key=uid,
                                         floor=runtime.config.wait_retry_min)
                outcome = StepOutcome(refused.status, refused.requeue_after, ())
                _apply_outcome(body, patch, old_status, outcome, vm_spec, host_key, kwargs[_EVENTS_AFTER])
                raise kopf.TemporaryError(refusal.message, delay=refused.requeue_after)
        if resolved.spec is None:  # a refusal covers a missing host; this is unreachable
            raise kopf.TemporaryError(f"host of {namespace}/{name} not resolved", delay=HOST_MISSING_RETRY_SECONDS)
        # --- images: the file the disk chains to: the image's file or its per-share cached copy (images/cache.py)
        if image is not None:
            choice = images.choose_vm_base(namespace, spec_value, old_status, resolved.spec, host_key, kwargs)
            if choice is not None and not deleting:
                images.wait_for_base(patch, old_status, choice, generation, namespace, spec_value, _now())
            if choice is not None and choice.base:
                vm_spec = VirtualMachineSpec.from_dict({**spec_value, "baseVhd": choice.base})
        # --- end images
        host_spec = HyperVHostSpec.from_dict(resolved.spec)
        try:
            client = await runtime.connections.client_for(resolved.secret_namespace, vm_spec.host_name, host_spec)
        except HostConfigError as exc:
            wrong = settle.host_misconfigured(
                old_status, generation, str(exc), _now(), key=uid,
                cap=max(settle.HOST_MISCONFIGURED_RETRY, runtime.config.wait_retry_max),
                floor=runtime.config.wait_retry_min)
            outcome = StepOutcome(wrong.status, wrong.requeue_after, ())
            _apply_outcome(body, patch, old_status, outcome, vm_spec, host_key, kwargs[_EVENTS_AFTER])
            raise kopf.TemporaryError(str(exc), delay=wrong.requeue_after) from exc
        ref = VmRef(namespace=namespace, name=name, uid=uid, generation=generation)
        if not deleting and vm_spec.bootstrap is not None and bootstrap.needs_secret(vm_spec, old_status):
            # Issue 14: the first-boot configuration from the VM's own namespace (only until first boot).
            data = await runtime.connections.secrets.get(namespace, vm_spec.bootstrap.secret_name) \
                if vm_spec.bootstrap.secret_name else None
            vm_spec = replace(vm_spec, bootstrap=bootstrap.with_files(vm_spec.bootstrap, data, name, uid))
        metered = metrics.MeteredClient(client, host_key)
        engine_status = old_status
        if not deleting:
            # A new value of the retry annotation: failure counts reset, a failed copy copies again.
            request = str((meta.get("annotations") or {}).get(retry.RETRY_ANNOTATION) or "")
            copy_phase = next((p.value for p in planner.phases(vm_spec.strategy) if p in COPY_PHASES),
                              Phase.PENDING.value)
            again = retry.requested(old_status, request, copy_phase)
            if again is not None:
                kopf.event(body, type="Normal", reason="RetryRequested",
                           message=f"{retry.RETRY_ANNOTATION}={request}: trying again from {again.get('phase')}")
                engine_status = again
        first = under_way(engine_status, deleting=deleting)
        # The VM's lock is held by step(); as many runs at the host as it has WinRM connections.
        async with runtime.gate.turn(host_key, started=first, limit=host_spec.max_connections):
            if deleting:
                outcome = await engine.finalize(metered, ref, vm_spec, engine_status, host_spec, host_key,
                                                runtime.slots, _now(),
                                                delete_stall_after=runtime.config.delete_stall_after)
            else:
                outcome = await engine.reconcile(metered, ref, vm_spec, engine_status, host_spec, host_key,
                                                 runtime.slots, _now(), bases=runtime.bases)
        if vm_spec.bootstrap is not None and not bootstrap.needs_secret(vm_spec, outcome.status):
            # Issue 14: first boot done: the bootstrap Secret's content need not stay in memory.
            runtime.connections.secrets.forget(namespace, vm_spec.bootstrap.secret_name)
        if deleting and outcome.finished and image is not None and vm_spec.deletion_policy is DeletionPolicy.RETAIN:
            # images: the retained disk may still chain to the image's file; the image must keep it.
            await images.record_retained(namespace, name, kwargs["spec"], old_status)
        _apply_outcome(body, patch, old_status, outcome, vm_spec, host_key, kwargs[_EVENTS_AFTER])
        return outcome

    retry_key = retry.RETRY_ANNOTATION

    def spec_or_retry_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, **_: Any) -> bool:
        # A spec edit, or a new value of the retry annotation (kept in kopf's essence by wakeups.DiffBase).
        def retry_value(essence: Mapping[str, Any] | None) -> Any:
            return (((essence or {}).get("metadata") or {}).get("annotations") or {}).get(retry_key)
        return (old or {}).get("spec") != (new or {}).get("spec") or retry_value(old) != retry_value(new)

    @kopf.on.resume(*vm_resource, id="reconcile", registry=registry)
    @kopf.on.create(*vm_resource, id="reconcile", registry=registry)
    @kopf.on.update(*vm_resource, id="reconcile", when=spec_or_retry_changed, registry=registry)
    async def reconcile_vm(**kwargs: Any) -> None:
        runtime.wakeups.consume(kwargs["body"])
        outcome = await step(kwargs, deleting=False)
        outcome = await _go_on(kwargs, outcome)
        if outcome is not None and outcome.requeue_after is not None:
            raise kopf.TemporaryError(outcome.status.get("message") or "in progress", delay=outcome.requeue_after)

    async def _go_on(kwargs: dict[str, Any], outcome: StepOutcome | None) -> StepOutcome | None:
        """Further steps inside this handler call while the host needs only a short wait (bounded by
        INLINE_BUDGET_SECONDS). Each step has written its status (`_commit`: a crash loses no more than
        with kopf's retries); a VM in line for a copy slot waits, without any API traffic, until the
        host's ledger (this process's release, or the host objects' watch) has a slot for it, and takes
        it at once. A deletion, spec edit or retry request of the VM meanwhile (`VmNews`) ends the call
        at once: kopf sees that event only once this call returns."""
        meta: kopf.Meta = kwargs["meta"]
        uid = str(meta["uid"])
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            runtime.carried.add(uid)
            return await _steps_on(kwargs, outcome, uid, Marks.of(meta), loop, began)
        finally:
            runtime.carried.discard(uid)

    async def _steps_on(kwargs: dict[str, Any], outcome: StepOutcome | None, uid: str, known: Marks,
                        loop: asyncio.AbstractEventLoop, began: float) -> StepOutcome | None:
        patch: kopf.Patch = kwargs["patch"]
        while outcome is not None and outcome.requeue_after is not None and not runtime.shutdown.stopping:
            left = INLINE_BUDGET_SECONDS - (loop.time() - began)
            queued = runtime.slots.waiting(uid)
            if left <= 0 or not (queued or outcome.requeue_after <= min(INLINE_WAIT_SECONDS, left)):
                break
            if patch.get("status"):
                break  # not written (no writer, or it failed): kopf writes it when the call returns, first
            if runtime.news.newer(uid, known):
                return _hand_back(outcome)
            if queued:
                slot = asyncio.ensure_future(runtime.slots.wait_for_slot(uid, left))
                news = asyncio.ensure_future(runtime.news.wait(uid, known, left))
                try:
                    await asyncio.wait((slot, news), return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (slot, news):
                        task.cancel()
                if news.done() and not news.cancelled() and news.result():
                    return _hand_back(outcome)
                if not slot.done() or slot.cancelled() or not slot.result():
                    break
            elif await runtime.news.wait(uid, known, outcome.requeue_after):
                return _hand_back(outcome)
            outcome = await step(kwargs, deleting=False)
        return outcome

    def _hand_back(outcome: StepOutcome) -> StepOutcome:
        """Back to kopf at once: it holds a newer event of this VM (deletion, spec edit, retry request)."""
        return replace(outcome, requeue_after=0.0)

    @kopf.timer(
        *vm_resource,
        id="drift",
        interval=runtime.config.drift_interval,
        initial_delay=runtime.config.drift_interval,
        registry=registry,
    )
    async def check_drift(**kwargs: Any) -> None:
        if not _settled(kwargs) or str(kwargs["meta"]["uid"]) in runtime.carried:
            return  # a change handler carries this VM on (its kopf progress is not written meanwhile)
        stopped: kopf.DaemonStopped | None = kwargs.get("stopped")  # kopf passes it; direct callers may not
        if stopped is None:
            with contextlib.suppress(kopf.TemporaryError):
                await step(kwargs, deleting=False, drift=True)
            return
        check = asyncio.ensure_future(step(kwargs, deleting=False, drift=True))
        deleted = asyncio.ensure_future(_until_deleted(stopped))
        try:
            await asyncio.wait({check, deleted}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            check.cancel()
            raise
        finally:
            deleted.cancel()
        if not check.done():
            # The VM is being deleted: its drift is moot, its deletion waits for its lock, and kopf
            # removes the finalizer only once this timer has exited (else it looks again a minute
            # later: a fleet's deletion took minutes). An operator that stops lets checks finish.
            check.cancel()
        with contextlib.suppress(kopf.TemporaryError, asyncio.CancelledError):
            await check

    async def _until_deleted(stopped: kopf.DaemonStopped) -> None:
        await stopped.wait()
        if not stopped.reason or not stopped.reason & kopf.DaemonStoppingReason.RESOURCE_DELETED:
            await asyncio.Event().wait()  # stopped for another reason: never (cancelled by the caller)

    @kopf.on.delete(*vm_resource, id="finalize", registry=registry)
    async def delete_vm(**kwargs: Any) -> None:
        runtime.wakeups.consume(kwargs["body"])
        meta: kopf.Meta = kwargs["meta"]
        if str((meta.get("annotations") or {}).get(retry.ABANDON_ANNOTATION, "")).lower() == "true":
            await _abandon(kwargs)
            return
        outcome = await step(kwargs, deleting=True)
        if outcome is not None and not outcome.finished:
            delay = outcome.requeue_after if outcome.requeue_after is not None else 2.0
            raise kopf.TemporaryError(outcome.status.get("message") or "deleting", delay=delay)

    async def _abandon(kwargs: Mapping[str, Any]) -> None:
        """The user's explicit opt-in: remove the VirtualMachine without cleaning up on its host (a host
        gone for good). Never silent: a Warning event lists what stays on the host."""
        body: kopf.Body = kwargs["body"]
        meta: kopf.Meta = kwargs["meta"]
        status = dict(kwargs["status"])
        spec = dict(kwargs["spec"])
        left = (f"host {policy.HostRef.from_vm_spec(spec).name}: VM {status.get('vmName') or '-'} "
                f"(Id {status.get('vmId') or 'none recorded'}), files {status.get('createdFiles') or []}")
        kopf.event(body, type="Warning", reason="HostResourcesAbandoned",
                   message=f"removed without cleaning up ({retry.ABANDON_ANNOTATION}=true); left on {left}")
        logger.warning("%s/%s: abandoned on request; left on %s", meta.get("namespace"), meta.get("name"), left)
        resolved = resolve_host(str(meta["namespace"]), spec, kwargs, runtime.config.operator_namespace)
        with contextlib.suppress(Exception):  # its copy slot is not needed any more (best effort)
            await runtime.slots.refresh(resolved.key)
            await runtime.slots.release(resolved.key, str(meta["uid"]))

    def secret_namespace(resource: kopf.Resource, namespace: str | None) -> str:
        """Where a host's Secrets live: its own namespace, or the operator's for a ClusterHyperVHost."""
        return runtime.config.operator_namespace if resource.plural == api.CLUSTER_HOST_PLURAL else str(namespace)

    def host_key(resource: kopf.Resource, namespace: str | None, name: str) -> str:
        return policy.host_key(resource.plural == api.CLUSTER_HOST_PLURAL, namespace, name)

    # Registered before the probe, so a created or edited host re-checks its waiting VMs before it is
    # probed (the host indexes are already current when a handler runs).
    @kopf.on.create(*host_resource, id="wake", registry=registry)
    @kopf.on.update(*host_resource, id="wake", field="spec", registry=registry)
    @kopf.on.create(*cluster_host_resource, id="wake", registry=registry)
    @kopf.on.update(*cluster_host_resource, id="wake", field="spec", registry=registry)
    async def host_changed(resource: kopf.Resource, namespace: str | None, name: str, **kwargs: Any) -> None:
        await wake([host_key(resource, namespace, name)], kwargs["vms_waiting"],
                   f"{resource.kind} {name} created or edited")

    @kopf.on.resume(*host_resource, id="probe", registry=registry)
    @kopf.on.create(*host_resource, id="probe", registry=registry)
    @kopf.on.update(*host_resource, id="probe", field="spec", registry=registry)
    @kopf.on.resume(*cluster_host_resource, id="probe", registry=registry)
    @kopf.on.create(*cluster_host_resource, id="probe", registry=registry)
    @kopf.on.update(*cluster_host_resource, id="probe", field="spec", registry=registry)
    @kopf.timer(*host_resource, id="probe-timer", interval=runtime.config.host_probe_interval,
                initial_delay=runtime.config.host_probe_interval, registry=registry)
    @kopf.timer(*cluster_host_resource, id="probe-timer", interval=runtime.config.host_probe_interval,
                initial_delay=runtime.config.host_probe_interval, registry=registry)
    async def probe_host_handler(
        resource: kopf.Resource, namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status,
        patch: kopf.Patch, meta: kopf.Meta, **kwargs: Any,
    ) -> None:
        # One probe for both kinds; only where the Secrets are read differs.
        was_reachable = cond.is_true(status.get("conditions"), "Reachable")
        async with runtime.drain.working():
            await _probe_host(secret_namespace(resource, namespace), name, spec, status, patch,
                              int(meta.get("generation") or 0))
        if not was_reachable and cond.is_true(patch.status.get("conditions"), "Reachable"):
            # Reachable again (fixed outside the cluster): its VMs on a long transient backoff go now.
            await wake([host_key(resource, namespace, name)], kwargs["vms_waiting"],
                       f"{resource.kind} {name} reachable")

    async def _probe_host(
        namespace: str,
        name: str,
        spec: kopf.Spec,
        status: kopf.Status,
        patch: kopf.Patch,
        generation: int,
    ) -> None:
        host_spec = HyperVHostSpec.from_dict(spec)
        now = _now()
        conditions = list(status.get("conditions") or [])
        try:
            client = await runtime.connections.client_for(namespace, name, host_spec)
            # Reachable only after a round trip: a client without its own probe runs the same
            # read-only batch through `run`.
            facts = await probe_client(client, host_spec.address)
        except ClientClosedError:
            return  # replaced or shutting down: says nothing about the host; the next probe tells
        except (HostError, HostConfigError) as exc:
            metrics.HOST_REACHABLE.labels(namespace=namespace, host=name).set(0)
            reason = "HostMisconfigured" if isinstance(exc, HostConfigError) else "Unreachable"
            patch.status["conditions"] = set_condition(
                conditions, "Reachable", "False", reason, str(exc), generation, now
            )
        else:
            metrics.HOST_REACHABLE.labels(namespace=namespace, host=name).set(1)
            missing = tuple(getattr(facts, "missing_commands", ()) or ())
            if missing:  # WinRM answers but the host cannot run Hyper-V cmdlets: say so, not "Unreachable"
                patch.status["conditions"] = set_condition(
                    conditions, "Reachable", "False", "HyperVModuleMissing",
                    f"WinRM reachable at {host_spec.address}, but these commands are missing: {', '.join(missing)} "
                    "(install the Hyper-V PowerShell module, or allow them in the JEA endpoint)", generation, now)
            else:
                patch.status["conditions"] = set_condition(
                    conditions, "Reachable", "True", "Probed", f"WinRM reachable at {host_spec.address}", generation,
                    now)
            for source, target in (
                ("host_name", "hostName"),
                ("hyperv_version", "hyperVVersion"),
                ("free_bytes", "freeBytes"),
            ):
                value = getattr(facts, source, None)
                if value is not None:
                    patch.status[target] = value
        patch.status["lastProbeTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        patch.status["observedGeneration"] = generation
        # copiesInFlight is written with the copy ledger (status.copySlots), never from one process's view.

    @kopf.on.event("v1", "secrets", id="secrets", registry=registry)
    async def secret_changed(
        type: str | None, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any
    ) -> None:
        # Keeps the Secret cache current: an edited credentials or CA Secret changes the host's
        # fingerprint, so its next use builds a new client (the old one's calls become retries).
        data = None if type == "DELETED" else dict(body.get("data") or {})
        if runtime.connections.secrets.observe(str(namespace), name, data):
            logger.info("Secret %s/%s changed: its hosts reconnect on their next call", namespace, name)
        if type is not None:  # not the initial listing: created, edited or deleted now
            await wake(hosts_using_secret(str(namespace), name, kwargs), kwargs["vms_waiting"],
                       f"Secret {namespace}/{name} changed")

    seen = wakeups.Seen()
    kopf_objects = logging.getLogger("kopf.objects")
    if not any(isinstance(f, QuietWakeHandlers) for f in kopf_objects.filters):
        kopf_objects.addFilter(QuietWakeHandlers())

    @kopf.on.event(api.GROUP, api.VERSION, images.IMAGE_PLURAL, id="image-wake", registry=registry)
    @kopf.on.event(api.GROUP, api.VERSION, images.CLUSTER_IMAGE_PLURAL, id="image-wake", registry=registry)
    async def image_changed(
        type: str | None, resource: kopf.Resource, namespace: str | None, name: str, body: kopf.Body, **kwargs: Any
    ) -> None:
        # Created, Ready, stalled, its spec edited or its deletion started: the VMs waiting for it
        # (ImageNotFound, ImageNotReady, ...) re-check now. Status writes that change none of these
        # (progress, timestamps) wake nobody.
        kind = CLUSTER_IMAGE_KIND if resource.plural == images.CLUSTER_IMAGE_PLURAL else IMAGE_KIND
        key = wakeups.image_key(kind, str(namespace or "") if kind == IMAGE_KIND else "", name)
        changed = seen.changed(key, None if type == "DELETED" else wakeups.image_signature(body))
        if type is not None and type != "DELETED" and changed:  # not the initial listing
            await wake([key], kwargs["vms_waiting"], f"{kind} {name} changed")

    @kopf.on.event("v1", "namespaces", id="namespace-wake", registry=registry)
    async def namespace_changed(type: str | None, name: str, labels: kopf.Labels, **kwargs: Any) -> None:
        # A namespace labelled (or unlabelled) now: its VMs refused for its labels re-check now.
        key = wakeups.namespace_key(name)
        changed = seen.changed(key, None if type == "DELETED" else tuple(sorted(dict(labels).items())))
        if type is not None and type != "DELETED" and changed:
            await wake([key], kwargs["vms_waiting"], f"Namespace {name} labels changed")

    @kopf.on.delete(*host_resource, id="forget", optional=True, registry=registry)
    @kopf.on.delete(*cluster_host_resource, id="forget", optional=True, registry=registry)
    async def host_deleted(resource: kopf.Resource, namespace: str | None, name: str, **_: Any) -> None:
        runtime.slots.forget_host(host_key(resource, namespace, name))
        await runtime.connections.forget(secret_namespace(resource, namespace), name)

    @kopf.on.event(*host_resource, id="copy-ledger", registry=registry)
    @kopf.on.event(*cluster_host_resource, id="copy-ledger", registry=registry)
    def host_ledger_seen(resource: kopf.Resource, namespace: str | None, name: str, status: kopf.Status,
                         meta: kopf.Meta, **_: Any) -> None:
        # The copy ledger as the watch delivers it: VMs in line on this host wake when another
        # process (a replica, or this one's predecessor's leftovers pruned) frees a slot.
        runtime.slots.observe(host_key(resource, namespace, name), status, str(meta.get("resourceVersion") or ""))

    images.register(registry, runtime)
    return registry
