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
import contextlib
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
from hyperv_operator.images import cache, model
from hyperv_operator.images.model import CLUSTER_IMAGE_KIND, IMAGE_KIND, Dependent, FileFacts, Identity
from hyperv_operator.provisioning import settle
from hyperv_operator.provisioning.ledger import LedgerError
from hyperv_operator.provisioning.observation import CopyJob, is_copy_worker, kind_of, parse_process
from hyperv_operator.tenancy import policy
from hyperv_operator.tenancy.paths import PathRefused, inside_any, parse

if TYPE_CHECKING:
    from hyperv_operator.handlers import Runtime

logger = logging.getLogger("hyperv_operator.images")

IMAGE_PLURAL = "virtualmachineimages"
CLUSTER_IMAGE_PLURAL = "clustervirtualmachineimages"
IN_USE_RETRY_SECONDS = 3.0
"""How often a deleted image held by dependents re-checks them."""
IMAGE_TICK = 1.0
"""The image timer's tick: a tick that has nothing to do costs no I/O (see `_Due`); a VM starting or
stopping to depend on the image is seen within a tick."""
CACHE_POLL = 2.0
"""How often a running cache copy (or a cache waiting to be collected) is looked at."""
CACHE_STALL_RETRY_SECONDS = 10.0
"""How often a VM stalled on its cached copy (failed, or changed out of band) looks again."""
CACHE_WAIT_SECONDS = 2.0
"""How often a VM waiting for its share's cached copy looks at the image's status again (no host I/O)."""


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


def choose_vm_base(
    namespace: str, vm_spec: Mapping[str, Any], vm_status: Mapping[str, Any], host_spec: Mapping[str, Any],
    host_key: str, indices: Mapping[str, Any],
) -> cache.BaseChoice | None:
    """None for a VM without a pinned image; else the file its disk chains to (images/cache.py)."""
    ref = model.ImageRef.from_vm_spec(vm_spec)
    pinned = vm_status.get("image") or {}
    if ref is None or not pinned.get("path"):
        return None
    image = find_image(ref.kind, namespace, ref.name, indices)
    vm_path = str(vm_spec.get("vmPath") or host_spec.get("defaultVmPath") or "")
    roots = [str(r) for r in (host_spec.get("storage") or {}).get("vmRoots") or []]
    image_status = (image or {}).get("status") if image is not None else None
    generation = int(pinned.get("generation") or 0)
    target = cache.cache_target(ref.key(namespace), generation, str(pinned["path"]), vm_path, roots, host_key,
                                cache.known_paths(pinned, image_status, generation))
    started = bool(vm_status.get("vmId") or vm_status.get("createdFiles"))
    strategy = str(vm_spec.get("strategy") or "")
    choice = cache.choose_base(pinned, strategy, started, target, image_status)
    if strategy == "Quick" and choice.base and choice.stalled is None:
        # Quick's checkpoint lands beside the base it runs on: that base (the image's file, or the cached
        # copy) must be in a writable root. The tenancy check left this to here for a VM on another share
        # (policy.check_paths); nothing is recorded, so a cached copy that becomes Ready is still taken.
        refusal = policy.quick_checkpoint_on_host(choice.base, host_spec)
        if refusal is not None:
            message = refusal.message
            if target is not None and not cache.same_share(choice.base, target.path):
                message += (f"; it runs on its share's cached copy {target.path} once that is Ready (a "
                            "Differencing VM on this share has it made)")
            return cache.BaseChoice(choice.base, stalled=(refusal.reason, message))
    return choice


def count_cache_use(namespace: str, vm_spec: Mapping[str, Any], choice: cache.BaseChoice) -> None:
    """Metrics, once per VM (when its choice is recorded): a hit used a Ready cached copy, a miss found
    none on its share."""
    ref = model.ImageRef.from_vm_spec(vm_spec)
    if ref is None or choice.hit is None:
        return
    counter = metrics.IMAGE_CACHE_HITS if choice.hit else metrics.IMAGE_CACHE_MISSES
    counter.labels(kind=ref.kind, namespace=namespace if ref.kind == IMAGE_KIND else "", image=ref.name).inc()


def wait_for_base(
    patch: Any, old_status: Mapping[str, Any], choice: cache.BaseChoice, generation: int, namespace: str,
    spec: Mapping[str, Any], now: datetime,
) -> None:
    """VM glue: record the VM's choice of base in status.image before any host command (raising to come
    back at once), or wait for its share's cached copy (Reconciling, not a failure), or stall; returns
    only when the engine may run."""
    if choice.stalled is not None:
        reason, message = choice.stalled
        new = settle.refused(old_status, generation, reason, message, now, retry=CACHE_STALL_RETRY_SECONDS).status
        previous = new["conditions"]
        patch.status["conditions"] = cond.merge(previous, [cond.make(previous, "Ready", False, reason, message,
                                                                     generation, now)])
        patch.status["message"] = new["message"]
        raise kopf.TemporaryError(message, delay=CACHE_STALL_RETRY_SECONDS)
    if choice.record:
        patch.status["image"] = {**dict(old_status.get("image") or {}), **choice.record}
        count_cache_use(namespace, spec, choice)
    if choice.waiting:
        patch.status["conditions"] = cache.waiting_conditions(old_status.get("conditions"), choice.waiting,
                                                              generation, now)
        patch.status["message"] = choice.waiting
        patch.status["phase"] = old_status.get("phase") or "Pending"
        raise kopf.TemporaryError(choice.waiting, delay=CACHE_WAIT_SECONDS)
    if choice.record:
        # Pin first, act later (as for the generation): the image's dependents never miss a chained disk.
        raise kopf.TemporaryError("recorded the file this VM's disk chains to", delay=0.2)


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
                policy.host_key(True, None, name))
    return (_first(indices.get("hosts_by_name"), (namespace, name)), namespace, name,
            policy.host_key(False, namespace, name))


def _host_by_key(
    key: str, indices: Mapping[str, Any], operator_namespace: str
) -> tuple[dict[str, Any] | None, str, str]:
    """(host spec, secret namespace, name) of a host key ("namespace/name" or "ClusterHyperVHost/name")."""
    first, _, name = key.partition("/")
    if first == policy.CLUSTER_HOST_KIND:
        return _first(indices.get("cluster_hosts_by_name"), name), operator_namespace, name
    return _first(indices.get("hosts_by_name"), (first, name)), first, name


async def _read_cache_facts(client: Any, entry: Mapping[str, Any]) -> cache.CacheFacts:
    """What the host shows of one cache: the file, its partial and its copy status; the worker's
    liveness while the status says Running; Get-VHD/Get-Item of the whole file."""
    path = str(entry["path"])
    paths = [path, cache.partial_of(path), cache.status_of(path)]
    flags = [bool(o.value) for o in await client.run([cmdlets.test_paths(paths)])
             if kind_of(o) == "bool"]
    if len(flags) != len(paths):
        raise HostError(f"Test-Path returned {len(flags)} results for {len(paths)} paths")
    exists, partial, status_file = flags
    job: CopyJob | None = None
    alive: bool | None = None
    if status_file:
        try:
            texts = [o for o in await client.run([cmdlets.read_text_file(cache.status_of(path))])
                     if kind_of(o) == "string"]
        except HostError as exc:
            if not is_not_found(exc):
                raise
            texts = []  # removed between the two reads (the worker's replace, or a completed copy)
        job = CopyJob.parse(str(texts[0].value)) if texts else None
        if job is not None and job.state == "Running" and job.process_id and not exists:
            processes = [parse_process(o) for o in await client.run([cmdlets.get_process(job.process_id)])
                         if kind_of(o) == "process"]
            created = job.process_created_at or entry.get("processCreatedAt")
            alive = is_copy_worker(next(iter(processes), None), str(created) if created else None)
    whole = exists and (not status_file or (job is not None and job.state == "Completed"))
    file = await _read_facts(client, path) if whole else None
    return cache.CacheFacts(exists, partial, status_file, job, alive, file)


async def _caches(
    runtime: Runtime, kind: str, namespace: str, name: str, status: Mapping[str, Any], new_status: Mapping[str, Any],
    deps: Sequence[Dependent], indices: Mapping[str, Any], body: Any, now: datetime,
) -> list[dict[str, Any]]:
    """One round over the image's per-share caches (decisions in images/cache.py; I/O here)."""
    entries: dict[str, dict[str, Any]] = {str(e.get("path") or "").lower(): dict(e)
                                          for e in status.get("caches") or [] if e.get("path")}
    want = cache.wanted([*deps, *model.retained_dependents(status)])
    for key, wanted_item in want.items():
        if key not in entries:
            record = model.generation_record(new_status, wanted_item.generation) or {}
            entries[key] = cache.new_entry(wanted_item, str(record.get("path") or ""))
    out: list[dict[str, Any]] = []
    for key, entry in entries.items():
        item = want.get(key)
        if entry.get("state") == cache.COLLECTED and item is None:
            out.append(entry)
            continue
        kept = await _cache_round(runtime, kind, namespace, name, entry, item, new_status, indices, body, now)
        if kept is not None:
            out.append(kept)
    # Collected entries are history: keep the last few for people reading the status.
    # Unset fields are left out (the API server drops nulls inside list items anyway).
    out = [{k: v for k, v in e.items() if v is not None} for e in out]
    live = [e for e in out if e.get("state") != cache.COLLECTED]
    gone = sorted((e for e in out if e.get("state") == cache.COLLECTED), key=lambda e: str(e.get("collectedAt")))
    result = [*live, *gone[-5:]]
    metrics.observe_image_caches(kind, namespace, name, result)
    return result


async def _cache_round(
    runtime: Runtime, kind: str, namespace: str, name: str, entry: dict[str, Any], item: cache.Wanted | None,
    new_status: Mapping[str, Any], indices: Mapping[str, Any], body: Any, now: datetime,
) -> dict[str, Any] | None:
    """The entry after one round (None: dropped, see `cache.orphaned`)."""
    host_key = str(entry.get("host") or (item.host if item else ""))
    host_spec, secret_namespace, host_name = _host_by_key(host_key, indices, runtime.config.operator_namespace)
    if host_spec is None:
        # A cache is asked for only by a VM whose host exists: its host was deleted since.
        deps = [*(item.users if item else ()), *(item.requesters if item else ())]
        live = [h for h in dict.fromkeys(d.host for d in deps if d.host and d.host != host_key)
                if _host_by_key(h, indices, runtime.config.operator_namespace)[0] is not None]
        orphan = cache.orphaned(entry, item, host_key or "?", live)
        for type_, reason, message in orphan.events:
            kopf.event(body, type=type_, reason=reason, message=message)
        if orphan.entry is not None and orphan.host is not None:
            return await _cache_round(runtime, kind, namespace, name, orphan.entry, item, new_status, indices,
                                      body, now)
        return orphan.entry
    generation = model.generation_record(new_status, int(entry.get("generation") or 0))
    spec = HyperVHostSpec.from_dict(host_spec)
    uid = cache.slot_uid(str(entry["path"]))
    label = f"{kind}:{namespace}.{name}" if namespace else f"{kind}:{name}"  # no "/": not pruned as a VM
    before = entry.get("state")
    try:
        client = metrics.MeteredClient(
            await runtime.connections.client_for(secret_namespace, host_name, spec), host_key)
        facts = await _read_cache_facts(client, entry)
        step = cache.plan_entry(entry, item, generation, facts, now)
        if step.wants_slot:
            await runtime.slots.refresh(host_key)
            granted = await runtime.slots.try_acquire(host_key, uid, spec.max_concurrent_copies, label, now)
            position = None if granted else runtime.slots.position(host_key, uid, spec.max_concurrent_copies)
            step = cache.plan_entry(entry, item, generation, facts, now, slot_granted=granted, slot_position=position)
        output: list[Any] = []
        if step.action is not None:
            logger.info("%s %s: host %s: %s", kind, name, host_key, step.action.description)
            try:
                output = await client.run(list(step.action.statements))
            except HostError as exc:
                if not (step.action.kind == "CollectCache" and is_not_found(exc)):
                    if step.slot == "take":
                        await runtime.slots.release(host_key, uid)
                    kopf.event(body, type="Warning", reason="CacheActionFailed",
                               message=f"{step.action.description} on {host_key}: {exc}")
                    return {**entry, "lastError": f"{step.action.kind}: {exc}"}
        new = cache.absorb(step, output)
        if step.slot == "hold" and before != cache.COPYING:
            await runtime.slots.refresh(host_key)
            await runtime.slots.adopt(host_key, uid, label, now)
        elif step.slot == "free" and before in (cache.COPYING, cache.QUEUED, cache.PENDING):
            await runtime.slots.refresh(host_key)
            await runtime.slots.release(host_key, uid)
    except (HostError, HostConfigError) as exc:
        return {**entry, "message": f"cannot reach host {host_key}: {exc}"}
    except LedgerError as exc:  # the copy ledger: decide again next round, nothing started
        return {**entry, "message": f"copy slots of {host_key}: {exc}"}
    for type_, reason, message in step.events:
        kopf.event(body, type=type_, reason=reason, message=message)
    if new.get("state") != before:
        logger.info("%s %s: cache %s: %s -> %s", kind, name, entry["path"], before, new.get("state"))
    if step.action is not None and step.action.starts_copy:
        metrics.IMAGE_CACHE_COPIES_TOTAL.labels(kind=kind).inc()
    return new


async def _facts_elsewhere(
    runtime: Runtime, source: str, image_host: str, deps: Sequence[Dependent], seen: Mapping[str, Any],
    indices: Mapping[str, Any], now: datetime,
) -> list[dict[str, Any]]:
    """The source's facts as read through every other host a VM of this image runs on: the path must name
    the same file there (a local path, or another file server answering the same name, would not)."""
    out: list[dict[str, Any]] = []
    for key in sorted({d.host for d in deps if d.host and d.host != image_host}):
        host_spec, secret_namespace, host_name = _host_by_key(key, indices, runtime.config.operator_namespace)
        if host_spec is None or _outside_roots(source, host_spec) is not None:
            continue  # the VM's own check refuses a file outside its host's roots; nothing is read there
        record: dict[str, Any] = {"host": key, "path": source, "readAt": cond.timestamp(now)}
        try:
            client = await runtime.connections.client_for(secret_namespace, host_name,
                                                          HyperVHostSpec.from_dict(host_spec))
            found = await _read_facts(metrics.MeteredClient(client, key), source)
        except (HostError, HostConfigError) as exc:
            out.append({**record, "error": str(exc)})
            continue
        identity = found.identity
        record.update(exists=found.exists, size=found.size, format=found.vhd_format, vhdType=found.vhd_type,
                      fileSize=identity.file_size if identity else None,
                      diskIdentifier=identity.disk_identifier if identity else None,
                      identity=identity.text() if identity else None,
                      sameFile=identity is not None and str(identity.disk_identifier).lower()
                      == str(seen.get("diskIdentifier") or "").lower())
        out.append(record)
    return out


async def _drop_caches(
    runtime: Runtime, kind: str, namespace: str, name: str, status: Mapping[str, Any], indices: Mapping[str, Any],
    body: Any,
) -> list[str]:
    """Remove every cached copy of a deleted image (its worker stopped first if one runs); what could not be
    removed yet, as messages."""
    left: list[str] = []
    for entry in status.get("caches") or []:
        if entry.get("state") == cache.COLLECTED or not entry.get("path"):
            continue
        path, host_key = str(entry["path"]), str(entry.get("host") or "")
        host_spec, secret_namespace, host_name = _host_by_key(host_key, indices, runtime.config.operator_namespace)
        if host_spec is None:
            kopf.event(body, type="Warning", reason="LeftOnHost",
                       message=f"host {host_key} is gone: cached copy {path} was not removed")
            continue
        try:
            client = await runtime.connections.client_for(secret_namespace, host_name,
                                                          HyperVHostSpec.from_dict(host_spec))
            facts = await _read_cache_facts(client, entry)
            statements = []
            if facts.job is not None and facts.worker_alive and facts.job.process_id:
                statements.append(cmdlets.stop_process(facts.job.process_id))
            statements += [cmdlets.remove_file(p) for p, ok in ((cache.status_of(path), facts.status_exists),
                                                                (cache.partial_of(path), facts.partial_exists),
                                                                (path, facts.exists)) if ok]
            for statement in statements:
                await client.run([statement])
            with contextlib.suppress(HostError):  # another generation's copy may share nothing; only if empty
                await client.run([cmdlets.remove_empty_directory(cache.folder_of(path))])
            await runtime.slots.refresh(host_key)
            await runtime.slots.release(host_key, cache.slot_uid(path))
        except (HostError, HostConfigError, LedgerError) as exc:
            if isinstance(exc, HostError) and is_not_found(exc):
                continue
            left.append(f"{path}: {exc}")
            continue
        kopf.event(body, type="Normal", reason="CacheCollected", message=f"removed cached copy {path} (image deleted)")
    return left


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
        if new_status.get("hosts"):
            new_status["hosts"] = [*new_status["hosts"],
                                   *await _facts_elsewhere(runtime, source, host_key, deps, new_status["hosts"][0],
                                                           kwargs, now)]
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
        new_status["caches"] = await _caches(runtime, kind, namespace, name, status, new_status, deps, kwargs,
                                             kwargs["body"], now)
        new_status["cachesSummary"] = cache.summary(new_status["caches"])
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


class _Due:
    """When an image's next round (host reads) is due, kept per process: at once on the first tick, when
    the set of VMs depending on it changed (a VM pinned it, chose its base, asked for a cache, became
    independent or went away), every CACHE_POLL while a cache copy runs or waits to be collected, and
    otherwise every drift interval."""

    def __init__(self, drift: float) -> None:
        self.drift = drift
        self._last: dict[tuple[str, str, str], tuple[float, tuple[Any, ...]]] = {}

    @staticmethod
    def fingerprint(deps: Sequence[Dependent], status: Mapping[str, Any]) -> tuple[Any, ...]:
        seen = sorted((d.namespace, d.name, d.generation, d.base, d.cache_request) for d in deps)
        return (*seen, *sorted((status.get("retained") or {}).keys()))

    @staticmethod
    def busy(spec: Mapping[str, Any], status: Mapping[str, Any]) -> bool:
        caches = [e for e in status.get("caches") or [] if e.get("state") != cache.COLLECTED]
        if any(e.get("state") in (cache.PENDING, cache.QUEUED, cache.COPYING) or e.get("unusedSince")
               for e in caches):
            return True
        return str(spec.get("retention") or "") == model.DELETE and any(
            r.get("collectable") and not r.get("collected") for r in status.get("generations") or [])

    def check(self, key: tuple[str, str, str], fingerprint: tuple[Any, ...], busy: bool, clock: float) -> bool:
        last = self._last.get(key)
        if last is None or last[1] != fingerprint:
            return True
        waited = clock - last[0]
        return waited >= self.drift or (busy and waited >= CACHE_POLL)

    def done(self, key: tuple[str, str, str], fingerprint: tuple[Any, ...], clock: float) -> None:
        self._last[key] = (clock, fingerprint)

    def forget(self, key: tuple[str, str, str]) -> None:
        self._last.pop(key, None)


class _QuietTicks(logging.Filter):
    """kopf logs every successful handler run at INFO; the image timer ticks every second and most ticks do
    nothing, so its success lines would flood the log. Its failures, and the work it does (logged by
    this module), still show."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Timer 'image' succeeded."


_QUIET = _QuietTicks()


def _register_kind(
    registry: kopf.OperatorRegistry, runtime: Runtime, kind: str, resource: tuple[str, str, str], reconcile: Any
) -> None:
    due = _Due(runtime.config.drift_interval)
    if _QUIET not in logging.getLogger("kopf.objects").filters:
        logging.getLogger("kopf.objects").addFilter(_QUIET)

    # One timer only (first run at once): kopf runs an object's timer serially, so two rounds never
    # work from the same stale status (a change handler beside it could undo a collection mark). It
    # ticks often; a tick with nothing due does no I/O and writes nothing.
    @kopf.timer(*resource, id="image", interval=min(IMAGE_TICK, runtime.config.drift_interval), initial_delay=0.0,
                registry=registry)
    async def image_handler(**kwargs: Any) -> None:
        if (kwargs["meta"] or {}).get("deletionTimestamp"):
            return
        name = str(kwargs["name"])
        namespace = str(kwargs.get("namespace") or "") if kind == IMAGE_KIND else ""
        key = (kind, namespace, name)
        fingerprint = _Due.fingerprint(dependents_of(key, kwargs), kwargs["status"])
        clock = asyncio.get_running_loop().time()
        if not due.check(key, fingerprint, _Due.busy(kwargs["spec"], kwargs["status"]), clock):
            return
        await reconcile(kind, kwargs)
        due.done(key, fingerprint, clock)

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
        # Nothing chains to the image any more: its cached copies (the operator's own files) go with it.
        left = await _drop_caches(runtime, kind, namespace, name, kwargs["status"], kwargs, kwargs["body"])
        if left:
            raise kopf.TemporaryError(f"removing cached copies: {'; '.join(left)}", delay=IN_USE_RETRY_SECONDS)
        metrics.forget_image(kind, namespace, name)
