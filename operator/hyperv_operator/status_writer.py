"""A VirtualMachine's status written from inside a handler call (I/O edge of handlers.py).

kopf writes a handler's status patch only when the call returns; a handler that goes on through a
short wait on the host (a copy, a merge, the guest's boot) writes what it has reached first, so the
status stays the record of what was done while the call goes on. A merge patch of the status
subresource, as kopf's own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from hyperv_operator import api


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


class KubeStatusWriter:
    def __init__(self, custom: Any | None = None) -> None:
        """`custom`: a kubernetes CustomObjectsApi (None: from the kubeconfig / in-cluster config)."""
        self._custom = custom

    def _api(self) -> Any:
        if self._custom is None:
            import kubernetes

            try:
                kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
            except kubernetes.config.ConfigException:
                kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
            self._custom = kubernetes.client.CustomObjectsApi()
        return self._custom

    def _write(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        self._api().patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, api.VM_PLURAL, name,
                                                          {"status": dict(status)})

    async def __call__(self, namespace: str, name: str, status: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._write, namespace, name, status)
