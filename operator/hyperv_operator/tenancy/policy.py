"""Who may use a host, and where on it a VM may read and write: one pure decision for a VM.

The admission webhook and the controller both call `check_vm` with what the cluster says (the VM's
spec, its namespace's labels, the host's spec); nothing here talks to a host. A refused VM is never
handed to the engine, so no host command ever carries a refused value.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hyperv_operator.tenancy.paths import PathRefused, WindowsPath, inside_any, parse

HOST_KIND = "HyperVHost"
CLUSTER_HOST_KIND = "ClusterHyperVHost"
HOST_KINDS = (HOST_KIND, CLUSTER_HOST_KIND)


@dataclass(frozen=True)
class HostRef:
    kind: str
    name: str

    @classmethod
    def from_vm_spec(cls, spec: Mapping[str, Any]) -> HostRef:
        ref = spec.get("hostRef") or {}
        return cls(kind=str(ref.get("kind") or HOST_KIND), name=str(ref.get("name") or ""))

    def describe(self, namespace: str) -> str:
        return f"{self.kind} {self.name}" if self.kind == CLUSTER_HOST_KIND else f"{self.kind} {namespace}/{self.name}"

    def key(self, namespace: str) -> str:
        """The host's key in copy slots, metrics, wake-ups and status ("ns/name" or "ClusterHyperVHost/name")."""
        return host_key(self.kind == CLUSTER_HOST_KIND, namespace, self.name)


def host_key(cluster: bool, namespace: str | None, name: str) -> str:
    """The one spelling of a host's key: "ClusterHyperVHost/<name>" or "<namespace>/<name>"."""
    return f"{CLUSTER_HOST_KIND}/{name}" if cluster else f"{namespace}/{name}"


@dataclass(frozen=True)
class Refusal:
    """Why a VM may not (yet) use its host. `reason` is a condition reason (CamelCase)."""

    reason: str
    message: str

    @property
    def host_missing(self) -> bool:
        return self.reason == "HostNotFound"


@dataclass(frozen=True)
class StorageRoots:
    bases: tuple[WindowsPath, ...]
    vms: tuple[WindowsPath, ...]


def _roots(values: Iterable[Any], what: str) -> tuple[WindowsPath, ...]:
    roots = []
    for value in values:
        try:
            roots.append(parse(str(value)))
        except PathRefused as exc:
            raise PathRefused(f"{what}: {exc}") from exc
    return tuple(roots)


def storage_roots(host_spec: Mapping[str, Any]) -> StorageRoots:
    """The host's allowed roots; PathRefused if the host's own configuration is unusable."""
    storage = host_spec.get("storage") or {}
    bases = _roots(storage.get("baseRoots") or (), "storage.baseRoots")
    vms = _roots(storage.get("vmRoots") or (), "storage.vmRoots")
    if not bases or not vms:
        raise PathRefused("the host lists no storage.baseRoots or no storage.vmRoots (nothing is allowed)")
    default = parse(str(host_spec.get("defaultVmPath") or ""))
    if not inside_any(default, vms):
        raise PathRefused(f"defaultVmPath {default} is not inside any of storage.vmRoots")
    return StorageRoots(bases, vms)


def host_problems(host_spec: Mapping[str, Any]) -> list[str]:
    """What is wrong with a host's tenancy settings (empty if usable)."""
    try:
        storage_roots(host_spec)
    except PathRefused as exc:
        return [str(exc)]
    return []


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A Kubernetes LabelSelector: `{}` matches everything, None matches nothing."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), list(expr.get("values") or [])
        present = key in labels
        if op == "In" and not (present and labels[key] in values):
            return False
        if op == "NotIn" and present and labels[key] in values:
            return False
        if op == "Exists" and not present:
            return False
        if op == "DoesNotExist" and present:
            return False
        if op not in ("In", "NotIn", "Exists", "DoesNotExist"):
            return False
    return True


def check_paths(vm_spec: Mapping[str, Any], host_spec: Mapping[str, Any]) -> Refusal | None:
    """Storage confinement: base inside a base root, VM folder (and Quick's checkpoint) inside a VM root.

    An image's Quick VM on another share than the image's file is the one case decided later (the base
    it runs on may be its share's cached copy): see the Quick branch below."""
    try:
        roots = storage_roots(host_spec)
    except PathRefused as exc:
        return Refusal("HostStorageNotConfigured", f"the host cannot take VMs: {exc}")
    try:
        base = parse(str(vm_spec.get("baseVhd") or ""))
    except PathRefused as exc:
        return Refusal("InvalidPath", f"baseVhd {exc}")
    if not inside_any(base, roots.bases):
        return Refusal(
            "BaseOutsideAllowedRoots",
            f"baseVhd {vm_spec.get('baseVhd')!r} is not inside any of the host's storage.baseRoots "
            f"({', '.join(str(r) for r in roots.bases)})",
        )
    vm_path_text = vm_spec.get("vmPath") or host_spec.get("defaultVmPath")
    try:
        vm_path = parse(str(vm_path_text or ""))
    except PathRefused as exc:
        return Refusal("InvalidPath", f"vmPath {exc}")
    if not inside_any(vm_path, roots.vms):
        return Refusal(
            "VmPathOutsideAllowedRoots",
            f"vmPath {vm_path_text!r} is not inside any of the host's storage.vmRoots "
            f"({', '.join(str(r) for r in roots.vms)})",
        )
    if vm_spec.get("strategy") == "Quick":
        if vm_spec.get("imageRef") and _share(vm_path) != _share(base):
            # An image's Quick VM on another share than the image's file may run on its share's cached
            # copy (inside a vmRoot) instead: which base it runs on is decided after this check, with
            # the image's status (images/cache.py), and that base passes `quick_checkpoint` there before
            # any host command. On the image file's own share no cached copy exists: checked here.
            return None
        return quick_checkpoint(str(base), roots)
    return None


def _share(path: WindowsPath) -> tuple[str, ...]:
    return tuple(part.upper() for part in path.root)


def quick_checkpoint(base_text: str, roots: StorageRoots) -> Refusal | None:
    """Quick's checkpoint must land inside a VM root: Checkpoint-VM writes the .avhdx beside the disk the
    VM runs on, i.e. in the folder of its base (the image's file, or a cached copy of it)."""
    try:
        base = parse(base_text)
    except PathRefused as exc:
        return Refusal("InvalidPath", f"base {exc}")
    if inside_any(base.parent, roots.vms):
        return None
    return Refusal(
        "QuickCheckpointOutsideAllowedRoots",
        f"Quick writes its checkpoint (.avhdx) beside the base, in {base.parent}, which is not inside "
        "any of the host's storage.vmRoots; use Differencing or Copy, or a base in a writable root",
    )


def quick_checkpoint_on_host(base_text: str, host_spec: Mapping[str, Any]) -> Refusal | None:
    """`quick_checkpoint` with the host's own roots (a host that lists none refuses)."""
    try:
        roots = storage_roots(host_spec)
    except PathRefused as exc:
        return Refusal("HostStorageNotConfigured", f"the host cannot take VMs: {exc}")
    return quick_checkpoint(base_text, roots)


def check_vm(
    namespace: str,
    vm_spec: Mapping[str, Any],
    host_spec: Mapping[str, Any] | None,
    namespace_labels: Mapping[str, str] | None,
) -> Refusal | None:
    """None if the VM may be provisioned on its host; else why not.

    `host_spec` is the referenced host's spec (None if it does not exist); `namespace_labels` the
    labels of the VM's namespace (only consulted for a ClusterHyperVHost; None if unknown yet).
    """
    ref = HostRef.from_vm_spec(vm_spec)
    if ref.kind not in HOST_KINDS:
        return Refusal("InvalidHostRef", f"hostRef.kind must be one of {', '.join(HOST_KINDS)}, not {ref.kind!r}")
    if host_spec is None:
        return Refusal("HostNotFound", f"waiting for {ref.describe(namespace)} to exist")
    if ref.kind == CLUSTER_HOST_KIND:
        selector = host_spec.get("namespaceSelector")
        if namespace_labels is None or not selector_matches(selector, namespace_labels):
            return Refusal(
                "NamespaceNotAdmitted",
                f"{ref.describe(namespace)} does not admit namespace {namespace} (its namespaceSelector does "
                "not match the namespace's labels)",
            )
    return check_paths(vm_spec, host_spec)
