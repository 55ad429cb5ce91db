"""Image decisions: generations, pins, dependents, collection and identity protection (pure)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hyperv_operator.images import model
from hyperv_operator.images.model import FileFacts, Identity
from hyperv_operator.tenancy.policy import selector_matches

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
G1, G2 = "\\\\FS\\BASES\\WIN-V1.VHDX", "\\\\FS\\BASES\\WIN-V2.VHDX"
ID1 = Identity("AAAAAAAA-0000-0000-0000-000000000001", 9_000, "2026-01-01T10:00:00+00:00")
ID2 = Identity("AAAAAAAA-0000-0000-0000-000000000002", 9_500, "2026-01-01T11:00:00+00:00")


def facts(path: str, identity: Identity | None, vhd_type: str = "Dynamic", parent: str | None = None) -> FileFacts:
    if identity is None:
        return FileFacts(path, exists=False)
    return FileFacts(path, True, identity, 127 * 2**30, "VHDX", vhd_type, parent)


def by_path(*items: FileFacts) -> dict[str, FileFacts]:
    return {f.path.lower(): f for f in items}


def plan(spec: dict[str, Any], status: dict[str, Any], seen: dict[str, FileFacts],
         deps: list[model.Dependent] | None = None, now: datetime = T0, **kw: Any) -> model.ImagePlan:
    return model.plan_image(spec, status, seen, deps or [], now, host_key="hv-test/hv01", **kw)


def dep(name: str, generation: int, path: str = G1, strategy: str = "Differencing") -> model.Dependent:
    return model.Dependent("team", name, strategy, path, generation)


def settle(result: model.ImagePlan) -> dict[str, Any]:
    status = dict(result.status)
    status["conditions"] = [{"type": "Ready", "status": "True" if result.ready else "False",
                             "reason": "Ready", "message": ""}]
    return status


def test_first_read_makes_generation_one_with_the_files_identity() -> None:
    result = plan({"source": {"path": G1}}, {}, by_path(facts(G1, ID1)))
    assert result.ready and result.stalled is None
    assert result.status["currentGeneration"] == 1
    (record,) = result.status["generations"]
    assert record["path"] == G1 and record["identity"] == ID1.text()
    assert result.status["size"] == 9_000 and result.status["hosts"][0]["diskIdentifier"] == ID1.disk_identifier


def test_missing_source_is_not_ready_and_makes_no_generation() -> None:
    result = plan({"source": {"path": G1}}, {}, by_path(facts(G1, None)))
    assert not result.ready and result.not_ready is not None and result.not_ready[0] == "SourceNotFound"
    assert result.status["generations"] == []


def test_differencing_source_and_identity_mismatch_stall() -> None:
    diff = plan({"source": {"path": G1}}, {}, by_path(facts(G1, ID1, "Differencing", "\\\\FS\\BASES\\P.VHDX")))
    assert diff.stalled is not None and diff.stalled[0] == "SourceIsDifferencing"
    wrong = plan({"source": {"path": G1}, "expectedIdentity": {"diskIdentifier": ID2.disk_identifier}}, {},
                 by_path(facts(G1, ID1)))
    assert wrong.stalled is not None and wrong.stalled[0] == "IdentityMismatch" and not wrong.ready


def test_new_source_makes_a_new_generation_and_the_old_one_keeps_its_dependents() -> None:
    first = settle(plan({"source": {"path": G1}}, {}, by_path(facts(G1, ID1))))
    rolled = plan({"source": {"path": G2}, "retention": "Delete"}, first, by_path(facts(G1, ID1), facts(G2, ID2)),
                  [dep("diff-1", 1), dep("quick-1", 1, strategy="Quick")], now=T0 + timedelta(minutes=1))
    assert rolled.status["currentGeneration"] == 2
    g1, g2 = rolled.status["generations"]
    assert g1["dependents"] == 2 and g1["dependentVMs"] == ["team/diff-1", "team/quick-1"]
    assert not g1["collectable"] and rolled.remove == []
    assert g2["path"] == G2 and g2["dependents"] == 0
    assert rolled.status["generationsSummary"] == "g2*:0 g1:2"


def test_superseded_generation_is_collected_only_without_dependents_after_the_grace() -> None:
    first = settle(plan({"source": {"path": G1}}, {}, by_path(facts(G1, ID1))))
    spec = {"source": {"path": G2}, "retention": "Delete"}
    both = by_path(facts(G1, ID1), facts(G2, ID2))
    rolled = settle(plan(spec, first, both, [dep("diff-1", 1)], now=T0 + timedelta(minutes=1)))
    still_held = plan(spec, rolled, both, [dep("diff-1", 1)], now=T0 + timedelta(minutes=5))
    assert still_held.remove == []
    just_released = plan(spec, rolled, both, [], now=T0 + timedelta(minutes=1, seconds=1))
    assert just_released.remove == []  # inside the grace a VM that read the old status may still pin it
    released = plan(spec, rolled, both, [], now=T0 + timedelta(minutes=5))
    assert released.remove == [G1]
    assert released.status["generations"][0]["collectable"] is True
    model.mark_collected(released.status, G1, "2026-01-01T12:05:00Z")
    assert released.status["generationsSummary"] == "g2*:0 g1:0(collected)"
    # collected files are no longer read
    assert model.paths_to_read(spec, released.status) == [G2]


def test_retention_retain_and_namespaced_images_never_remove_files() -> None:
    first = settle(plan({"source": {"path": G1}}, {}, by_path(facts(G1, ID1))))
    both = by_path(facts(G1, ID1), facts(G2, ID2))
    later = T0 + timedelta(minutes=1)
    rolled = settle(plan({"source": {"path": G2}}, first, both, now=later))
    retained = plan({"source": {"path": G2}}, rolled, both, now=later + timedelta(minutes=5))
    assert retained.remove == [] and retained.status["generations"][0]["collectable"] is True
    tenant = plan({"source": {"path": G2}, "retention": "Delete"}, rolled, both, now=later + timedelta(minutes=5),
                  may_delete=False)
    assert tenant.remove == []


def test_the_current_generation_is_never_removed() -> None:
    first = settle(plan({"source": {"path": G1}, "retention": "Delete"}, {}, by_path(facts(G1, ID1))))
    again = plan({"source": {"path": G1}, "retention": "Delete"}, first, by_path(facts(G1, ID1)),
                 now=T0 + timedelta(hours=1))
    assert again.remove == [] and again.status["generations"][0]["collectable"] is False


def test_out_of_band_change_of_a_pinned_file_stalls_and_names_the_vms() -> None:
    first = settle(plan({"source": {"path": G1}}, {}, by_path(facts(G1, ID1))))
    rewritten = Identity(ID1.disk_identifier, ID1.file_size, "2026-01-01T12:30:00+00:00")
    result = plan({"source": {"path": G1}}, first, by_path(facts(G1, rewritten)), [dep("diff-1", 1)])
    assert result.stalled is not None and result.stalled[0] == "BaseIdentityChanged"
    assert "team/diff-1" in result.stalled[1] and "LastWriteTimeUtc" in result.stalled[1]
    assert not result.ready
    assert result.status["generations"][0]["identityChanged"] is True
    assert [e[1] for e in result.events] == ["BaseIdentityChanged"]
    replaced = plan({"source": {"path": G1}}, first, by_path(facts(G1, ID2)), [dep("diff-1", 1)])
    assert replaced.stalled is not None and "file replaced" in replaced.stalled[1]
    # once marked, it stays marked (the event is not repeated)
    again = plan({"source": {"path": G1}}, settle(result), by_path(facts(G1, rewritten)), [dep("diff-1", 1)])
    assert again.stalled is not None and again.events == []


def test_a_superseded_file_removed_by_someone_else_without_dependents_is_just_gone() -> None:
    first = settle(plan({"source": {"path": G1}}, {}, by_path(facts(G1, ID1))))
    rolled = settle(plan({"source": {"path": G2}}, first, by_path(facts(G1, ID1), facts(G2, ID2))))
    gone = plan({"source": {"path": G2}}, rolled, by_path(facts(G1, None), facts(G2, ID2)))
    assert gone.stalled is None and gone.ready and gone.status["generations"][0]["collected"] is True
    held = plan({"source": {"path": G2}}, rolled, by_path(facts(G1, None), facts(G2, ID2)), [dep("d", 1)])
    assert held.stalled is not None and "gone" in held.stalled[1]


def test_dependents_follow_the_strategy() -> None:
    pinned = {"image": {"kind": "VirtualMachineImage", "name": "win", "generation": 1, "path": G1}}
    key = ("VirtualMachineImage", "team", "win")
    diff = model.vm_dependency("team", "a", {"strategy": "Differencing"}, {**pinned, "timings": {"independentAt": "x"}})
    assert diff is not None and diff[0] == key  # a Differencing child chains to its base forever
    assert model.vm_dependency("team", "b", {"strategy": "Quick"}, pinned) is not None
    merged = {**pinned, "timings": {"independentAt": "x"}}
    assert model.vm_dependency("team", "b", {"strategy": "Quick"}, merged) is None
    assert model.vm_dependency("team", "c", {"strategy": "Copy"}, {**pinned, "copy": {"percent": 40}}) is not None
    assert model.vm_dependency("team", "c", {"strategy": "Copy"}, {**pinned, "copy": {"finishedAt": "x"}}) is None
    assert model.vm_dependency("team", "d", {"strategy": "Differencing"}, {}) is None
    cluster = model.vm_dependency("team", "e", {"strategy": "Differencing"},
                                  {"image": {**pinned["image"], "kind": "ClusterVirtualMachineImage"}})
    assert cluster is not None and cluster[0] == ("ClusterVirtualMachineImage", "", "win")


def _image(status: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"name": "win"}, "spec": {"source": {"path": G2}, **spec}, "status": status}


def _resolve(vm_status: dict[str, Any], image: dict[str, Any] | None, *, kind: str = "VirtualMachineImage",
             labels: dict[str, str] | None = None, generation: int = 2) -> model.Resolution:
    spec = {"imageRef": {"name": "win", "kind": kind}, "generation": generation}
    return model.resolve_for_vm("team", spec, vm_status, image, labels or {}, selector_matches=selector_matches)


def test_a_new_vm_pins_the_current_generation_and_an_old_vm_keeps_its_pin() -> None:
    first = settle(plan({"source": {"path": G1}}, {}, by_path(facts(G1, ID1))))
    rolled = settle(plan({"source": {"path": G2}}, first, by_path(facts(G1, ID1), facts(G2, ID2))))
    new = _resolve({}, _image(rolled))
    assert new.refusal is None and new.base_path == G2
    assert new.pin == {"kind": "VirtualMachineImage", "name": "win", "generation": 2, "path": G2,
                       "identity": ID2.text()}
    old = _resolve({"image": {"generation": 1, "path": G1}}, _image(rolled))
    assert old.refusal is None and old.base_path == G1 and old.pin is None
    # the image deleted: a pinned VM still knows its base (deletion cleans up on that path)
    assert _resolve({"image": {"generation": 1, "path": G1}}, None).base_path == G1


def test_vm_refusals() -> None:
    first = settle(plan({"source": {"path": G1}}, {}, by_path(facts(G1, ID1))))
    missing = _resolve({}, None)
    assert missing.refusal is not None and missing.refusal.reason == "ImageNotFound" and missing.refusal.waiting
    not_ready = _resolve({}, _image({}))
    assert not_ready.refusal is not None and not_ready.refusal.reason == "ImageNotReady"
    mismatch = _resolve({}, _image(first, vmGeneration=1))
    assert mismatch.refusal is not None and mismatch.refusal.reason == "ImageGenerationMismatch"
    cluster = _image(first, namespaceSelector={"matchLabels": {"tier": "gold"}})
    refused = _resolve({}, cluster, kind="ClusterVirtualMachineImage", labels={"tier": "free"})
    assert refused.refusal is not None and refused.refusal.reason == "NamespaceNotAdmittedByImage"
    assert not refused.refusal.waiting
    admitted = _resolve({}, cluster, kind="ClusterVirtualMachineImage", labels={"tier": "gold"})
    assert admitted.refusal is None and admitted.base_path == G1
    changed = settle(plan({"source": {"path": G1}}, first, by_path(facts(G1, ID2)), [dep("a", 1)]))
    pinned = _resolve({"image": {"generation": 1, "path": G1}}, _image(changed))
    assert pinned.refusal is not None and pinned.refusal.reason == "BaseIdentityChanged"
    assert pinned.base_path == G1  # deletion may still clean up
    fresh = _resolve({}, _image({**changed, "conditions": [
        {"type": "Stalled", "status": "True", "reason": "BaseIdentityChanged", "message": "m"}]}))
    assert fresh.refusal is not None and fresh.refusal.reason == "BaseIdentityChanged" and fresh.pin is None


def test_a_retained_vms_disk_holds_its_generation_until_an_administrator_releases_it() -> None:
    first = settle(plan({"source": {"path": G1}, "retention": "Delete"}, {}, by_path(facts(G1, ID1))))
    spec = {"source": {"path": G2}, "retention": "Delete"}
    both = by_path(facts(G1, ID1), facts(G2, ID2))
    rolled = settle(plan(spec, first, both, now=T0 + timedelta(minutes=1)))
    entry = model.retained_entry(dep("kept", 1), "2026-01-01T12:02:00Z")
    assert entry == {"team/kept": {"generation": 1, "path": G1, "strategy": "Differencing",
                                   "at": "2026-01-01T12:02:00Z"}}
    held = plan(spec, {**rolled, "retained": entry}, both, now=T0 + timedelta(hours=1))
    assert held.remove == [] and held.status["generations"][0]["dependentVMs"] == ["team/kept (retained)"]
    released = plan(spec, {**rolled, "retained": {"team/kept": None}}, both, now=T0 + timedelta(hours=1))
    assert released.remove == [G1]
