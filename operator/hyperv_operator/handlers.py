"""kopf registration: thin glue between Kubernetes events and the provisioning engine.

No decisions here. Each VirtualMachine handler call runs one engine step under a per-object lock,
writes the complete status the engine returns, posts its events, and asks kopf to call again after
the engine's delay (`kopf.TemporaryError(delay=...)`) until the engine says it has converged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import kopf

from hyperv_operator import api, metrics
from hyperv_operator import conditions as cond
from hyperv_operator.api import HyperVHostSpec, VirtualMachineSpec
from hyperv_operator.hosts import ClientFactory, HostConfigError, HostConnections, SecretReader
from hyperv_operator.hyperv.errors import HostError
from hyperv_operator.provisioning import engine, settle
from hyperv_operator.provisioning.engine import CopySlots, StepOutcome, VmRef
from hyperv_operator.provisioning.gate import HostGate, under_way
from hyperv_operator.provisioning.phases import Phase

logger = logging.getLogger("hyperv_operator.handlers")

HOST_MISSING_RETRY_SECONDS = 10.0


@dataclass
class OperatorConfig:
    drift_interval: float = 30.0
    host_probe_interval: float = 60.0
    client_factory: ClientFactory | None = None
    secret_reader: SecretReader | None = None


@dataclass
class Runtime:
    config: OperatorConfig
    connections: HostConnections
    slots: CopySlots = field(default_factory=CopySlots)
    gate: HostGate = field(default_factory=HostGate)
    _locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def lock(self, uid: str) -> asyncio.Lock:
        return self._locks.setdefault(uid, asyncio.Lock())


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


def _host_of(
    hosts_by_name: kopf.Index[tuple[str, str], dict[str, Any]], namespace: str, name: str
) -> dict[str, Any] | None:
    store = hosts_by_name.get((namespace, name))
    if not store:
        return None
    return next(iter(store), None)


def _apply_outcome(
    body: kopf.Body, patch: kopf.Patch, old_status: Mapping[str, Any], outcome: StepOutcome, spec: VirtualMachineSpec
) -> None:
    namespace = str(body.get("metadata", {}).get("namespace"))
    uid = str(body.get("metadata", {}).get("uid"))
    new_status = {k: v for k, v in outcome.status.items() if v is not None}
    for key, value in merge_patch(old_status, new_status).items():
        patch.status[key] = value
    for event in outcome.events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)
    metrics.observe_status_change(
        spec.strategy.value, f"{namespace}/{spec.host_name}", old_status, new_status, _now(), uid=uid
    )
    if outcome.finished:
        metrics.forget(uid)


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    vm_resource = (api.GROUP, api.VERSION, api.VM_PLURAL)
    host_resource = (api.GROUP, api.VERSION, api.HOST_PLURAL)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = api.FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.ANNOTATION_PREFIX)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=api.ANNOTATION_PREFIX, key="last-handled-configuration"
        )
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 60

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.cleanup(registry=registry)
    async def close_connections(**_: Any) -> None:
        await runtime.connections.close()

    @kopf.index(*host_resource, id="hosts_by_name", registry=registry)
    def hosts_by_name(
        namespace: str | None, name: str, spec: kopf.Spec, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        return {(str(namespace), name): dict(spec)}

    async def step(kwargs: Mapping[str, Any], *, deleting: bool) -> StepOutcome:
        """One engine step for the VM in kopf's handler kwargs; writes its outcome into `patch`."""
        body: kopf.Body = kwargs["body"]
        meta: kopf.Meta = kwargs["meta"]
        patch: kopf.Patch = kwargs["patch"]
        hosts_by_name: kopf.Index[tuple[str, str], dict[str, Any]] = kwargs["hosts_by_name"]
        namespace, name, uid = str(meta["namespace"]), str(meta["name"]), str(meta["uid"])
        generation = int(meta.get("generation") or 0)
        vm_spec = VirtualMachineSpec.from_dict(kwargs["spec"])
        old_status = dict(kwargs["status"])
        host_body = _host_of(hosts_by_name, namespace, vm_spec.host_name)
        if host_body is None:
            missing = settle.host_missing(old_status, generation, f"{namespace}/{vm_spec.host_name}", _now(),
                                          deleting=deleting, retry=HOST_MISSING_RETRY_SECONDS)
            if missing.finished:
                return StepOutcome(status=old_status, requeue_after=None, events=(), finished=True)
            _apply_outcome(body, patch, old_status, StepOutcome(missing.status, missing.requeue_after, ()), vm_spec)
            raise kopf.TemporaryError(missing.status["message"], delay=missing.requeue_after)
        host_spec = HyperVHostSpec.from_dict(host_body)
        try:
            client = await runtime.connections.client_for(namespace, vm_spec.host_name, host_spec)
        except HostConfigError as exc:
            wrong = settle.host_misconfigured(old_status, generation, str(exc), _now())
            _apply_outcome(body, patch, old_status, StepOutcome(wrong.status, wrong.requeue_after, ()), vm_spec)
            raise kopf.TemporaryError(str(exc), delay=wrong.requeue_after) from exc
        ref = VmRef(namespace=namespace, name=name, uid=uid, generation=generation)
        host_key = f"{namespace}/{vm_spec.host_name}"
        metered = metrics.MeteredClient(client, host_key)
        first = under_way(old_status, deleting=deleting)
        async with runtime.gate.turn(host_key, started=first), runtime.lock(uid):
            run = engine.finalize if deleting else engine.reconcile
            outcome = await run(metered, ref, vm_spec, old_status, host_spec, host_key, runtime.slots, _now())
        _apply_outcome(body, patch, old_status, outcome, vm_spec)
        return outcome

    @kopf.on.resume(*vm_resource, id="reconcile", registry=registry)
    @kopf.on.create(*vm_resource, id="reconcile", registry=registry)
    @kopf.on.update(*vm_resource, id="reconcile", field="spec", registry=registry)
    async def reconcile_vm(**kwargs: Any) -> None:
        outcome = await step(kwargs, deleting=False)
        if outcome.requeue_after is not None:
            raise kopf.TemporaryError(outcome.status.get("message") or "in progress", delay=outcome.requeue_after)

    @kopf.timer(
        *vm_resource,
        id="drift",
        interval=runtime.config.drift_interval,
        initial_delay=runtime.config.drift_interval,
        registry=registry,
    )
    async def check_drift(**kwargs: Any) -> None:
        # Only settled VMs: the change handlers own everything in flight. Failed is re-checked
        # too, so a VM waiting for a missing base disk starts once the base appears.
        settled = (Phase.PROVISIONED.value, Phase.FAILED.value)
        if kwargs["status"].get("phase") not in settled or kwargs["meta"].get("deletionTimestamp"):
            return
        with contextlib.suppress(kopf.TemporaryError):
            await step(kwargs, deleting=False)

    @kopf.on.delete(*vm_resource, id="finalize", registry=registry)
    async def delete_vm(**kwargs: Any) -> None:
        outcome = await step(kwargs, deleting=True)
        if not outcome.finished:
            delay = outcome.requeue_after if outcome.requeue_after is not None else 2.0
            raise kopf.TemporaryError(outcome.status.get("message") or "deleting", delay=delay)

    async def probe_host(
        namespace: str, name: str, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, generation: int
    ) -> None:
        host_spec = HyperVHostSpec.from_dict(spec)
        now = _now()
        conditions = list(status.get("conditions") or [])
        try:
            client = await runtime.connections.client_for(namespace, name, host_spec)
            probe = getattr(client, "probe", None)
            facts: Mapping[str, Any] = await probe() if probe is not None else {}
        except (HostError, HostConfigError) as exc:
            metrics.HOST_REACHABLE.labels(namespace=namespace, host=name).set(0)
            reason = "HostMisconfigured" if isinstance(exc, HostConfigError) else "Unreachable"
            patch.status["conditions"] = set_condition(
                conditions, "Reachable", "False", reason, str(exc), generation, now
            )
        else:
            metrics.HOST_REACHABLE.labels(namespace=namespace, host=name).set(1)
            patch.status["conditions"] = set_condition(
                conditions, "Reachable", "True", "Probed", f"WinRM reachable at {host_spec.address}", generation, now
            )
            for source, target in (
                ("host_name", "hostName"),
                ("hyperv_version", "hyperVVersion"),
                ("free_bytes", "freeBytes"),
            ):
                value = facts.get(source) if isinstance(facts, Mapping) else getattr(facts, source, None)
                if value is not None:
                    patch.status[target] = value
        patch.status["lastProbeTime"] = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        patch.status["observedGeneration"] = generation
        patch.status["copiesInFlight"] = len(runtime.slots.holders(f"{namespace}/{name}"))

    @kopf.on.resume(*host_resource, id="probe", registry=registry)
    @kopf.on.create(*host_resource, id="probe", registry=registry)
    @kopf.on.update(*host_resource, id="probe", field="spec", registry=registry)
    @kopf.timer(
        *host_resource,
        id="probe-timer",
        interval=runtime.config.host_probe_interval,
        initial_delay=runtime.config.host_probe_interval,
        registry=registry,
    )
    async def probe_host_handler(**kwargs: Any) -> None:
        meta: kopf.Meta = kwargs["meta"]
        await probe_host(
            str(kwargs["namespace"]),
            kwargs["name"],
            kwargs["spec"],
            kwargs["status"],
            kwargs["patch"],
            int(meta.get("generation") or 0),
        )

    @kopf.on.delete(*host_resource, id="forget", optional=True, registry=registry)
    async def host_deleted(namespace: str | None, name: str, **_: Any) -> None:
        await runtime.connections.forget(str(namespace), name)

    return registry
