"""Base images: pure decisions (no I/O, no kopf).

An image names a source VHDX. Each distinct source file it has pointed at is a *generation*; a VM
made from the image pins one generation (its file and that file's identity) in `status.image` at
creation and is made from that file for its whole life, so replacing the image's source never pulls
the base from under a running child. Which VMs still chain to which file (the *dependents*) is
computed from the VMs' own status: a Differencing child forever, Quick until its merge finished,
Copy until its copy finished. A superseded generation without dependents is collectable; its file is
removed only when the image's `retention` says the operator owns the files, and never the current
generation's file or one with dependents.

Identity of a file: the VHDX DiskIdentifier (Get-VHD), its length and its last write time
(Get-Item). Replacing the file changes the identifier or the length; writing into it (mounting it
read-write, a merge into it) changes the last write time. A Differencing child over a base that
changed boots corrupted, so a changed identity stalls the image and every VM pinned to the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

IMAGE_KIND = "VirtualMachineImage"
CLUSTER_IMAGE_KIND = "ClusterVirtualMachineImage"
IMAGE_KINDS = (IMAGE_KIND, CLUSTER_IMAGE_KIND)

RETAIN = "Retain"
DELETE = "Delete"

COLLECT_GRACE = timedelta(seconds=5)
"""A superseded generation is collected no earlier than this after it stopped being current: a VM that
read the image just before the switch pins the old generation in its next status write (milliseconds),
and the VM index must have seen that pin before the file may go."""


@dataclass(frozen=True)
class ImageRef:
    kind: str
    name: str

    @classmethod
    def from_vm_spec(cls, spec: Mapping[str, Any]) -> ImageRef | None:
        ref = spec.get("imageRef")
        if not ref:
            return None
        return cls(kind=str(ref.get("kind") or IMAGE_KIND), name=str(ref.get("name") or ""))

    def key(self, namespace: str) -> tuple[str, str, str]:
        """Index key of the image: (kind, namespace or "", name)."""
        return (self.kind, namespace if self.kind == IMAGE_KIND else "", self.name)

    def describe(self, namespace: str) -> str:
        return f"{self.kind} {self.name}" if self.kind == CLUSTER_IMAGE_KIND else f"{self.kind} {namespace}/{self.name}"


@dataclass(frozen=True)
class Identity:
    disk_identifier: str
    file_size: int
    last_write_time: str

    def text(self) -> str:
        return f"{self.disk_identifier}/{self.file_size}/{self.last_write_time}"

    @classmethod
    def parse(cls, text: str) -> Identity | None:
        parts = str(text or "").split("/", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            return None
        return cls(parts[0], int(parts[1]), parts[2])


@dataclass(frozen=True)
class FileFacts:
    """What the host says about one file (Get-VHD + Get-Item)."""

    path: str
    exists: bool
    identity: Identity | None = None
    size: int | None = None
    """Virtual size (bytes the guest sees)."""
    vhd_format: str | None = None
    vhd_type: str | None = None
    parent_path: str | None = None


@dataclass(frozen=True)
class Dependent:
    namespace: str
    name: str
    strategy: str
    path: str
    generation: int
    base: str = ""
    """The file the VM's disk chains to (or is copied from): the generation's file or a cached copy of it;
    empty while undecided (see images/cache.py)."""
    cache_request: str = ""
    """The cached copy the VM waits for (Differencing on another share), if any."""
    host: str = ""
    """Host key of the VM's host ("namespace/name" or "ClusterHyperVHost/name"): it sees the image's file
    (image facts are read through it too) and makes the VM's share's cached copy."""


def vm_dependency(
    namespace: str, name: str, spec: Mapping[str, Any], status: Mapping[str, Any]
) -> tuple[tuple[str, str, str], Dependent] | None:
    """The image (index key) and the file a VM still chains to, from the VM's own status; None if it
    chains to no image file (not pinned, or made independent: Copy copied, Quick merged)."""
    pinned = status.get("image") or {}
    kind, image_name, path = pinned.get("kind"), pinned.get("name"), pinned.get("path")
    if kind not in IMAGE_KINDS or not image_name or not path:
        return None
    strategy = str(spec.get("strategy") or "")
    timings = status.get("timings") or {}
    if strategy == "Quick" and timings.get("independentAt"):
        return None
    if strategy == "Copy" and ((status.get("copy") or {}).get("finishedAt") or timings.get("independentAt")):
        return None
    key = (str(kind), namespace if kind == IMAGE_KIND else "", str(image_name))
    host_ref = spec.get("hostRef") or {}
    host_name = str(host_ref.get("name") or "")
    host = (f"{host_ref.get('kind')}/{host_name}" if host_ref.get("kind") == "ClusterHyperVHost"
            else f"{namespace}/{host_name}") if host_name else ""
    return key, Dependent(namespace, name, strategy, str(path), int(pinned.get("generation") or 0),
                          str(pinned.get("base") or ""), str(pinned.get("cacheRequest") or ""),
                          str(pinned.get("cacheHost") or host))


def _same_path(a: str, b: str) -> bool:
    return a.rstrip("\\").lower() == b.rstrip("\\").lower()  # Windows paths compare case-insensitively


@dataclass(frozen=True)
class Refusal:
    reason: str
    message: str
    waiting: bool = False
    """True: the VM may be admitted and waits (the image may appear or become Ready)."""


@dataclass(frozen=True)
class Resolution:
    """What a VM uses from its image: the pin to record (if not pinned yet) and the effective base path."""

    base_path: str | None
    pin: dict[str, Any] | None
    refusal: Refusal | None


def resolve_for_vm(
    namespace: str,
    vm_spec: Mapping[str, Any],
    vm_status: Mapping[str, Any],
    image: Mapping[str, Any] | None,
    namespace_labels: Mapping[str, str] | None,
    *,
    selector_matches: Any,
) -> Resolution:
    """The base path a VM with `spec.imageRef` is made from (pure; `image` is the whole object or None).

    A VM that pinned a generation keeps it even if the image is gone or moved on (its disk chains to
    that file). A new VM pins the image's current generation once the image is Ready.
    """
    ref = ImageRef.from_vm_spec(vm_spec)
    if ref is None:
        raise ValueError("resolve() needs a VM spec with imageRef")
    pinned = vm_status.get("image") or {}
    image_status = (image or {}).get("status") or {}
    if pinned.get("path"):
        record = generation_record(image_status, int(pinned.get("generation") or 0))
        if record is not None and record.get("identityChanged"):
            return Resolution(str(pinned["path"]), None, Refusal(
                "BaseIdentityChanged",
                f"the base file {pinned['path']} of {ref.describe(namespace)} generation {pinned.get('generation')} "
                f"changed out of band ({record.get('identityChangedMessage') or 'identity differs'}); a disk "
                "chained to it would read corrupted data"))
        return Resolution(str(pinned["path"]), None, None)
    if image is None:
        return Resolution(None, None, Refusal("ImageNotFound", f"waiting for {ref.describe(namespace)} to exist",
                                              waiting=True))
    image_spec = image.get("spec") or {}
    if ref.kind == CLUSTER_IMAGE_KIND:
        selector = image_spec.get("namespaceSelector")
        if namespace_labels is None or not selector_matches(selector, namespace_labels):
            return Resolution(None, None, Refusal(
                "NamespaceNotAdmittedByImage",
                f"{ref.describe(namespace)} does not admit namespace {namespace} (its namespaceSelector does not "
                "match the namespace's labels)"))
    expected = image_spec.get("vmGeneration")
    wanted = int(vm_spec.get("generation") or 2)
    if expected is not None and int(expected) != wanted:
        return Resolution(None, None, Refusal(
            "ImageGenerationMismatch",
            f"{ref.describe(namespace)} holds a generation {expected} disk; this VM is generation {wanted}"))
    if (image.get("metadata") or {}).get("deletionTimestamp"):
        return Resolution(None, None, Refusal("ImageDeleting", f"{ref.describe(namespace)} is being deleted"))
    current = generation_record(image_status, int(image_status.get("currentGeneration") or 0))
    stalled = _condition(image_status, "Stalled")
    if stalled is not None and stalled.get("status") == "True":
        return Resolution(None, None, Refusal(
            str(stalled.get("reason") or "ImageStalled"),
            f"{ref.describe(namespace)} is stalled: {stalled.get('message')}", waiting=True))
    ready = _condition(image_status, "Ready")
    if current is None or ready is None or ready.get("status") != "True":
        return Resolution(None, None, Refusal(
            "ImageNotReady", f"waiting for {ref.describe(namespace)} to be Ready", waiting=True))
    pin = {"kind": ref.kind, "name": ref.name, "generation": int(current["generation"]),
           "path": str(current["path"]), "identity": str(current.get("identity") or "")}
    return Resolution(str(current["path"]), pin, None)


def _condition(status: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    for item in status.get("conditions") or []:
        if item.get("type") == type_:
            return item  # type: ignore[no-any-return]
    return None


def generation_record(status: Mapping[str, Any], generation: int) -> Mapping[str, Any] | None:
    for record in status.get("generations") or []:
        if int(record.get("generation") or 0) == generation:
            return record  # type: ignore[no-any-return]
    return None


@dataclass
class ImagePlan:
    """The image's next status and what to do on the host."""

    status: dict[str, Any]
    remove: list[str] = field(default_factory=list)
    """Superseded generation files to delete (retention Delete, no dependents, past the grace)."""
    events: list[tuple[str, str, str]] = field(default_factory=list)
    """(type, reason, message)"""
    ready: bool = False
    stalled: tuple[str, str] | None = None
    not_ready: tuple[str, str] | None = None


def paths_to_read(spec: Mapping[str, Any], status: Mapping[str, Any]) -> list[str]:
    """Files whose facts the controller reads this round: the source and every generation still on disk."""
    out = [str((spec.get("source") or {}).get("path") or "")]
    for record in status.get("generations") or []:
        path = str(record.get("path") or "")
        if path and not record.get("collected") and not any(_same_path(path, p) for p in out):
            out.append(path)
    return [p for p in out if p]


def plan_image(
    spec: Mapping[str, Any],
    status: Mapping[str, Any],
    facts: Mapping[str, FileFacts],
    dependents: Sequence[Dependent],
    now: datetime,
    *,
    host_key: str,
    may_delete: bool = True,
) -> ImagePlan:
    """Next status of an image from its spec, previous status, the host's facts and its dependents.

    `facts` is keyed by lower-cased path (see `paths_to_read`). `may_delete` is False for a namespaced
    image: only a cluster image (the cluster admin's) may have the operator delete files. Pure.
    """
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    source = str((spec.get("source") or {}).get("path") or "")
    retention = str(spec.get("retention") or RETAIN)
    expected = str((spec.get("expectedIdentity") or {}).get("diskIdentifier") or "")
    generations = [dict(r) for r in status.get("generations") or []]
    current_gen = int(status.get("currentGeneration") or 0)
    plan = ImagePlan(status={})
    source_facts = facts.get(source.lower())
    current = next((r for r in generations if int(r["generation"]) == current_gen), None)

    stalled: tuple[str, str] | None = None
    not_ready: tuple[str, str] | None = None
    if source_facts is None or not source_facts.exists or source_facts.identity is None:
        not_ready = ("SourceNotFound", f"the source {source} does not exist on {host_key}")
    elif source_facts.vhd_type == "Differencing" or source_facts.parent_path:
        stalled = ("SourceIsDifferencing", f"the source {source} is a differencing disk (parent "
                   f"{source_facts.parent_path}); an image must be a standalone Dynamic or Fixed VHDX")
    elif expected and source_facts.identity.disk_identifier.lower() != expected.lower():
        stalled = ("IdentityMismatch", f"the source {source} has DiskIdentifier "
                   f"{source_facts.identity.disk_identifier}, spec.expectedIdentity says {expected}")
    elif current is None or not _same_path(str(current["path"]), source):
        # A new source file: a new generation (the previous one stays for its dependents).
        current_gen = max([int(r["generation"]) for r in generations] + [0]) + 1
        for record in generations:
            if not record.get("supersededAt"):
                record["supersededAt"] = stamp
        current = {"generation": current_gen, "path": source, "identity": source_facts.identity.text(),
                   "createdAt": stamp}
        generations.append(current)
        plan.events.append(("Normal", "NewGeneration", f"generation {current_gen} is {source}"))

    # Identity check of every file still in use: a changed base corrupts its Differencing children.
    by_generation: dict[int, list[Dependent]] = {}
    for dep in [*dependents, *retained_dependents(status)]:
        by_generation.setdefault(dep.generation, []).append(dep)
    for record in generations:
        gen = int(record["generation"])
        deps = sorted(by_generation.get(gen, []), key=lambda d: (d.namespace, d.name))
        record["dependents"] = len(deps)
        record["dependentVMs"] = [f"{d.namespace}/{d.name}" for d in deps][:20]
        if record.get("collected"):
            continue
        seen = facts.get(str(record["path"]).lower())
        if seen is not None and not seen.exists and gen != current_gen and not deps:
            # Removed by someone else while nothing chained to it: nothing to protect, nothing to collect.
            record.update(collected=True, collectedAt=stamp, collectable=False)
            continue
        recorded = Identity.parse(str(record.get("identity") or ""))
        if seen is not None and recorded is not None and not record.get("identityChanged"):
            message = _identity_change(recorded, seen)
            if message:
                record["identityChanged"] = True
                record["identityChangedMessage"] = message
                plan.events.append(("Warning", "BaseIdentityChanged",
                                    f"generation {gen} file {record['path']}: {message}; "
                                    f"affected VMs: {', '.join(record['dependentVMs']) or 'none'}"))
        if record.get("identityChanged") and stalled is None and (deps or gen == current_gen):
            stalled = ("BaseIdentityChanged", f"generation {gen} file {record['path']} changed out of band "
                       f"({record.get('identityChangedMessage')}); affected VMs: "
                       f"{', '.join(record['dependentVMs']) or 'none'}")
        superseded = gen != current_gen
        record["collectable"] = superseded and not deps
        if not record["collectable"] or retention != DELETE or not may_delete or record.get("identityChanged"):
            continue
        since = _parse(record.get("supersededAt"))
        if since is not None and now - since >= COLLECT_GRACE and not _same_path(str(record["path"]), source):
            plan.remove.append(str(record["path"]))

    total = sum(int(r.get("dependents") or 0) for r in generations)
    plan.status["generations"] = generations
    plan.status["currentGeneration"] = current_gen or None
    plan.status["dependents"] = total
    plan.status["generationsSummary"] = summary(generations, current_gen)
    if current is not None:
        plan.status["path"] = current["path"]
    if source_facts is not None and source_facts.exists:
        plan.status["hosts"] = [{
            "host": host_key, "path": source, "size": source_facts.size, "format": source_facts.vhd_format,
            "vhdType": source_facts.vhd_type,
            "fileSize": source_facts.identity.file_size if source_facts.identity else None,
            "diskIdentifier": source_facts.identity.disk_identifier if source_facts.identity else None,
            "identity": source_facts.identity.text() if source_facts.identity else None, "readAt": stamp}]
        plan.status["size"] = source_facts.identity.file_size if source_facts.identity else None
    plan.stalled = stalled
    plan.ready = stalled is None and not_ready is None and current is not None
    if stalled is not None:
        plan.status["message"] = stalled[1]
    elif not_ready is not None:
        plan.status["message"] = not_ready[1]
    else:
        plan.status["message"] = f"generation {current_gen}: {source}"
    plan.not_ready = not_ready
    return plan


def retained_dependents(status: Mapping[str, Any]) -> list[Dependent]:
    """VMs deleted with deletionPolicy Retain while their disk still chained to an image file: the disk
    stays on the host (and its VM, turned off it may be), so the file is held until an administrator
    removes the entry from status.retained (`kubectl patch --subresource=status`)."""
    out = []
    for key, entry in sorted((status.get("retained") or {}).items()):
        if not isinstance(entry, Mapping):
            continue  # removed (merge patch null) or malformed
        namespace, _, name = str(key).partition("/")
        out.append(Dependent(namespace, f"{name} (retained)", "Retained", str(entry.get("path") or ""),
                             int(entry.get("generation") or 0), str(entry.get("base") or "")))
    return out


def retained_entry(dependent: Dependent, stamp: str) -> dict[str, Any]:
    """status.retained entry (a map keyed "namespace/name", so concurrent merge patches never collide)."""
    entry = {"generation": dependent.generation, "path": dependent.path, "strategy": dependent.strategy, "at": stamp}
    if dependent.base and not _same_path(dependent.base, dependent.path):
        entry["base"] = dependent.base  # its disk chains to a cached copy: that file is held too
    return {f"{dependent.namespace}/{dependent.name}": entry}


def _identity_change(recorded: Identity, seen: FileFacts) -> str | None:
    if not seen.exists or seen.identity is None:
        return "the file is gone"
    now = seen.identity
    if now.disk_identifier.lower() != recorded.disk_identifier.lower():
        return f"DiskIdentifier {recorded.disk_identifier} is now {now.disk_identifier} (file replaced)"
    if now.file_size != recorded.file_size:
        return f"size {recorded.file_size} is now {now.file_size} (file modified)"
    if now.last_write_time != recorded.last_write_time:
        return f"LastWriteTimeUtc {recorded.last_write_time} is now {now.last_write_time} (file written)"
    return None


def _parse(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(str(text).replace("Z", "+00:00"))
    except ValueError:
        return None


def summary(generations: Iterable[Mapping[str, Any]], current: int) -> str:
    """One line for `kubectl get`: each generation with its dependent count, newest first
    ("g2*:1 g1:2 g0:0(collected)"); * marks the current one."""
    parts = []
    for record in sorted(generations, key=lambda r: -int(r["generation"])):
        gen = int(record["generation"])
        text = f"g{gen}{'*' if gen == current else ''}:{int(record.get('dependents') or 0)}"
        if record.get("collected"):
            text += "(collected)"
        elif record.get("identityChanged"):
            text += "(changed)"
        elif record.get("collectable"):
            text += "(collectable)"
        parts.append(text)
    return " ".join(parts)


def mark_collected(status: dict[str, Any], path: str, stamp: str) -> None:
    for record in status.get("generations") or []:
        if _same_path(str(record.get("path") or ""), path):
            record["collected"] = True
            record["collectedAt"] = stamp
            record["collectable"] = False
    status["generationsSummary"] = summary(status.get("generations") or [], int(status.get("currentGeneration") or 0))


def holders_message(dependents: Sequence[Dependent]) -> str:
    names = sorted(f"{d.namespace}/{d.name}" for d in dependents)
    return f"held by {len(names)} VM(s) whose disks chain to its files: {', '.join(names[:20])}"
