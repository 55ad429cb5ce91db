"""Waking waiting VMs early, and the user annotations kopf would otherwise not see.

A VM waiting for something in the cluster (its host missing or misconfigured, a Secret missing or
wrong, its host unreachable) is retried by kopf: the handler raised `TemporaryError(delay=...)`, kopf
stored `delayed` in the handler's progress record and sleeps. kopf interrupts that sleep when any event
for the VM arrives, but then finds the record still delayed and sleeps again. So an early re-check needs
both an event for the VM and a record that no longer counts as delayed:

- `Wakeups` marks, in this process, the VMs that depend on a HyperVHost, ClusterHyperVHost or Secret
  that was just created or edited (or a host whose probe turned Reachable); the handlers find those VMs
  in an in-memory kopf index of VMs with a delayed handler, keyed by their host, so VMs that depend on
  something else are never touched.
- `Storage`, kopf's progress storage, reports the delayed record of a marked VM as due, so kopf runs the
  handler on the next event for it. The event is one write of kopf's own touch annotation on each
  waiting dependent VM (what kopf itself writes when a retry sleep ends), nothing on the others.

The user-facing annotations (`hyperv-operator.io/retry`, `.../abandon-host-resources`) share the
prefix of kopf's storage, and kopf leaves every annotation under its storage prefix out of an object's
essence, so adding one was no change for kopf. `Storage` and `DiffBase` keep these two in the essence
(kopf's own records stay out): adding or changing one is an update like a spec edit. A handler that is
sleeping at that moment is woken the same way, once per annotation value (`Wakeups.annotation_due`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

import kopf

from hyperv_operator.provisioning.retry import ABANDON_ANNOTATION, RETRY_ANNOTATION

USER_ANNOTATIONS: tuple[str, ...] = (RETRY_ANNOTATION, ABANDON_ANNOTATION)
"""Annotations under kopf's storage prefix that belong to users, not to kopf: kept in the essence."""

MARK_LIFETIME = 120.0
"""Seconds a wake-up mark waits for its VM's handler; a mark for a VM that had no handler due drops."""

SLEEPING_HANDLERS: tuple[str, ...] = ("reconcile", "finalize")
"""The VM handlers that wait for something outside on kopf's retry delay."""


ADMISSION_REASONS: frozenset[str] = frozenset({"NamespaceNotAdmitted", "NamespaceNotAdmittedByImage"})
"""Refusals that a change of the VM's namespace's labels may lift."""


def image_key(kind: str, namespace: str, name: str) -> str:
    """Wake-up key of an image (namespace "" for a ClusterVirtualMachineImage). Host keys are "ns/name"
    or "ClusterHyperVHost/name": no Kubernetes name holds a ':', so the kinds of key never collide."""
    return f"image:{kind}/{namespace}/{name}"


def namespace_key(namespace: str) -> str:
    return f"namespace:{namespace}"


def image_signature(body: Mapping[str, Any]) -> tuple[Any, ...]:
    """What of an image a waiting VM depends on: its spec's generation, Ready/Stalled, the current
    generation of its file, and whether it is being deleted (not timestamps or progress)."""
    meta = body.get("metadata") or {}
    status = body.get("status") or {}
    conditions = {str(c.get("type")): str(c.get("status")) for c in status.get("conditions") or []}
    return (meta.get("generation"), conditions.get("Ready"), conditions.get("Stalled"),
            status.get("currentGeneration"), bool(meta.get("deletionTimestamp")))


class Seen:
    """The last signature seen of each object (per process), to wake dependents only when it changes."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[Any, ...]] = {}

    def changed(self, key: str, signature: tuple[Any, ...] | None) -> bool:
        """Record `signature` (None: the object is gone); True if it differs from the last one seen."""
        previous = self._last.pop(key, None)
        if signature is not None:
            self._last[key] = signature
        return previous != signature


class Wakeups:
    """VM uids due for an early re-check, and the annotation values already acted on (per process)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._marks: dict[str, float] = {}
        self._spent: dict[tuple[str, str], float] = {}

    def mark(self, uid: str) -> None:
        self._marks[uid] = self._clock()

    def marked(self, uid: str) -> bool:
        since = self._marks.get(uid)
        if since is None:
            return False
        if self._clock() - since > MARK_LIFETIME:
            del self._marks[uid]
            return False
        return True

    def annotation_due(self, body: Mapping[str, Any]) -> str | None:
        """A user annotation that asks for action now and was not acted on in this process: the token."""
        meta = body.get("metadata") or {}
        annotations = meta.get("annotations") or {}
        status = body.get("status") or {}
        uid = str(meta.get("uid") or "")
        token = None
        if meta.get("deletionTimestamp") and str(annotations.get(ABANDON_ANNOTATION, "")).lower() == "true":
            token = "abandon"
        else:
            value = str(annotations.get(RETRY_ANNOTATION) or "")
            if value and value != status.get("retryRequest"):
                token = f"retry={value}"
        if token is None or (uid, token) in self._spent:
            return None
        return token

    def due(self, body: Mapping[str, Any]) -> bool:
        uid = str((body.get("metadata") or {}).get("uid") or "")
        return self.marked(uid) or self.annotation_due(body) is not None

    def consume(self, body: Mapping[str, Any]) -> None:
        """The VM's handler runs now: its mark and its pending annotation are acted on."""
        uid = str((body.get("metadata") or {}).get("uid") or "")
        self._marks.pop(uid, None)
        token = self.annotation_due(body)
        now = self._clock()
        if token is not None:
            self._spent[(uid, token)] = now
        if len(self._spent) > 4096:  # a spent token only needs to outlive its value's handling
            self._spent = {k: t for k, t in self._spent.items() if now - t < 3600}


def _keep(essence: Mapping[str, Any], body: Mapping[str, Any], names: Iterable[str]) -> kopf.BodyEssence:
    annotations = dict((body.get("metadata") or {}).get("annotations") or {})
    kept = {name: annotations[name] for name in names if name in annotations}
    if not kept:
        return essence  # type: ignore[return-value]
    result: dict[str, Any] = dict(essence)
    metadata = dict(result.get("metadata") or {})
    metadata["annotations"] = {**dict(metadata.get("annotations") or {}), **kept}
    result["metadata"] = metadata
    return result  # type: ignore[return-value]


class Storage(kopf.AnnotationsProgressStorage):
    """kopf's annotation progress storage, with early wake-ups and the user annotations kept in the essence."""

    def __init__(self, *, prefix: str, wakeups: Wakeups) -> None:
        super().__init__(prefix=prefix)
        self.wakeups = wakeups
        self.user_annotations = USER_ANNOTATIONS

    def fetch(self, *, key: Any, body: kopf.Body) -> Any:
        record = super().fetch(key=key, body=body)
        if (record is not None and record.get("delayed") and not record.get("success")
                and not record.get("failure") and str(key) in SLEEPING_HANDLERS
                and self.wakeups.due(body)):
            return {**record, "delayed": None}  # due now: kopf runs it on this event
        return record

    def clear(self, *, essence: kopf.BodyEssence) -> kopf.BodyEssence:
        return _keep(super().clear(essence=essence), essence, self.user_annotations)

    def sleeping(self, body: kopf.Body) -> bool:
        """A VM handler waits on kopf's retry delay (the raw record, wake-ups aside)."""
        for handler in SLEEPING_HANDLERS:
            record = super().fetch(key=kopf.HandlerId(handler), body=body)
            if record is not None and record.get("delayed") and not record.get("success") \
                    and not record.get("failure"):
                return True
        return False

    def touch_keys(self, body: kopf.Body) -> Collection[str]:
        return list(self.make_keys(self.touch_key, body=body))


class DiffBase(kopf.AnnotationsDiffBaseStorage):
    """kopf's annotation diff-base storage, keeping the user annotations in the essence."""

    def __init__(self, *, prefix: str, key: str) -> None:
        super().__init__(prefix=prefix, key=key)
        self.user_annotations = USER_ANNOTATIONS

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        return _keep(super().build(body=body, extra_fields=extra_fields), body, self.user_annotations)
