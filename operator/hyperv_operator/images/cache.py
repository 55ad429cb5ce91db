r"""The per-share image cache: pure decisions (no I/O, no kopf).

A Differencing child reads its parent for its whole life. When a VM's files live on another share (or
local drive) than the image's file, every read of the child's unchanged blocks crosses the network to
the image's share, and a full copy (Copy, Quick) moves the whole base over it per VM. So the image's
file is copied ONCE to a cache inside the VM's share (under one of the host's `storage.vmRoots` on that
share, so a cache never leaves the roots the host allows; see `cache_target`), and:

- Differencing children on that share parent the cached copy; a child waits for the cache copy
  (reason `WaitingForImageCache`, not a failure) and never parents a partial one;
- Quick and Copy use the cached copy when one is Ready (Quick's checkpoint then sits beside the cached
  copy and its background copy is share-local) and otherwise the image's file directly: they never
  wait, and never ask for a cache (a Quick VM runs in seconds either way).

A *share* is the UNC `\\server\share` prefix, or the drive of a local path.

Where a cache lives (one per image generation per share; the root: the outermost of the VM host's
vmRoots on the VM's share, or the one another host's copy already is under, see `cache_target`):
    <root>\ImageCache\<image>\g<generation>\<source file name>
The copy runs through the same background copy the Copy strategy uses (hyperv/scripts.py: CopyFileEx
into `<cache>.partial`, renamed when whole, a status file the operator polls, the worker's liveness
checked by PID, command line and creation time) and takes one of the host's copy slots like a VM's copy.
The cached copy is used only once it exists under its final name AND its DiskIdentifier and length equal
the generation's recorded identity; a cached copy that changes afterwards stalls the VMs on it exactly
like a changed generation file. The cache is reference-counted by the VMs whose disks chain to it and
collected (file removed) once none has for `model.COLLECT_GRACE`; the operator created the file, so it
removes it whatever the image's retention (it never removes a file it did not create).

The VM's side (`choose_base`) records its decision in `status.image` before any host command:
`base` (the file its disk chains to or is copied from) or `cacheRequest` (the cache it waits for),
so the image's dependents (a kopf index over the VMs' status) never miss a VM.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.hyperv import cmdlets, scripts
from hyperv_operator.images.model import CLUSTER_IMAGE_KIND, COLLECT_GRACE, Dependent, FileFacts, Identity
from hyperv_operator.provisioning.observation import CopyJob
from hyperv_operator.tenancy.paths import PathRefused, WindowsPath, parse

CACHE_FOLDER = "ImageCache"
WAITING_REASON = "WaitingForImageCache"

# Cache entry states (status.caches[].state).
PENDING = "Pending"
QUEUED = "Queued"
COPYING = "Copying"
READY = "Ready"
FAILED = "Failed"
MISMATCH = "IdentityMismatch"
CHANGED = "IdentityChanged"
COLLECTED = "Collected"
HOST_GONE = "HostGone"
"""The host that made (or was making) the copy was deleted: the operator reads and removes its files no
more (see `orphaned`)."""

COPY_STALL_SECONDS = 120.0
"""The worker reports every second: this long without progress means it hangs (as for a VM's copy)."""
MAX_ATTEMPTS = 3
"""Copies of one cache that may fail or lose their worker in a row before the entry is Failed."""
RETRY_FAILED_AFTER = timedelta(minutes=5)
"""A Failed cache is tried again (MAX_ATTEMPTS more) this long after it failed, while VMs still wait: its
cause (a full share, a file server restarting) is often gone by then. The waiting VMs are Stalled
meanwhile, with the reason."""


def share_of(path: str) -> str | None:
    r"""`\\SERVER\SHARE` or `C:` (upper-cased), None if the path is not one the host would read literally."""
    try:
        parsed = parse(path)
    except PathRefused:
        return None
    return _share(parsed)


def _share(parsed: WindowsPath) -> str:
    if parsed.root[0] == "UNC":
        return f"\\\\{parsed.root[1]}\\{parsed.root[2]}".upper()
    return parsed.root[1].upper()


def same_share(a: str, b: str) -> bool:
    sa, sb = share_of(a), share_of(b)
    return sa is not None and sa == sb


def slot_uid(path: str) -> str:
    """The copy-slot ledger entry of a cache copy (no "/": the ledger prunes "namespace/name" entries of
    VMs that no longer exist, and a cache is not a VM)."""
    return "image-cache-" + hashlib.sha256(path.lower().encode()).hexdigest()[:16]


def image_folder(kind: str, namespace: str, name: str) -> str:
    return f"cluster.{name}" if kind == CLUSTER_IMAGE_KIND else f"{namespace}.{name}"


@dataclass(frozen=True)
class CacheTarget:
    path: str
    share: str
    host: str
    """Host key of the host that makes the copy (the requesting VM's host)."""


def cache_target(
    image: tuple[str, str, str], generation: int, source: str, vm_path: str, vm_roots: Sequence[str], host_key: str,
    known: Sequence[str] = (),
) -> CacheTarget | None:
    """Where the VM's share keeps this generation's cached copy; None when no cache is needed (the VM's
    files are on the image file's share) or possible (no allowed root on the VM's share).

    One copy per share, whichever host asks: of the cached copies already `known` (the VM's own request,
    then the image's live entries), the first that is this generation's path under one of THIS host's
    vmRoots on the share is used (so a host whose first root differs still shares another host's copy
    when its roots allow it); else the path under the outermost of the host's vmRoots on the share
    (fewest segments, host order on a tie), which hosts that list the share's common root agree on
    without seeing each other's entry. A path outside this host's roots is never chosen."""
    try:
        src, vm = parse(source), parse(vm_path)
    except PathRefused:
        return None
    if _share(src) == _share(vm):
        return None
    on_share = [r for r in (_safe(t) for t in vm_roots) if r is not None and _share(r) == _share(vm)]
    if not any(vm.is_inside(r) for r in on_share):
        return None
    kind, namespace, name = image
    file_name = src.segments[-1] if src.segments else "image.vhdx"

    def under(root: WindowsPath) -> str:
        return "\\".join((str(root).rstrip("\\"), CACHE_FOLDER, image_folder(kind, namespace, name),
                           f"g{generation}", file_name))

    allowed = [under(r) for r in on_share]
    for path in known:
        match = next((a for a in allowed if _same(a, path)), None)
        if match is not None:
            return CacheTarget(match, _share(vm), host_key)
    outermost = min(on_share, key=lambda r: len(r.segments))  # min keeps the first on a tie
    return CacheTarget(under(outermost), _share(vm), host_key)


REUSABLE_STATES = (PENDING, QUEUED, COPYING, READY)
"""Entries another host may join: made, or being made (not failed, changed, gone or collected)."""


def known_paths(pinned: Mapping[str, Any], image_status: Mapping[str, Any] | None, generation: int) -> list[str]:
    """The cached copies a VM may join, its own request first (so its choice does not move while it waits)."""
    out = [str(pinned["cacheRequest"])] if pinned.get("cacheRequest") else []
    for entry in (image_status or {}).get("caches") or []:
        if entry.get("path") and int(entry.get("generation") or 0) == generation \
                and entry.get("state") in REUSABLE_STATES:
            out.append(str(entry["path"]))
    return out


def _safe(text: str) -> WindowsPath | None:
    try:
        return parse(str(text))
    except PathRefused:
        return None


def _same(a: Any, b: Any) -> bool:
    return bool(a) and bool(b) and str(a).rstrip("\\").lower() == str(b).rstrip("\\").lower()


def find_entry(image_status: Mapping[str, Any], path: str) -> Mapping[str, Any] | None:
    for entry in image_status.get("caches") or []:
        if _same(entry.get("path"), path):
            return entry  # type: ignore[no-any-return]
    return None


def usable(entry: Mapping[str, Any] | None, generation_identity: str) -> bool:
    """A cached copy may be parented / copied from: Ready, and its content identity is the generation's."""
    if entry is None or entry.get("state") != READY:
        return False
    return content_matches(Identity.parse(str(entry.get("identity") or "")), Identity.parse(generation_identity))


def content_matches(cached: Identity | None, source: Identity | None) -> bool:
    """A byte copy keeps the VHDX's DiskIdentifier (it lives in the file's metadata) and its length; the
    copy's LastWriteTime is its own, so it is not compared."""
    return (cached is not None and source is not None
            and cached.disk_identifier.lower() == source.disk_identifier.lower()
            and cached.file_size == source.file_size)


# --- the VM's side ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class BaseChoice:
    """What a pinned VM chains to (or copies from), decided once and recorded in status.image."""

    base: str | None
    """The file to hand to the engine as the VM's base; None: wait (`waiting` says for what)."""
    record: dict[str, Any] | None = None
    """Fields to merge into status.image before anything else happens (None: nothing new)."""
    waiting: str | None = None
    hit: bool | None = None
    """True: a Ready cache was used; False: a cache was wanted and none was Ready; None: no cache involved."""
    stalled: tuple[str, str] | None = None


def choose_base(
    pinned: Mapping[str, Any], strategy: str, started: bool, target: CacheTarget | None,
    image_status: Mapping[str, Any] | None,
) -> BaseChoice:
    """Pure. `pinned` is status.image (kind, name, generation, path, identity [, base, cacheRequest]);
    `started`: the VM has host work recorded (vmId or createdFiles); `target`: its share's cache (None:
    none needed); `image_status` the image's status (None if the image is gone)."""
    path = str(pinned.get("path") or "")
    base = str(pinned.get("base") or "")
    if base:
        if not _same(base, path) and image_status is not None:
            entry = find_entry(image_status, base)
            if entry is not None and entry.get("state") == CHANGED:
                return BaseChoice(base, stalled=("BaseIdentityChanged",
                                                 f"the cached copy {base} changed out of band "
                                                 f"({entry.get('message') or 'identity differs'}); a disk chained to "
                                                 "it would read corrupted data"))
        return BaseChoice(base)
    if started or target is None:
        # Made before the cache existed (or no cache needed): its disk chains to the generation's file.
        return BaseChoice(path, {"base": path})
    entry = find_entry(image_status or {}, target.path)
    if usable(entry, str(pinned.get("identity") or "")):
        return BaseChoice(target.path, {"base": target.path, "cacheRequest": None}, hit=True)
    if strategy != "Differencing":
        # Quick and Copy start at once from the image's file (no cache on this share yet).
        return BaseChoice(path, {"base": path}, hit=False)
    first_ask = not _same(pinned.get("cacheRequest"), target.path)
    record = {"cacheRequest": target.path, "cacheHost": target.host} if first_ask else None
    if entry is not None and entry.get("state") == HOST_GONE and not first_ask:
        return BaseChoice(None, stalled=("ImageCacheHostGone", f"the cached copy {target.path} of {path} cannot be "
                                         f"made: {entry.get('message') or 'its host was deleted'}"))
    if entry is not None and entry.get("state") in (FAILED, MISMATCH) and not first_ask:
        return BaseChoice(None, stalled=("ImageCacheFailed",
                                         f"the cached copy {target.path} of {path} could not be made "
                                         f"({entry.get('message') or entry.get('lastError') or entry.get('state')}); "
                                         "it is tried again later"))
    return BaseChoice(None, record, waiting=waiting_message(entry, path, target.path), hit=False if first_ask else None)


def waiting_message(entry: Mapping[str, Any] | None, source: str, path: str) -> str:
    if entry is None or entry.get("state") in (None, PENDING, COLLECTED):
        return f"waiting for the image cache: {source} is copied once to this VM's share ({path})"
    state = str(entry.get("state"))
    if state == COPYING:
        return (f"waiting for the image cache: copying {source} to {path}: {int(entry.get('percent') or 0)}% "
                f"({int(entry.get('bytesCopied') or 0)}/{int(entry.get('bytesTotal') or 0)} bytes)")
    if state == QUEUED:
        return f"waiting for the image cache: the copy of {source} to {path} waits for a copy slot on its host"
    return f"waiting for the image cache {path} ({state}: {entry.get('message') or ''})"


def waiting_conditions(
    previous: Sequence[Mapping[str, Any]] | None, message: str, generation: int, now: datetime,
) -> list[dict[str, Any]]:
    """Reconciling (not Stalled): the VM waits for work under way."""
    prev = list(previous or [])
    return cond.merge(prev, [
        cond.make(prev, cond.RECONCILING, True, WAITING_REASON, message, generation, now),
        cond.make(prev, cond.STALLED, False, "NoError", "", generation, now),
        cond.make(prev, cond.READY, False, WAITING_REASON, message, generation, now),
    ])


# --- the image's side ------------------------------------------------------------------------------


@dataclass(frozen=True)
class CacheFacts:
    """What the copying host shows of one cache (read by the controller)."""

    exists: bool
    partial_exists: bool = False
    status_exists: bool = False
    job: CopyJob | None = None
    worker_alive: bool | None = None
    """The process named by the copy's status is our worker (None: not checked)."""
    file: FileFacts | None = None
    """Get-VHD + Get-Item of the cached copy, when it exists."""


@dataclass(frozen=True)
class Wanted:
    """A cache some VM asks for or chains to."""

    path: str
    generation: int
    host: str
    requesters: tuple[Dependent, ...] = ()
    users: tuple[Dependent, ...] = ()


def wanted(dependents: Sequence[Dependent]) -> dict[str, Wanted]:
    """Caches by lower-cased path: those VMs wait for (cacheRequest) and those their disks chain to."""
    out: dict[str, Wanted] = {}
    for dep in sorted(dependents, key=lambda d: (d.namespace, d.name)):
        for path, role in ((dep.cache_request, "request"), (dep.base, "use")):
            if not path or (role == "use" and _same(path, dep.path)):
                continue
            key = path.lower()
            item = out.get(key) or Wanted(path, dep.generation, dep.host)
            if role == "request":
                item = Wanted(item.path, item.generation, item.host or dep.host, (*item.requesters, dep), item.users)
            else:
                item = Wanted(item.path, item.generation, item.host or dep.host, item.requesters, (*item.users, dep))
            out[key] = item
    return out


@dataclass(frozen=True)
class CacheAction:
    kind: str  # StartCacheCopy, RemoveCopyStatus, RestartCacheCopy, RemoveFailedCopy, CollectCache, ...
    description: str
    statements: tuple[Any, ...] = ()
    starts_copy: bool = False


@dataclass
class CacheStep:
    entry: dict[str, Any]
    """The entry after the action succeeds (or now, without an action)."""
    action: CacheAction | None = None
    wants_slot: bool = False
    slot: str = "free"
    """hold: the copy runs (keep / reclaim the slot); take: the action starts a copy; queued: in line for
    one (keep the place); free: release it."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    collected_bytes: int = 0


def partial_of(path: str) -> str:
    return path + ".partial"


def status_of(path: str) -> str:
    return path + ".copy.json"


def folder_of(path: str) -> str:
    return path.rsplit("\\", 1)[0]


def new_entry(item: Wanted, source: str) -> dict[str, Any]:
    return {"path": item.path, "share": share_of(item.path) or "", "generation": item.generation,
            "source": source, "host": item.host, "state": PENDING}


def plan_entry(
    entry: Mapping[str, Any], item: Wanted | None, generation: Mapping[str, Any] | None, facts: CacheFacts,
    now: datetime, *, slot_granted: bool | None = None, slot_position: int | None = None,
) -> CacheStep:
    """The next step for one cache (pure). `item`: the VMs asking for / chained to it (None: none);
    `generation`: the image generation record it copies (its path and identity)."""
    e = dict(entry)
    step = CacheStep(e)
    stamp = cond.timestamp(now)
    path = str(e["path"])
    source = str((generation or {}).get("path") or e.get("source") or "")
    source_identity = Identity.parse(str((generation or {}).get("identity") or ""))
    users = list(item.users) if item else []
    requesters = list(item.requesters) if item else []
    e["dependents"] = len(users)
    e["dependentVMs"] = [f"{d.namespace}/{d.name}" for d in users][:20]
    e["waiting"] = len(requesters)
    if item is not None and item.host and not e.get("host"):
        e["host"] = item.host

    if e.get("state") == HOST_GONE:
        # Its host is back (re-created under the same name): go on from where it was, by what the host shows.
        e.update(state=e.get("stateBeforeHostGone") or PENDING, stateBeforeHostGone=None, message=None)
    if e.get("state") == COLLECTED:
        if not requesters and not users:
            return step
        e.update(state=PENDING, collectedAt=None, attempts=0, message=None, unusedSince=None)  # asked again

    completed = facts.status_exists and facts.job is not None and facts.job.state == "Completed"
    if facts.exists and (not facts.status_exists or completed):
        # A whole file (renamed from the partial): verified before use; the copy's bookkeeping files go
        # in the same step.
        return _tidy(_whole(step, e, facts, source, source_identity, users, requesters, now), facts, path)
    job = facts.job if facts.status_exists else None
    if facts.status_exists and job is not None:
        if facts.exists:
            # Renamed, final status not written yet: only the bookkeeping goes; verified next round.
            e.update(state=COPYING, percent=100, bytesCopied=job.bytes_total, bytesTotal=job.bytes_total)
            return _tidy(step, facts, path)
        if job.state == "Failed":
            leftovers = [p for p, ok in ((status_of(path), True), (partial_of(path), facts.partial_exists)) if ok]
            e["lastError"] = job.error or "no reason given"
            step.events.append(("Warning", "CacheCopyFailed", f"copy of {source} to {path} failed: {e['lastError']}"))
            return _attempt_again(step, e, now, "RemoveFailedCopy", tuple(cmdlets.remove_file(p) for p in leftovers),
                                  f"the copy failed ({e['lastError']}); removing its files")
        # Running (or a state we do not know, treated as running while the worker lives).
        if e.get("progressMark") != f"{job.bytes_copied}":
            e.update(progressMark=f"{job.bytes_copied}", progressSeenAt=stamp)
        seen_at = cond.parse_timestamp(e.get("progressSeenAt"))
        stale = seen_at is not None and (now - seen_at).total_seconds() > COPY_STALL_SECONDS
        if facts.worker_alive is False or stale:
            reason = (f"its worker (process {job.process_id}) is no longer running" if facts.worker_alive is False
                      else f"no progress for {int(COPY_STALL_SECONDS)}s")
            stop = (cmdlets.stop_process(job.process_id),) if facts.worker_alive and job.process_id else ()
            leftovers = [p for p, ok in ((status_of(path), True), (partial_of(path), facts.partial_exists)) if ok]
            e["lastError"] = reason
            step.events.append(("Warning", "CacheCopyRestarted", f"copy of {source} to {path}: {reason}"))
            return _attempt_again(step, e, now, "RestartCacheCopy",
                                  (*stop, *(cmdlets.remove_file(p) for p in leftovers)),
                                  f"restarting the copy: {reason}")
        total = job.bytes_total or int(e.get("bytesTotal") or 0)
        percent = int(job.bytes_copied * 100 / total) if total else 0
        e.update(state=COPYING, bytesCopied=job.bytes_copied, bytesTotal=total, percent=min(percent, 99),
                 processId=job.process_id or e.get("processId"), startedAt=job.started_at or e.get("startedAt"),
                 queuePosition=None, message=f"copying {source}: {min(percent, 99)}%")
        step.slot = "hold"
        return step

    if facts.status_exists and job is None:
        # Written but unreadable (mid-replace): look again next round.
        e["message"] = "reading the copy's status"
        step.slot = "hold"
        return step

    # Nothing on the host for this cache (or only a partial left by a crash before a status existed).
    if not requesters and not users:
        if facts.partial_exists:
            step.action = CacheAction("RemoveStalePartial", f"removing {partial_of(path)}",
                                      (cmdlets.remove_file(partial_of(path)),))
        e.update(state=COLLECTED, collectedAt=e.get("collectedAt") or stamp, percent=None, queuePosition=None)
        return step
    if e.get("state") == FAILED:
        failed = cond.parse_timestamp(e.get("failedAt"))
        if failed is not None and now - failed < RETRY_FAILED_AFTER:
            return step
        e.update(state=PENDING, attempts=0, failedAt=None)  # its cause may be gone: MAX_ATTEMPTS more
        step.events.append(("Normal", "CacheRetry", f"trying the cached copy {path} again"))
    if generation is None or generation.get("collected") or generation.get("identityChanged") or not source:
        e.update(state=FAILED, message=f"the generation's file {source or '?'} is gone or changed; nothing to copy")
        return step
    if slot_granted is None:
        step.wants_slot = True
        return step
    if not slot_granted:
        if e.get("state") != QUEUED:
            step.events.append(("Normal", "CacheCopyQueued", f"copy of {source} to {path} waits for a copy slot"))
        e.update(state=QUEUED, queuePosition=slot_position, message="waiting for a copy slot on the host")
        step.slot = "queued"  # keeps its place in the host's first-come-first-served queue
        return step
    e.update(state=COPYING, bytesCopied=0, percent=0, queuePosition=None, startedAt=stamp, source=source,
             bytesTotal=source_identity.file_size if source_identity else None,
             progressMark=None, progressSeenAt=stamp, message=f"copying {source}")
    step.events.append(("Normal", "CacheCopyStarted", f"copying {source} once to {path} (for "
                                                      f"{', '.join(f'{d.namespace}/{d.name}' for d in requesters)})"))
    statements = [cmdlets.new_directory(folder_of(path))]
    if facts.partial_exists:
        statements.append(cmdlets.remove_file(partial_of(path)))
    statements.append(scripts.start_background_copy(source, path, partial_of(path), status_of(path)))
    step.action = CacheAction("StartCacheCopy", f"StartBackgroundCopy {source} -> {partial_of(path)} -> {path}",
                              tuple(statements), starts_copy=True)
    step.slot = "take"
    return step


def _whole(step: CacheStep, e: dict[str, Any], facts: CacheFacts, source: str, source_identity: Identity | None,
           users: Sequence[Dependent], requesters: Sequence[Dependent], now: datetime) -> CacheStep:
    """The cached copy exists under its final name: Ready once its content identity is the generation's."""
    path, stamp = str(e["path"]), cond.timestamp(now)
    seen = facts.file
    identity = seen.identity if seen is not None and seen.exists else None
    if e.get("state") in (READY, CHANGED):
        recorded = Identity.parse(str(e.get("identity") or ""))
        if e.get("state") == READY and recorded is not None and identity is not None \
                and identity.text() != recorded.text():
            e.update(state=CHANGED,
                     message=f"{recorded.text()} is now {identity.text()} (file written or replaced)")
            step.events.append(("Warning", "CacheIdentityChanged",
                                f"cached copy {path} changed out of band ({e['message']}); VMs on it: "
                                f"{', '.join(e['dependentVMs']) or 'none'}"))
        return _collect_or_keep(step, e, users, requesters, now)
    if identity is not None and content_matches(identity, source_identity):
        first = e.get("state") != READY
        e.update(state=READY, identity=identity.text(), bytes=identity.file_size, percent=100, attempts=None,
                 bytesCopied=identity.file_size, bytesTotal=identity.file_size, message=None, processId=None,
                 processCreatedAt=None)
        e.setdefault("readyAt", stamp)
        if first:
            step.events.append(("Normal", "CacheReady", f"cached copy {path} of {source} is ready"))
        return _collect_or_keep(step, e, users, requesters, now)
    if identity is None:
        e["message"] = f"reading the cached copy {path}"
        return step
    # A whole file whose content is not the generation's: never used. Ours (our cache folder): remove it.
    e.update(state=MISMATCH, message=f"{path} has identity {identity.text()}, the generation's file is "
                                     f"{source_identity.text() if source_identity else 'unknown'}")
    step.events.append(("Warning", "CacheIdentityMismatch", f"cached copy not used: {e['message']}"))
    if users:
        return step
    return _attempt_again(step, e, now, "RemoveMismatchedCache", (cmdlets.remove_file(path),),
                          f"removing the mismatched cached copy {path}")


def _tidy(step: CacheStep, facts: CacheFacts, path: str) -> CacheStep:
    """Add the removal of the copy's status file and partial (left once the copy is whole) to the step."""
    leftovers = [p for p, ok in ((status_of(path), facts.status_exists), (partial_of(path), facts.partial_exists))
                 if ok]
    if not leftovers:
        return step
    removals = tuple(cmdlets.remove_file(p) for p in leftovers)
    if step.action is None:
        step.action = CacheAction("RemoveCopyStatus", f"copy complete; removing {', '.join(leftovers)}", removals)
    else:
        step.action = CacheAction(step.action.kind, f"{step.action.description}; removing {', '.join(leftovers)}",
                                  (*removals, *step.action.statements))
    return step


def _attempt_again(step: CacheStep, e: dict[str, Any], now: datetime, kind: str, statements: tuple[Any, ...],
                   description: str) -> CacheStep:
    attempts = int(e.get("attempts") or 0) + 1
    e.update(attempts=attempts, processId=None, processCreatedAt=None, progressMark=None, progressSeenAt=None)
    if attempts >= MAX_ATTEMPTS:
        e.update(state=FAILED, failedAt=cond.timestamp(now),
                 message=f"{description}; gave up after {attempts} attempts")
        step.events.append(("Warning", "CacheFailed", f"cache {e['path']}: {e['message']}"))
    else:
        e.update(state=PENDING, message=f"{description} (attempt {attempts} of {MAX_ATTEMPTS})")
    step.action = CacheAction(kind, description, statements) if statements else None
    return step


def _collect_or_keep(step: CacheStep, e: dict[str, Any], users: Sequence[Dependent],
                     requesters: Sequence[Dependent], now: datetime) -> CacheStep:
    """Reference counting: a cache nobody chains to (nor waits for) goes after the grace."""
    if users or requesters:
        e["unusedSince"] = None
        return step
    since = cond.parse_timestamp(e.get("unusedSince"))
    if since is None:
        e["unusedSince"] = cond.timestamp(now)
        return step
    if now - since < COLLECT_GRACE:
        return step
    path = str(e["path"])
    step.collected_bytes = int(e.get("bytes") or 0)
    e.update(state=COLLECTED, collectedAt=cond.timestamp(now), percent=None)
    step.events.append(("Normal", "CacheCollected", f"removed cached copy {path}: no VM chains to it"))
    # The generation's folder under the cache is ours and holds only this file.
    step.action = CacheAction("CollectCache", f"Remove-Item {path}; Remove-Item (empty) {folder_of(path)}",
                              (cmdlets.remove_file(path), cmdlets.remove_empty_directory(folder_of(path))))
    return step


def absorb(step: CacheStep, output: Sequence[Any]) -> dict[str, Any]:
    """The StartBackgroundCopy output (ProcessId, ProcessCreatedAt) into the entry."""
    e = dict(step.entry)
    if step.action is not None and step.action.starts_copy:
        for obj in output:
            pid = obj.get("ProcessId") if hasattr(obj, "get") else None
            if pid:
                created = obj.get("ProcessCreatedAt")
                e.update(processId=int(pid), processCreatedAt=str(created) if created else None)
    return e


@dataclass(frozen=True)
class Orphan:
    """What becomes of a cache whose host (the one that makes, checks and removes it) was deleted."""

    entry: dict[str, Any] | None
    """The entry to keep (None: drop it, no VM depends on it any more)."""
    host: str | None = None
    """Hand the cache over to this live host (it goes on as usual through it); None: no hand-over."""
    events: tuple[tuple[str, str, str], ...] = ()


HANDOVER_STATES = (READY, CHANGED)
"""A cache in these states has no copy worker: any host that sees its share may check and remove it. In
the others a worker may still run on the deleted host's machine (a copy started, or being started), which
another host can neither see (Get-Process is per machine) nor stop: taking the copy over would restart it
beside a live writer."""


def orphaned(entry: Mapping[str, Any], item: Wanted | None, host: str, live_hosts: Sequence[str]) -> Orphan:
    """Pure. `host`: the deleted host's key; `item`: the VMs asking for / chained to the cache; `live_hosts`:
    the hosts of those VMs that still exist (their order is the VMs')."""
    e = dict(entry)
    users = list(item.users) if item else []
    requesters = list(item.requesters) if item else []
    e.update(dependents=len(users), dependentVMs=[f"{d.namespace}/{d.name}" for d in users][:20],
             waiting=len(requesters))
    path = str(e.get("path") or "")
    if e.get("state") == COLLECTED:
        return Orphan(e)
    if e.get("state") in HANDOVER_STATES and live_hosts:
        e.update(host=live_hosts[0], message=f"host {host} was deleted; checked through {live_hosts[0]} now")
        return Orphan(e, host=live_hosts[0], events=(("Normal", "CacheHostChanged", f"cached copy {path}: host "
                                                      f"{host} was deleted; {live_hosts[0]} checks it now"),))
    left = [path] if e.get("state") in (READY, CHANGED) else [path, partial_of(path), status_of(path)]
    files = ", ".join(left)
    if not users and not requesters:
        return Orphan(None, events=(("Warning", "LeftOnHost",
                                     f"host {host} was deleted while it kept the cached copy {path} "
                                     f"({e.get('state')}); no VM depends on it: the entry is dropped and these "
                                     f"files, if present, are left for an administrator to remove: {files}"),))
    first = e.get("state") != HOST_GONE
    if first:
        e["stateBeforeHostGone"] = e.get("state")
    e.update(state=HOST_GONE, percent=None, queuePosition=None, processId=None,
             message=(f"host {host} was deleted while it kept this cache "
                      f"({e.get('stateBeforeHostGone')}): the operator no longer reads, copies or removes it; "
                      f"left in place: {files}; the entry goes when no VM depends on it"))
    events = (("Warning", "CacheHostGone", f"cached copy {path}: {e['message']}"),) if first else ()
    return Orphan(e, events=events)


def summary(entries: Sequence[Mapping[str, Any]]) -> str:
    """One line per image: each live cache as share:state(dependents)."""
    parts = []
    for e in entries:
        if e.get("state") == COLLECTED:
            continue
        text = f"{e.get('share')}:{e.get('state')}"
        if e.get("state") == COPYING:
            text += f"{int(e.get('percent') or 0)}%"
        parts.append(f"{text}({int(e.get('dependents') or 0)})")
    return " ".join(parts)
