"""kopf glue for VirtualMachineImage / ClusterVirtualMachineImage (decisions in `images.model`).

Registered from `handlers.build_registry` with one call (`register`). Besides the image handlers this
module keeps three kopf indices: the images by key (the VM handlers read an image from there, as they
read hosts), and the dependents (which VM chains to which image file, computed from every VM's status).

The image's facts are read through the host named by `spec.hostRef` (a HyperVHost in the image's
namespace; a ClusterHyperVHost for a ClusterVirtualMachineImage), with the commands the engine already
uses (Get-VHD, Get-Item, Remove-Item); the source must be inside that host's storage.baseRoots, so an
image cannot make the operator read (or, with retention Delete, remove) a file outside them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import kopf

from hyperv_operator import api, metrics
from hyperv_operator import conditions as cond
from hyperv_operator.api import HyperVHostSpec
from hyperv_operator.hosts import HostConfigError
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.errors import HostError, is_not_found
from hyperv_operator.images import model
from hyperv_operator.images.model import CLUSTER_IMAGE_KIND, IMAGE_KIND, Dependent, FileFacts, Identity
from hyperv_operator.tenancy import policy
from hyperv_operator.tenancy.paths import PathRefused, inside_any, parse

if TYPE_CHECKING:
    from hyperv_operator.handlers import Runtime

logger = logging.getLogger("hyperv_operator.images")

IMAGE_PLURAL = "virtualmachineimages"
CLUSTER_IMAGE_PLURAL = "clustervirtualmachineimages"
IN_USE_RETRY_SECONDS = 3.0
"""How often a deleted image held by dependents re-checks them."""


def _now() -> datetime:
    return datetime.now(UTC)


def _first(index: kopf.Index[Any, Any] | None, key: Any) -> Any:
    if index is None:
        return None
    store = index.get(key)
    return next(iter(store), None) if store else None


def find_image(kind: str, namespace: str, name: str, indices: Mapping[str, Any]) -> dict[str, Any] | None:
    """The image object (metadata, spec, status) from the indices; None if it does not exist."""
    if kind == CLUSTER_IMAGE_KIND:
        return _first(indices.get("cluster_images_by_key"), name)  # type: ignore[no-any-return]
    return _first(indices.get("images_by_key"), (namespace, name))  # type: ignore[no-any-return]


def dependents_of(key: tuple[str, str, str], indices: Mapping[str, Any]) -> list[Dependent]:
    index = indices.get("image_dependents")
    store = index.get(key) if index is not None else None
    return list(store or [])


def resolve_vm_image(
    namespace: str, vm_spec: Mapping[str, Any], vm_status: Mapping[str, Any], indices: Mapping[str, Any]
) -> model.Resolution | None:
    """None for a VM with a raw baseVhd; else what its image gives it (see `model.resolve_for_vm`)."""
    ref = model.ImageRef.from_vm_spec(vm_spec)
    if ref is None:
        return None
    image = find_image(ref.kind, namespace, ref.name, indices)
    labels = _first(indices.get("namespace_labels"), namespace)
    return model.resolve_for_vm(namespace, vm_spec, vm_status, image, labels,
                                selector_matches=policy.selector_matches)


def _patch_image_status(kind: str, namespace: str, name: str, status: dict[str, Any]) -> None:
    """Merge-patch another object's status (blocking kubernetes client, like the webhook's CA bundle)."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    objects = kubernetes.client.CustomObjectsApi()
    if kind == CLUSTER_IMAGE_KIND:
        objects.patch_cluster_custom_object_status(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, name,
                                                   {"status": status})
    else:
        objects.patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, IMAGE_PLURAL, name,
                                                      {"status": status})


async def record_retained(namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]) -> None:
    """A VM deleted with deletionPolicy Retain leaves its disk on the host: if that disk still chains to an
    image file, the image keeps the file (status.retained) after the VM object is gone."""
    found = model.vm_dependency(namespace, name, spec, status)
    if found is None:
        return
    (kind, image_namespace, image_name), dependent = found
    entry = model.retained_entry(dependent, cond.timestamp(_now()))
    import kubernetes

    try:
        await asyncio.to_thread(_patch_image_status, kind, image_namespace, image_name, {"retained": entry})
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return  # no image any more: nothing that could remove the file
        # Raised: kopf retries the VM's deletion handler (the engine's finalize is idempotent), so the VM
        # object and its finalizer stay until the image has recorded the retained disk.
        logger.error("cannot record retained dependent %s/%s on %s %s: %s", namespace, name, kind, image_name, exc)
        raise


def _object(body: Mapping[str, Any]) -> dict[str, Any]:
    meta = body.get("metadata") or {}
    return {"metadata": {"name": meta.get("name"), "namespace": meta.get("namespace"),
                         "deletionTimestamp": meta.get("deletionTimestamp")},
            "spec": dict(body.get("spec") or {}), "status": dict(body.get("status") or {})}


async def _read_facts(client: Any, path: str) -> FileFacts:
    try:
        objects = await client.run([cmdlets.get_vhd(path), cmdlets.get_item(path)])
    except HostError as exc:
        if is_not_found(exc):
            return FileFacts(path, exists=False)
        raise
    vhd = next((o for o in objects if o.get("DiskIdentifier") is not None or o.get("VhdType") is not None), None)
    item = next((o for o in objects if o.get("LastWriteTimeUtc") is not None), None)
    if vhd is None or item is None:
        return FileFacts(path, exists=False)
    written = item.get("LastWriteTimeUtc")
    written_text = written.astimezone(UTC).isoformat() if isinstance(written, datetime) else str(written)
    identity = Identity(str(vhd.get("DiskIdentifier") or ""), int(item.get("Length") or vhd.get("FileSize") or 0),
                        written_text)
    return FileFacts(path, True, identity, int(vhd.get("Size") or 0), str(vhd.get("VhdFormat") or ""),
                     str(vhd.get("VhdType") or ""), vhd.get("ParentPath") or None)


def _host_for(
    kind: str, namespace: str, spec: Mapping[str, Any], indices: Mapping[str, Any], operator_namespace: str
) -> tuple[dict[str, Any] | None, str, str, str]:
    """(host spec, secret namespace, host name, host key) of the host the image is read through."""
    name = str((spec.get("hostRef") or {}).get("name") or "")
    if kind == CLUSTER_IMAGE_KIND:
        return (_first(indices.get("cluster_hosts_by_name"), name), operator_namespace, name,
                f"{policy.CLUSTER_HOST_KIND}/{name}")
    return _first(indices.get("hosts_by_name"), (namespace, name)), namespace, name, f"{namespace}/{name}"


def _outside_roots(path: str, host_spec: Mapping[str, Any]) -> str | None:
    try:
        roots = policy.storage_roots(host_spec)
        parsed = parse(path)
    except PathRefused as exc:
        return str(exc)
    if not inside_any(parsed, roots.bases):
        return (f"the source {path!r} is not inside any of the host's storage.baseRoots "
                f"({', '.join(str(r) for r in roots.bases)})")
    return None


def _conditions(
    status: Mapping[str, Any], generation: int, now: datetime, *, ready: tuple[bool, str, str],
    stalled: tuple[str, str] | None, reconciling: tuple[str, str] | None,
) -> list[dict[str, Any]]:
    previous = list(status.get("conditions") or [])
    made = [
        cond.make(previous, "Ready", ready[0], ready[1], ready[2], generation, now),
        cond.make(previous, "Stalled", stalled is not None, stalled[0] if stalled else "Healthy",
                  stalled[1] if stalled else "no problem", generation, now),
        cond.make(previous, "Reconciling", reconciling is not None, reconciling[0] if reconciling else "Observed",
                  reconciling[1] if reconciling else "up to date", generation, now),
    ]
    return cond.merge(previous, made)


def register(registry: kopf.OperatorRegistry, runtime: Runtime) -> None:
    """Register the image indices and handlers (called once from handlers.build_registry)."""
    image_resource = (api.GROUP, api.VERSION, IMAGE_PLURAL)
    cluster_image_resource = (api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL)

    @kopf.index(*image_resource, id="images_by_key", registry=registry)
    def images_by_key(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {(str(namespace), name): _object(body)}

    @kopf.index(*cluster_image_resource, id="cluster_images_by_key", registry=registry)
    def cluster_images_by_key(name: str, body: kopf.Body, **_: Any) -> dict[Any, Any]:
        return {name: _object(body)}

    @kopf.index(api.GROUP, api.VERSION, api.VM_PLURAL, id="image_dependents", registry=registry)
    def image_dependents(
        namespace: str | None, name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
    ) -> dict[Any, Any]:
        found = model.vm_dependency(str(namespace), name, spec, status)
        # {} (not None): kopf keeps an object's previous entries when an index function returns None,
        # and a VM that became independent must leave the index.
        return {} if found is None else {found[0]: found[1]}

    async def reconcile(kind: str, kwargs: Mapping[str, Any]) -> None:
        name, patch = str(kwargs["name"]), kwargs["patch"]
        namespace = str(kwargs.get("namespace") or "") if kind == IMAGE_KIND else ""
        spec, status = dict(kwargs["spec"]), dict(kwargs["status"])
        generation = int((kwargs["meta"] or {}).get("generation") or 0)
        key = (kind, namespace, name)
        now = _now()
        deps = dependents_of(key, kwargs)
        host_spec, secret_namespace, host_name, host_key = _host_for(
            kind, namespace, spec, kwargs, runtime.config.operator_namespace)
        source = str((spec.get("source") or {}).get("path") or "")

        def wait(reason: str, message: str, *, stalled: bool) -> None:
            patch.status["conditions"] = _conditions(
                status, generation, now, ready=(False, reason, message),
                stalled=(reason, message) if stalled else None, reconciling=None if stalled else (reason, message))
            patch.status["message"] = message
            patch.status["observedGeneration"] = generation

        if host_spec is None:
            wait("HostNotFound", f"waiting for host {host_key} to read {source}", stalled=False)
            return
        refusal = _outside_roots(source, host_spec)
        if refusal is not None:
            wait("SourceOutsideAllowedRoots", refusal, stalled=True)
            return
        try:
            client = await runtime.connections.client_for(secret_namespace, host_name,
                                                          HyperVHostSpec.from_dict(host_spec))
            metered = metrics.MeteredClient(client, host_key)
            facts: dict[str, FileFacts] = {}
            for path in model.paths_to_read(spec, status):
                facts[path.lower()] = await _read_facts(metered, path)
        except (HostError, HostConfigError) as exc:
            wait("HostUnreachable", f"cannot read {source} on {host_key}: {exc}", stalled=False)
            return
        plan = model.plan_image(spec, status, facts, deps, now, host_key=host_key,
                                may_delete=kind == CLUSTER_IMAGE_KIND)
        new_status = plan.status
        for path in plan.remove:
            try:
                await metered.run([cmdlets.remove_file(path)])
            except HostError as exc:
                if not is_not_found(exc):
                    kopf.event(kwargs["body"], type="Warning", reason="CollectFailed",
                               message=f"cannot remove superseded generation file {path}: {exc}")
                    continue
            model.mark_collected(new_status, path, cond.timestamp(now))
            metrics.IMAGE_FILES_COLLECTED_TOTAL.labels(kind=kind).inc()
            kopf.event(kwargs["body"], type="Normal", reason="GenerationCollected",
                       message=f"removed {path}: superseded and no VM chains to it (retention Delete)")
        for type_, reason, message in plan.events:
            kopf.event(kwargs["body"], type=type_, reason=reason, message=message)
        ready = (True, "Ready", str(new_status["message"])) if plan.ready else (
            False, (plan.stalled or plan.not_ready or ("NotReady", ""))[0], str(new_status["message"]))
        reconciling = None if plan.ready or plan.stalled else (ready[1], ready[2])
        for field_name, value in new_status.items():
            patch.status[field_name] = value
        patch.status["conditions"] = _conditions(status, generation, now, ready=ready, stalled=plan.stalled,
                                                 reconciling=reconciling)
        patch.status["observedGeneration"] = generation
        metrics.observe_image(kind, namespace, name, new_status, ready=plan.ready)

    for kind, resource in ((IMAGE_KIND, image_resource), (CLUSTER_IMAGE_KIND, cluster_image_resource)):
        _register_kind(registry, runtime, kind, resource, reconcile)


def _register_kind(
    registry: kopf.OperatorRegistry, runtime: Runtime, kind: str, resource: tuple[str, str, str], reconcile: Any
) -> None:
    # One timer only (first run at once): kopf runs an object's timer serially, so two rounds never
    # work from the same stale status (a change handler beside it could undo a collection mark).
    @kopf.timer(*resource, id="image", interval=runtime.config.drift_interval, initial_delay=0.0,
                registry=registry)
    async def image_handler(**kwargs: Any) -> None:
        if (kwargs["meta"] or {}).get("deletionTimestamp"):
            return
        await reconcile(kind, kwargs)

    @kopf.on.delete(*resource, id="release", registry=registry)
    async def release(**kwargs: Any) -> None:
        # The finalizer holds the image while any VM's disk still chains to one of its files.
        name = str(kwargs["name"])
        namespace = str(kwargs.get("namespace") or "") if kind == IMAGE_KIND else ""
        deps: Sequence[Dependent] = [*dependents_of((kind, namespace, name), kwargs),
                                     *model.retained_dependents(kwargs["status"])]
        if deps:
            message = model.holders_message(deps)
            kopf.event(kwargs["body"], type="Warning", reason="InUse", message=f"deletion held: {message}")
            now = _now()
            status = dict(kwargs["status"])
            kwargs["patch"].status["conditions"] = _conditions(
                status, int((kwargs["meta"] or {}).get("generation") or 0), now,
                ready=(False, "InUse", message), stalled=None, reconciling=("InUse", f"deletion held: {message}"))
            kwargs["patch"].status["message"] = f"deletion held: {message}"
            raise kopf.TemporaryError(message, delay=IN_USE_RETRY_SECONDS)
        metrics.forget_image(kind, namespace, name)
