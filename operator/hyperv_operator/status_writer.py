"""A VirtualMachine's status written by the operator itself, and its metadata watched (I/O edge of handlers.py).

One writer: every engine step writes its status while it holds the VM's lock, as a merge patch of the
status it planned on, guarded by that status's resourceVersion. A write planned on a status that is
not the server's any more is refused (409) instead of merged onto a newer status, where its merge
patch would miss the keys that newer status added (a removed field would come back). kopf's own patch
at handler return then carries only its annotations.

The metadata watch (`KubeVmWatch`): kopf handles one object's events one at a time, so while a handler
call goes on through short waits, a deletion or spec edit of that VM waits in kopf's queue. A
metadata-only watch of the VirtualMachines (no spec, no status: small events) tells the call to hand
back at once.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from hyperv_operator import api

logger = logging.getLogger("hyperv_operator.status_writer")


def apply_merge_patch(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """RFC 7386: `target` with `patch` applied (None removes a key; mappings merge)."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(result.get(key), Mapping):
            result[key] = apply_merge_patch(result[key], value)
        elif isinstance(value, Mapping):
            result[key] = apply_merge_patch({}, value)
        else:
            result[key] = value
    return result


class StatusConflict(Exception):
    """The object's resourceVersion is not the one the write was planned on (HTTP 409)."""


class StatusGone(Exception):
    """The object does not exist any more (HTTP 404)."""


class Written:
    """The object as the API server returned it after a status write or read."""

    __slots__ = ("metadata", "resource_version", "status")

    def __init__(self, obj: Mapping[str, Any]) -> None:
        self.metadata: dict[str, Any] = dict(obj.get("metadata") or {})
        self.resource_version = str(self.metadata.get("resourceVersion") or "")
        self.status: dict[str, Any] = dict(obj.get("status") or {})


class StatusWriter(Protocol):
    async def write(self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str) -> Written:
        """Merge-patches the status if the object is still at `resource_version` (StatusConflict if not;
        an empty `resource_version`: unguarded)."""

    async def read(self, namespace: str, name: str) -> Written:
        """The object as it is now."""


def _kube_custom() -> Any:
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    return kubernetes.client.CustomObjectsApi()


def _translate(exc: Exception) -> Exception:
    status = getattr(exc, "status", None)
    if status == 409:
        return StatusConflict(str(getattr(exc, "reason", "") or exc))
    if status == 404:
        return StatusGone(str(getattr(exc, "reason", "") or exc))
    return exc


class KubeStatusWriter:
    def __init__(self, custom: Any | None = None) -> None:
        """`custom`: a kubernetes CustomObjectsApi (None: from the kubeconfig / in-cluster config)."""
        self._custom = custom

    def _api(self) -> Any:
        if self._custom is None:
            self._custom = _kube_custom()
        return self._custom

    @property
    def custom(self) -> Any:
        """The CustomObjectsApi it writes with (the metadata watch uses the same configuration)."""
        return self._api()

    def _write(self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str) -> Written:
        body: dict[str, Any] = {"status": dict(patch)}
        if resource_version:
            # A resourceVersion in a merge patch is a precondition: 409 if the object moved on.
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            obj = self._api().patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, api.VM_PLURAL,
                                                                    name, body)
        except Exception as exc:
            raise _translate(exc) from exc
        return Written(obj)

    def _read(self, namespace: str, name: str) -> Written:
        try:
            obj = self._api().get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VM_PLURAL, name)
        except Exception as exc:
            raise _translate(exc) from exc
        return Written(obj)

    async def write(self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str) -> Written:
        return await asyncio.to_thread(self._write, namespace, name, patch, resource_version)

    async def read(self, namespace: str, name: str) -> Written:
        return await asyncio.to_thread(self._read, namespace, name)


METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"


class KubeVmWatch:
    """A metadata-only watch of every VirtualMachine, in a thread; each event's metadata is handed to
    `observe(metadata, deleted)` on the event loop. Restarts after errors (a second's pause)."""

    def __init__(self, observe: Callable[[Mapping[str, Any], bool], None], custom: Any | None = None) -> None:
        self._observe = observe
        self._custom = custom
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._thread = threading.Thread(target=self._run, args=(loop,), name="vm-metadata-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        import kubernetes

        custom = self._custom or _kube_custom()
        version = ""
        while not self._stop.is_set():
            watch = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            try:
                stream = watch.stream(  # type: ignore[no-untyped-call]
                    custom.list_cluster_custom_object, api.GROUP, api.VERSION, api.VM_PLURAL,
                    resource_version=version or None, timeout_seconds=60, _headers={"Accept": METADATA_ONLY})
                for event in stream:
                    if self._stop.is_set():
                        break
                    obj = event.get("raw_object") or event.get("object") or {}
                    metadata = dict(obj.get("metadata") or {}) if isinstance(obj, Mapping) else {}
                    if event.get("type") == "ERROR":
                        version = ""  # too old: list again
                        break
                    version = str(metadata.get("resourceVersion") or version)
                    if metadata.get("uid"):
                        loop.call_soon_threadsafe(self._observe, metadata, event.get("type") == "DELETED")
            except Exception as exc:  # the API server restarts, a timeout: watch again
                if self._stop.is_set() or loop.is_closed():
                    return
                logger.debug("VirtualMachine metadata watch: %s; watching again", exc)
                version = ""
                self._stop.wait(1.0)
            finally:
                watch.stop()  # type: ignore[no-untyped-call]
