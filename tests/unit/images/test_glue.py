"""Image glue: a VM's image from kopf's indices, and the storage confinement of the image's file."""

from __future__ import annotations

from typing import Any

from hyperv_operator.handlers import resolve_host
from hyperv_operator.images.controller import _outside_roots, resolve_vm_image

BASES, VMS = "\\\\FS\\BASES", "\\\\FS\\VMS"
HOST = {"address": "hv", "defaultVmPath": VMS, "storage": {"baseRoots": [BASES], "vmRoots": [VMS]}}
READY = [{"type": "Ready", "status": "True", "reason": "Ready", "message": ""}]


def image(path: str, **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "win"}, "spec": {"source": {"path": path}, **spec},
            "status": {"currentGeneration": 1, "conditions": READY,
                       "generations": [{"generation": 1, "path": path, "identity": "D/1/t"}]}}


def indices(img: dict[str, Any], *, cluster: bool = False) -> dict[str, Any]:
    return {"hosts_by_name": {("team-a", "hv01"): [HOST]},
            "images_by_key": {} if cluster else {("team-a", "win"): [img]},
            "cluster_images_by_key": {"win": [img]} if cluster else {},
            "namespace_labels": {"team-a": [{"t": "1"}]}}


def vm(kind: str | None = None) -> dict[str, Any]:
    return {"hostRef": {"name": "hv01"}, "imageRef": {"name": "win", **({"kind": kind} if kind else {})},
            "strategy": "Differencing"}


def test_a_raw_base_vhd_has_no_image() -> None:
    assert resolve_vm_image("team-a", {"baseVhd": BASES + "\\B.VHDX"}, {}, indices(image(BASES + "\\W.VHDX"))) is None


def test_the_image_is_found_in_the_vms_namespace_only() -> None:
    found = resolve_vm_image("team-a", vm(), {}, indices(image(BASES + "\\W.VHDX")))
    assert found is not None and found.base_path == BASES + "\\W.VHDX" and found.pin is not None
    other = resolve_vm_image("team-b", vm(), {}, indices(image(BASES + "\\W.VHDX")))
    assert other is not None and other.refusal is not None and other.refusal.reason == "ImageNotFound"


def test_a_cluster_image_admits_by_namespace_labels() -> None:
    img = image(BASES + "\\W.VHDX", namespaceSelector={"matchLabels": {"t": "1"}})
    ok = resolve_vm_image("team-a", vm("ClusterVirtualMachineImage"), {}, indices(img, cluster=True))
    assert ok is not None and ok.refusal is None
    refused = resolve_vm_image("team-z", vm("ClusterVirtualMachineImage"), {}, indices(img, cluster=True))
    assert refused is not None and refused.refusal is not None
    assert refused.refusal.reason == "NamespaceNotAdmittedByImage"


def test_the_images_file_is_confined_to_the_vm_hosts_base_roots() -> None:
    # The image resolves, but its file is outside the VM's host's roots: the same refusal as a raw path.
    found = resolve_vm_image("team-a", vm(), {}, indices(image("\\\\attacker\\s\\W.VHDX")))
    assert found is not None and found.base_path is not None
    resolved = resolve_host("team-a", {**vm(), "baseVhd": found.base_path}, indices(image("x")), "ops")
    assert resolved.refusal is not None and resolved.refusal.reason == "BaseOutsideAllowedRoots"


def test_the_image_host_reads_only_inside_its_base_roots() -> None:
    assert _outside_roots(BASES + "\\W.VHDX", HOST) is None
    assert "storage.baseRoots" in str(_outside_roots(VMS + "\\other-team\\disk.vhdx", HOST))
    assert _outside_roots("C:\\Windows\\x.vhdx", HOST) is not None


def test_a_vm_on_another_share_waits_for_its_shares_cached_copy() -> None:
    from hyperv_operator.images.controller import choose_vm_base

    host = {**HOST, "storage": {"baseRoots": [BASES], "vmRoots": [VMS, "\\\\FS2\\FAR", BASES + "\\vms"]}}
    pinned = {"image": {"kind": "VirtualMachineImage", "name": "win", "generation": 1, "path": BASES + "\\W.VHDX",
                        "identity": "D/1/t"}}
    img = indices(image(BASES + "\\W.VHDX"))
    far = choose_vm_base("team-a", {**vm(), "vmPath": "\\\\FS2\\FAR\\vms"}, pinned, host, "team-a/hv01", img)
    # Another share on the same server is another share (\\FS\VMS, the host's default VM path): cached too.
    assert (choose_vm_base("team-a", vm(), pinned, host, "team-a/hv01", img) or far).base is None
    assert far is not None and far.base is None and far.waiting and far.record is not None
    assert far.record["cacheRequest"] == "\\\\FS2\\FAR\\ImageCache\\team-a.win\\g1\\W.VHDX"
    near = choose_vm_base("team-a", {**vm(), "vmPath": BASES + "\\vms"}, pinned, host, "team-a/hv01", img)
    assert near is not None and near.base == BASES + "\\W.VHDX" and near.record == {"base": BASES + "\\W.VHDX"}
    assert choose_vm_base("team-a", vm(), {}, host, "team-a/hv01", img) is None  # not pinned yet


def test_an_image_round_is_due_when_its_dependents_change_and_while_a_cache_copy_runs() -> None:
    from hyperv_operator.images.controller import CACHE_POLL, _Due
    from hyperv_operator.images.model import Dependent

    due = _Due(drift=30.0)
    key = ("VirtualMachineImage", "team-a", "win")
    one = _Due.fingerprint([Dependent("team-a", "a", "Differencing", "p", 1)], {})
    assert due.check(key, one, False, 0.0)  # first tick
    due.done(key, one, 0.0)
    assert not due.check(key, one, False, 5.0)  # nothing changed: no host I/O
    two = _Due.fingerprint([Dependent("team-a", "a", "Differencing", "p", 1),
                            Dependent("team-a", "b", "Differencing", "p", 1, cache_request="c")], {})
    assert due.check(key, two, False, 1.0)  # a VM started depending on it
    copying = _Due.busy({}, {"caches": [{"state": "Copying"}]})
    assert copying and due.check(key, one, copying, CACHE_POLL) and not due.check(key, one, copying, CACHE_POLL / 2)
    assert due.check(key, one, False, 30.0)  # the drift interval
    assert not _Due.busy({}, {"caches": [{"state": "Ready"}, {"state": "Collected"}]})


def test_the_image_timers_idle_ticks_stay_out_of_the_log() -> None:
    import logging

    from hyperv_operator.images.controller import _QuietTicks

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)

    assert not _QuietTicks().filter(record("Timer 'image' succeeded."))
    assert _QuietTicks().filter(record("Timer 'image' failed with an exception. Will retry."))
    assert _QuietTicks().filter(record("Timer 'drift' succeeded."))


def test_a_quick_vm_runs_on_its_shares_ready_cached_copy_inside_a_vm_root() -> None:
    from hyperv_operator.images.controller import choose_vm_base

    # The image's file is in a read-only root: Quick's checkpoint may not land beside it, but may beside
    # the cached copy on the VM's share (inside a vmRoot).
    host = {**HOST, "storage": {"baseRoots": [BASES], "vmRoots": [VMS]}}
    path, cached = BASES + "\\W.VHDX", VMS + "\\ImageCache\\team-a.win\\g1\\W.VHDX"
    pinned = {"image": {"kind": "VirtualMachineImage", "name": "win", "generation": 1, "path": path,
                        "identity": "D/1/t"}}
    quick = {**vm(), "strategy": "Quick"}
    # The tenancy check leaves the decision to the base choice (another share: a cached copy may exist) ...
    assert resolve_host("team-a", {**quick, "baseVhd": path}, indices(image(path)), "ops").refusal is None
    # ... which refuses the image's own file, and records nothing (a later Ready copy is still taken).
    none_yet = choose_vm_base("team-a", quick, pinned, host, "team-a/hv01", indices(image(path)))
    assert none_yet is not None and none_yet.stalled is not None and none_yet.record is None
    assert none_yet.stalled[0] == "QuickCheckpointOutsideAllowedRoots" and cached in none_yet.stalled[1]
    img = image(path)
    img["status"]["caches"] = [{"path": cached, "state": "Ready", "identity": "D/1/other-time"}]
    hit = choose_vm_base("team-a", quick, pinned, host, "team-a/hv01", indices(img))
    assert hit is not None and hit.stalled is None and hit.base == cached and hit.record is not None
    # Pinned to the cached copy: it stays allowed; pinned to the image's file (made before): refused.
    on_cache = {"image": {**pinned["image"], "base": cached}}
    assert (choose_vm_base("team-a", quick, on_cache, host, "team-a/hv01", indices(img)) or none_yet).stalled is None
    on_file = {"image": {**pinned["image"], "base": path}, "vmId": "x"}
    stalled = choose_vm_base("team-a", quick, on_file, host, "team-a/hv01", indices(img))
    assert stalled is not None and stalled.stalled is not None
    assert stalled.stalled[0] == "QuickCheckpointOutsideAllowedRoots"
    # Differencing and Copy write nothing beside their base: no such check.
    diff = choose_vm_base("team-a", {**vm(), "strategy": "Copy"}, pinned, host, "team-a/hv01", indices(img))
    assert diff is not None and diff.stalled is None and diff.base == cached


def test_an_images_quick_vm_on_the_images_own_share_is_refused_by_the_tenancy_check() -> None:
    host = {**HOST, "defaultVmPath": BASES + "\\vms", "storage": {"baseRoots": [BASES + "\\gold"],
                                                                  "vmRoots": [BASES + "\\vms"]}}
    path = BASES + "\\gold\\W.VHDX"
    spec = {**vm(), "strategy": "Quick", "baseVhd": path}
    idx = {**indices(image(path)), "hosts_by_name": {("team-a", "hv01"): [host]}}
    refusal = resolve_host("team-a", spec, idx, "ops").refusal
    assert refusal is not None and refusal.reason == "QuickCheckpointOutsideAllowedRoots"
