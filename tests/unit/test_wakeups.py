"""Early wake-ups of waiting VMs and the user annotations in kopf's essence (wakeups.py)."""

from __future__ import annotations

import json
import logging
from typing import Any

import kopf

from hyperv_operator.provisioning.settle import refused
from hyperv_operator.wakeups import MARK_LIFETIME, DiffBase, Seen, Storage, Wakeups, image_signature

PREFIX = "hyperv-operator.io"
DELAYED = json.dumps({"started": "2026-11-26T08:00:00.000000+00:00", "delayed": "2999-01-01T00:00:00.000000+00:00",
                      "retries": 1})


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _vm(uid: str = "u1", annotations: dict[str, str] | None = None, status: dict[str, Any] | None = None,
        deleting: bool = False) -> kopf.Body:
    meta: dict[str, Any] = {"uid": uid, "name": "vm", "namespace": "ns",
                            "annotations": {f"{PREFIX}/reconcile": DELAYED, f"{PREFIX}/finalize": DELAYED,
                                            f"{PREFIX}/kopf-managed": "yes", **(annotations or {})}}
    if deleting:
        meta["deletionTimestamp"] = "2026-11-26T08:00:00Z"
    return kopf.Body({"metadata": meta, "spec": {"strategy": "Copy"}, "status": status or {}})


def test_a_marked_vm_has_its_sleeping_handler_reported_due_once() -> None:
    clock = Clock()
    wakeups = Wakeups(clock)
    storage = Storage(prefix=PREFIX, wakeups=wakeups)
    body = _vm()
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=body)["delayed"]  # sleeping: not due
    assert storage.sleeping(body)
    wakeups.mark("u1")
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=body)["delayed"] is None
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=_vm(uid="u2"))["delayed"]  # not another VM
    wakeups.consume(body)  # the handler ran
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=body)["delayed"]


def test_a_mark_whose_vm_never_ran_expires() -> None:
    clock = Clock()
    wakeups = Wakeups(clock)
    wakeups.mark("u1")
    clock.now += MARK_LIFETIME + 1
    assert not wakeups.marked("u1")


def test_a_finished_handler_is_never_woken() -> None:
    wakeups = Wakeups()
    storage = Storage(prefix=PREFIX, wakeups=wakeups)
    done = json.dumps({"started": "2026-11-26T08:00:00+00:00", "success": True})
    body = _vm(annotations={f"{PREFIX}/reconcile": done})
    wakeups.mark("u1")
    assert storage.fetch(key=kopf.HandlerId("reconcile"), body=body) == json.loads(done)


def test_a_new_retry_value_wakes_once_and_a_handled_one_not_at_all() -> None:
    wakeups = Wakeups()
    fresh = _vm(annotations={f"{PREFIX}/retry": "2"}, status={"retryRequest": "1"})
    handled = _vm(annotations={f"{PREFIX}/retry": "1"}, status={"retryRequest": "1"})
    assert wakeups.due(fresh) and not wakeups.due(handled)
    wakeups.consume(fresh)
    assert not wakeups.due(fresh)  # the step may not have written retryRequest (refused): no hot loop


def test_the_abandon_annotation_wakes_a_sleeping_deletion_only() -> None:
    wakeups = Wakeups()
    abandon = {f"{PREFIX}/abandon-host-resources": "true"}
    assert wakeups.due(_vm(annotations=abandon, deleting=True))
    assert not wakeups.due(_vm(annotations=abandon))


def test_user_annotations_are_in_kopfs_essence_and_kopfs_own_records_are_not() -> None:
    storage = Storage(prefix=PREFIX, wakeups=Wakeups())
    diffbase = DiffBase(prefix=PREFIX, key="last-handled-configuration")
    body = _vm(annotations={f"{PREFIX}/retry": "now", f"{PREFIX}/touch-dummy": "x", "team": "a"})
    essence = storage.clear(essence=diffbase.build(body=body))
    annotations = essence["metadata"]["annotations"]
    assert annotations == {f"{PREFIX}/retry": "now", "team": "a"}
    plain = kopf.AnnotationsProgressStorage(prefix=PREFIX).clear(
        essence=kopf.AnnotationsDiffBaseStorage(prefix=PREFIX).build(body=body))
    assert f"{PREFIX}/retry" not in plain["metadata"]["annotations"]  # what kopf alone did


def test_a_waiting_vm_may_wait_longer_than_the_backoff_but_never_shorter_than_the_floor() -> None:
    from datetime import UTC, datetime
    now = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
    short = refused({}, 1, "HostNotFound", "waiting", now, retry=10.0, key="u")
    assert short.requeue_after is not None and short.requeue_after <= 2.0
    long = refused({}, 1, "HostNotFound", "waiting", now, retry=10.0, key="u", floor=120.0)
    assert long.requeue_after == 120.0


def _image(ready: str, *, generation: int = 1, current: int = 1, progress: int = 0) -> dict[str, Any]:
    return {"metadata": {"generation": generation},
            "status": {"currentGeneration": current, "progress": progress, "lastCheckTime": f"t{progress}",
                       "conditions": [{"type": "Ready", "status": ready, "lastTransitionTime": f"t{progress}"}]}}


def test_an_image_wakes_its_waiting_vms_only_when_what_they_wait_for_changes() -> None:
    seen = Seen()
    assert seen.changed("image:a", image_signature(_image("False")))  # first sight
    assert not seen.changed("image:a", image_signature(_image("False", progress=5)))  # progress, timestamps
    assert seen.changed("image:a", image_signature(_image("True", progress=6)))  # Ready now
    assert seen.changed("image:a", image_signature(_image("True", current=2)))  # a new generation
    assert seen.changed("image:a", image_signature(_image("True", generation=2, current=2)))  # spec edited
    assert seen.changed("image:a", None)  # deleted: forgotten
    assert not seen.changed("image:a", None)
    assert not seen.changed("namespace:ns", None)


def test_the_wake_handlers_idle_runs_stay_out_of_the_log() -> None:
    from hyperv_operator.handlers import QuietWakeHandlers

    def record(message: str) -> logging.LogRecord:
        return logging.LogRecord("kopf.objects", logging.INFO, __file__, 1, message, None, None)

    quiet = QuietWakeHandlers()
    assert not quiet.filter(record("Handler 'image-wake' succeeded."))
    assert not quiet.filter(record("Handler 'namespace-wake' succeeded."))
    assert quiet.filter(record("Handler 'image-wake' failed with an exception. Will retry."))
    assert quiet.filter(record("Handler 'secrets' succeeded."))
