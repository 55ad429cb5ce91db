"""The per-share image cache's pure decisions (images/cache.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hyperv_operator.images import cache
from hyperv_operator.images.model import COLLECT_GRACE, Dependent, FileFacts, Identity
from hyperv_operator.provisioning.observation import CopyJob

NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
SOURCE = "\\\\FS\\BASES\\win.vhdx"
IMAGE = ("ClusterVirtualMachineImage", "", "win")
ROOTS = ["\\\\FS2\\VMS\\team", "\\\\FS2\\VMS", "\\\\FS\\BASES\\vms", "D:\\VMs"]
CACHED = "\\\\FS2\\VMS\\team\\ImageCache\\cluster.win\\g3\\win.vhdx"
ID = Identity("DISK-1", 5000, "2026-01-01T00:00:00+00:00")
GENERATION = {"generation": 3, "path": SOURCE, "identity": ID.text()}


def _dep(name: str, *, base: str = "", request: str = "") -> Dependent:
    return Dependent("ns", name, "Differencing", SOURCE, 3, base, request, "ClusterHyperVHost/h")


def _pinned(**extra: Any) -> dict[str, Any]:
    return {"kind": IMAGE[0], "name": "win", "generation": 3, "path": SOURCE, "identity": ID.text(), **extra}


def test_share_is_the_unc_prefix_or_the_drive() -> None:
    assert cache.share_of("\\\\fs2\\vms\\a\\b.vhdx") == "\\\\FS2\\VMS"
    assert cache.share_of("d:\\VMs\\x") == "D:"
    assert cache.share_of("relative\\x") is None
    assert cache.same_share("\\\\FS\\A\\x", "\\\\fs\\a\\y") and not cache.same_share("\\\\FS\\A\\x", "\\\\FS\\B\\x")


def test_the_cache_lives_under_the_outermost_vm_root_on_the_vms_share() -> None:
    target = cache.cache_target(IMAGE, 3, SOURCE, "\\\\FS2\\VMS\\other\\vms", ROOTS, "ClusterHyperVHost/h")
    assert target is not None and target.share == "\\\\FS2\\VMS"
    assert target.path == "\\\\FS2\\VMS\\ImageCache\\cluster.win\\g3\\win.vhdx"
    # A host whose first root there differs, both listing the share's root: the same copy.
    other = cache.cache_target(IMAGE, 3, SOURCE, "\\\\FS2\\VMS\\b", ["\\\\FS2\\VMS\\b", "\\\\FS2\\VMS"], "h2")
    assert other is not None and other.path == target.path
    local = cache.cache_target(("VirtualMachineImage", "team", "win"), 1, SOURCE, "D:\\VMs\\a", ROOTS, "team/h")
    assert local is not None and local.path == "D:\\VMs\\ImageCache\\team.win\\g1\\win.vhdx"
    # Same share as the image's file: no cache. No allowed root around the VM's folder: none either.
    assert cache.cache_target(IMAGE, 3, SOURCE, "\\\\FS\\BASES\\vms\\a", ROOTS, "h") is None
    assert cache.cache_target(IMAGE, 3, SOURCE, "E:\\VMs", ROOTS, "h") is None


def test_choose_base_differencing_waits_for_its_shares_cache_and_asks_once() -> None:
    target = cache.CacheTarget(CACHED, "\\\\FS2\\VMS", "ClusterHyperVHost/h")
    first = cache.choose_base(_pinned(), "Differencing", False, target, {"caches": []})
    assert first.base is None and first.waiting and first.hit is False
    assert first.record == {"cacheRequest": CACHED, "cacheHost": "ClusterHyperVHost/h"}
    copying = {"caches": [{"path": CACHED, "state": cache.COPYING, "percent": 40, "bytesCopied": 2000,
                           "bytesTotal": 5000}]}
    again = cache.choose_base(_pinned(cacheRequest=CACHED), "Differencing", False, target, copying)
    assert again.base is None and again.record is None and again.hit is None and "40%" in str(again.waiting)
    ready = {"caches": [{"path": CACHED, "state": cache.READY, "identity": "DISK-1/5000/later"}]}
    used = cache.choose_base(_pinned(cacheRequest=CACHED), "Differencing", False, target, ready)
    assert used.base == CACHED and used.record == {"base": CACHED, "cacheRequest": None}


def test_a_cache_whose_content_is_not_the_generations_is_never_used() -> None:
    target = cache.CacheTarget(CACHED, "\\\\FS2\\VMS", "h")
    other = {"caches": [{"path": CACHED, "state": cache.READY, "identity": "DISK-2/5000/t"}]}
    assert cache.choose_base(_pinned(), "Differencing", False, target, other).base is None
    shorter = {"caches": [{"path": CACHED, "state": cache.READY, "identity": "DISK-1/4000/t"}]}
    assert cache.choose_base(_pinned(), "Differencing", False, target, shorter).base is None


def test_quick_and_copy_never_wait_and_use_a_ready_cache() -> None:
    target = cache.CacheTarget(CACHED, "\\\\FS2\\VMS", "h")
    for strategy in ("Quick", "Copy"):
        miss = cache.choose_base(_pinned(), strategy, False, target, {})
        assert miss.base == SOURCE and miss.record == {"base": SOURCE} and miss.hit is False
        hit = cache.choose_base(_pinned(), strategy, False, target,
                                {"caches": [{"path": CACHED, "state": cache.READY, "identity": ID.text()}]})
        assert hit.base == CACHED and hit.hit is True


def test_a_recorded_base_is_kept_and_a_vm_with_host_work_keeps_the_images_file() -> None:
    target = cache.CacheTarget(CACHED, "\\\\FS2\\VMS", "h")
    assert cache.choose_base(_pinned(base=CACHED), "Differencing", False, target, None) == cache.BaseChoice(CACHED)
    started = cache.choose_base(_pinned(), "Differencing", True, target, {})
    assert started.base == SOURCE and started.record == {"base": SOURCE}
    assert cache.choose_base(_pinned(), "Differencing", False, None, {}).base == SOURCE
    changed = {"caches": [{"path": CACHED, "state": cache.CHANGED, "message": "x"}]}
    stalled = cache.choose_base(_pinned(base=CACHED), "Differencing", False, target, changed)
    assert stalled.stalled is not None and stalled.stalled[0] == "BaseIdentityChanged"


def test_wanted_counts_requests_and_users_per_cache() -> None:
    want = cache.wanted([_dep("a", request=CACHED), _dep("b", base=CACHED), _dep("c", base=SOURCE), _dep("d")])
    assert list(want) == [CACHED.lower()]
    item = want[CACHED.lower()]
    assert [d.name for d in item.requesters] == ["a"] and [d.name for d in item.users] == ["b"]
    assert item.host == "ClusterHyperVHost/h" and item.generation == 3


def _entry(**extra: Any) -> dict[str, Any]:
    return {"path": CACHED, "share": "\\\\FS2\\VMS", "generation": 3, "source": SOURCE, "host": "h",
            "state": cache.PENDING, **extra}


def _item(*, requesters: tuple[Dependent, ...] = (), users: tuple[Dependent, ...] = ()) -> cache.Wanted:
    return cache.Wanted(CACHED, 3, "h", requesters, users)


def _kinds(step: cache.CacheStep) -> list[str]:
    assert step.action is not None
    return [s.commands[0].name for s in step.action.statements]


def test_a_requested_cache_takes_a_slot_then_starts_one_background_copy() -> None:
    nothing = cache.CacheFacts(exists=False)
    ask = cache.plan_entry(_entry(), _item(requesters=(_dep("a"),)), GENERATION, nothing, NOW)
    assert ask.wants_slot and ask.action is None
    queued = cache.plan_entry(_entry(), _item(requesters=(_dep("a"),)), GENERATION, nothing, NOW,
                              slot_granted=False, slot_position=2)
    assert queued.entry["state"] == cache.QUEUED and queued.entry["queuePosition"] == 2 and queued.slot == "queued"
    start = cache.plan_entry(_entry(), _item(requesters=(_dep("a"),)), GENERATION, nothing, NOW, slot_granted=True)
    assert start.action is not None and start.action.starts_copy and start.slot == "take"
    assert start.entry["state"] == cache.COPYING
    assert "New-Item" in _kinds(start)[0] and len(start.action.statements) == 2
    script = start.action.statements[-1].commands[0]
    assert script.parameter("Source") == SOURCE and script.parameter("Destination") == CACHED
    assert script.parameter("PartialPath") == CACHED + ".partial"


def test_a_running_copy_reports_progress_and_holds_its_slot() -> None:
    job = CopyJob("Running", 2500, 5000, 77, started_at="s")
    facts = cache.CacheFacts(exists=False, partial_exists=True, status_exists=True, job=job, worker_alive=True)
    step = cache.plan_entry(_entry(state=cache.COPYING), _item(requesters=(_dep("a"),)), GENERATION, facts, NOW)
    assert step.action is None and step.slot == "hold"
    assert step.entry["percent"] == 50 and step.entry["processId"] == 77 and step.entry["waiting"] == 1


def test_a_lost_worker_is_restarted_and_the_partial_copy_removed() -> None:
    job = CopyJob("Running", 2500, 5000, 77)
    facts = cache.CacheFacts(exists=False, partial_exists=True, status_exists=True, job=job, worker_alive=False)
    step = cache.plan_entry(_entry(state=cache.COPYING), _item(requesters=(_dep("a"),)), GENERATION, facts, NOW)
    assert step.action is not None and step.action.kind == "RestartCacheCopy"
    removed = [s.commands[0].parameter("LiteralPath") for s in step.action.statements]
    assert removed == [CACHED + ".copy.json", CACHED + ".partial"]  # not stopped: it is not our worker
    assert step.entry["state"] == cache.PENDING and step.entry["attempts"] == 1
    final = cache.plan_entry(_entry(state=cache.COPYING, attempts=2), _item(requesters=(_dep("a"),)), GENERATION,
                             facts, NOW)
    assert final.entry["state"] == cache.FAILED


def test_a_finished_copy_is_verified_before_it_is_ready() -> None:
    done = cache.CacheFacts(exists=True, status_exists=True, job=CopyJob("Completed", 5000, 5000, 77))
    tidy = cache.plan_entry(_entry(state=cache.COPYING), _item(requesters=(_dep("a"),)), GENERATION, done, NOW)
    assert tidy.action is not None and tidy.action.kind == "RemoveCopyStatus"
    assert tidy.entry["state"] == cache.COPYING  # not usable until verified
    copy = Identity("DISK-1", 5000, "2026-01-01T12:00:00+00:00")  # a copy's write time is its own
    whole = cache.CacheFacts(exists=True, file=FileFacts(CACHED, True, copy))
    ready = cache.plan_entry(_entry(state=cache.COPYING), _item(requesters=(_dep("a"),)), GENERATION, whole, NOW)
    assert ready.entry["state"] == cache.READY and ready.entry["identity"] == copy.text()
    assert ready.entry["bytes"] == 5000 and ready.events[0][:2] == ("Normal", "CacheReady")
    # Verified and tidied in one step (Ready once the bookkeeping files are removed).
    both = cache.CacheFacts(exists=True, partial_exists=False, status_exists=True,
                            job=CopyJob("Completed", 5000, 5000, 77), file=FileFacts(CACHED, True, copy))
    one = cache.plan_entry(_entry(state=cache.COPYING), _item(requesters=(_dep("a"),)), GENERATION, both, NOW)
    assert one.entry["state"] == cache.READY and one.action is not None and one.action.kind == "RemoveCopyStatus"
    # Renamed but the worker's final status not written yet: tidy only, verify next round.
    racing = cache.CacheFacts(exists=True, status_exists=True, job=CopyJob("Running", 4000, 5000, 77))
    early = cache.plan_entry(_entry(state=cache.COPYING), _item(requesters=(_dep("a"),)), GENERATION, racing, NOW)
    assert early.entry["state"] == cache.COPYING and early.action is not None
    wrong = cache.CacheFacts(exists=True, file=FileFacts(CACHED, True, Identity("DISK-9", 5000, "t")))
    bad = cache.plan_entry(_entry(state=cache.COPYING), _item(requesters=(_dep("a"),)), GENERATION, wrong, NOW)
    assert bad.action is not None and bad.action.kind == "RemoveMismatchedCache"
    assert bad.entry["state"] != cache.READY


def test_the_cache_is_collected_after_its_last_user_and_the_grace_not_before() -> None:
    copy = Identity("DISK-1", 5000, "t")
    facts = cache.CacheFacts(exists=True, file=FileFacts(CACHED, True, copy))
    ready = _entry(state=cache.READY, identity=copy.text(), bytes=5000)
    used = cache.plan_entry(ready, _item(users=(_dep("b", base=CACHED),)), GENERATION, facts, NOW)
    assert used.action is None and used.entry["dependents"] == 1 and not used.entry.get("unusedSince")
    first = cache.plan_entry(ready, None, GENERATION, facts, NOW)
    assert first.action is None and first.entry["unusedSince"]
    early = cache.plan_entry(first.entry, None, GENERATION, facts, NOW + COLLECT_GRACE / 2)
    assert early.action is None
    late = cache.plan_entry(first.entry, None, GENERATION, facts, NOW + COLLECT_GRACE + timedelta(seconds=1))
    assert late.action is not None and late.action.kind == "CollectCache" and late.entry["state"] == cache.COLLECTED
    assert late.collected_bytes == 5000
    # Asked for again after collection: copied again.
    again = cache.plan_entry(late.entry, _item(requesters=(_dep("c"),)), GENERATION, cache.CacheFacts(False), NOW)
    assert again.wants_slot


def test_a_ready_cache_changed_out_of_band_is_flagged() -> None:
    ready = _entry(state=cache.READY, identity=Identity("DISK-1", 5000, "t").text())
    facts = cache.CacheFacts(exists=True, file=FileFacts(CACHED, True, Identity("DISK-1", 5000, "t2")))
    step = cache.plan_entry(ready, _item(users=(_dep("b", base=CACHED),)), GENERATION, facts, NOW)
    assert step.entry["state"] == cache.CHANGED and step.events[0][1] == "CacheIdentityChanged"
    assert step.action is None  # a file VMs chain to is never removed


def test_a_failed_cache_stalls_its_waiting_vms_and_is_tried_again_later() -> None:
    job = CopyJob("Failed", 0, 5000, 77, error="There is not enough space on the disk.")
    facts = cache.CacheFacts(exists=False, partial_exists=True, status_exists=True, job=job)
    step = cache.plan_entry(_entry(state=cache.COPYING, attempts=2), _item(requesters=(_dep("a"),)), GENERATION,
                            facts, NOW)
    assert step.action is not None and step.action.kind == "RemoveFailedCopy"
    assert step.entry["state"] == cache.FAILED and "not enough space" in step.entry["lastError"]
    target = cache.CacheTarget(CACHED, "\\\\FS2\\VMS", "h")
    stalled = cache.choose_base(_pinned(cacheRequest=CACHED), "Differencing", False, target,
                                {"caches": [step.entry]})
    assert stalled.base is None and stalled.stalled is not None and stalled.stalled[0] == "ImageCacheFailed"
    nothing = cache.CacheFacts(exists=False)
    soon = cache.plan_entry(step.entry, _item(requesters=(_dep("a"),)), GENERATION, nothing, NOW)
    assert soon.entry["state"] == cache.FAILED and not soon.wants_slot
    later = cache.plan_entry(step.entry, _item(requesters=(_dep("a"),)), GENERATION, nothing,
                             NOW + cache.RETRY_FAILED_AFTER)
    assert later.wants_slot and later.entry["attempts"] == 0


def test_a_retained_vm_on_a_cached_copy_keeps_the_cached_copy() -> None:
    from hyperv_operator.images.model import retained_dependents, retained_entry, vm_dependency

    spec = {"strategy": "Differencing", "hostRef": {"kind": "ClusterHyperVHost", "name": "h"}}
    found = vm_dependency("ns", "kept", spec, {"image": _pinned(base=CACHED)})
    assert found is not None and found[1].base == CACHED and found[1].host == "ClusterHyperVHost/h"
    status = {"retained": retained_entry(found[1], "2026-01-01T00:00:00Z")}
    want = cache.wanted(retained_dependents(status))
    assert [d.name for d in want[CACHED.lower()].users] == ["kept (retained)"]


def test_a_cache_whose_host_was_deleted_mid_copy_says_so_and_goes_with_its_last_dependent() -> None:
    copying = _entry(state=cache.COPYING, percent=40, processId=77, host="ClusterHyperVHost/gone")
    waiting = _item(requesters=(_dep("a"),))
    # A worker may still run on that machine: no other host takes the copy over, even one that is alive.
    kept = cache.orphaned(copying, waiting, "ClusterHyperVHost/gone", ["ClusterHyperVHost/other"])
    assert kept.host is None and kept.entry is not None and kept.entry["state"] == cache.HOST_GONE
    message = kept.entry["message"]
    assert "ClusterHyperVHost/gone was deleted" in message and "Copying" in message
    assert cache.partial_of(CACHED) in message and cache.status_of(CACHED) in message
    assert kept.entry["waiting"] == 1 and kept.entry.get("processId") is None
    assert [e[1] for e in kept.events] == ["CacheHostGone"]
    # Said once; its waiting VMs are Stalled with the reason (nothing will make the copy).
    again = cache.orphaned(kept.entry, waiting, "ClusterHyperVHost/gone", [])
    assert again.entry is not None and again.entry["message"] == message and not again.events
    target = cache.CacheTarget(CACHED, "\\\\FS2\\VMS", "ClusterHyperVHost/gone")
    stalled = cache.choose_base(_pinned(cacheRequest=CACHED), "Differencing", False, target,
                                {"caches": [again.entry]})
    assert stalled.base is None and stalled.stalled is not None and stalled.stalled[0] == "ImageCacheHostGone"
    # No VM depends on it any more: the entry is dropped, and the event names the files left on the share.
    dropped = cache.orphaned(again.entry, None, "ClusterHyperVHost/gone", [])
    assert dropped.entry is None and dropped.events[0][:2] == ("Warning", "LeftOnHost")
    assert CACHED in dropped.events[0][2] and cache.partial_of(CACHED) in dropped.events[0][2]
    # The host is back (re-created): the cache goes on from its state by what the host shows.
    running = cache.CacheFacts(exists=False, partial_exists=True, status_exists=True,
                               job=CopyJob("Running", 3000, 5000, 77), worker_alive=True)
    resumed = cache.plan_entry(again.entry, waiting, GENERATION, running, NOW)
    assert resumed.entry["state"] == cache.COPYING and resumed.action is None and resumed.slot == "hold"
    assert "stateBeforeHostGone" not in {k for k, v in resumed.entry.items() if v is not None}


def test_a_ready_cache_whose_host_was_deleted_is_checked_through_a_live_dependents_host() -> None:
    ready = _entry(state=cache.READY, identity=ID.text(), host="ClusterHyperVHost/gone")
    users = _item(users=(_dep("a", base=CACHED),))
    moved = cache.orphaned(ready, users, "ClusterHyperVHost/gone", ["ClusterHyperVHost/h"])
    assert moved.host == "ClusterHyperVHost/h" and moved.entry is not None
    assert moved.entry["host"] == "ClusterHyperVHost/h" and moved.entry["state"] == cache.READY
    # No live host among its dependents: it says so and stays (usable by the VMs already on it).
    alone = cache.orphaned(ready, users, "ClusterHyperVHost/gone", [])
    assert alone.entry is not None and alone.entry["state"] == cache.HOST_GONE and alone.entry["dependents"] == 1
    assert cache.partial_of(CACHED) not in alone.entry["message"]  # a whole copy has no partial


def test_a_host_joins_a_cached_copy_on_its_share_only_inside_its_own_roots() -> None:
    status = {"caches": [{"path": CACHED, "generation": 3, "state": cache.COPYING},
                         {"path": CACHED.replace("g3", "g2"), "generation": 2, "state": cache.READY}]}
    known = cache.known_paths(_pinned(), status, 3)
    assert known == [CACHED]
    # Another host made it under \\FS2\VMS\team, which this host's roots allow: joined, not copied again.
    joined = cache.cache_target(IMAGE, 3, SOURCE, "\\\\FS2\\VMS\\b", ["\\\\FS2\\VMS\\b", "\\\\FS2\\VMS\\team"], "h2",
                                known)
    assert joined is not None and joined.path == CACHED
    # A host that may not write there gets its own copy, inside its own root.
    own = cache.cache_target(IMAGE, 3, SOURCE, "\\\\FS2\\VMS\\b", ["\\\\FS2\\VMS\\b"], "h2", known)
    assert own is not None and own.path == "\\\\FS2\\VMS\\b\\ImageCache\\cluster.win\\g3\\win.vhdx"
    # A failed, changed or collected copy is not joined; a VM's own request is kept while it waits.
    for state in (cache.FAILED, cache.CHANGED, cache.COLLECTED, cache.HOST_GONE):
        assert cache.known_paths(_pinned(), {"caches": [{"path": CACHED, "generation": 3, "state": state}]}, 3) == []
    assert cache.known_paths(_pinned(cacheRequest=CACHED), {"caches": []}, 3) == [CACHED]
