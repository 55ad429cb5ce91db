"""The copy-slot ledger kept in the host object's status (I/O edge of provisioning/ledger.py).

`status.copySlots` / `status.copyQueue` of the HyperVHost (host key "namespace/name") or the
ClusterHyperVHost (host key "ClusterHyperVHost/name"). A write is a merge patch of the status
subresource that carries the resourceVersion it was decided on: the API server applies it only if
the object is still at that version and answers 409 Conflict otherwise (optimistic concurrency), so
two operator processes cannot both take the last slot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from hyperv_operator import api
from hyperv_operator.provisioning.ledger import Entry, Ledger, LedgerError
from hyperv_operator.tenancy.policy import CLUSTER_HOST_KIND


class KubeLedgerStore:
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

    @staticmethod
    def _where(host_key: str) -> tuple[str | None, str]:
        kind, _, name = host_key.partition("/")
        return (None, name) if kind == CLUSTER_HOST_KIND else (kind, name)

    def _load(self, host_key: str) -> tuple[Ledger, str]:
        namespace, name = self._where(host_key)
        custom = self._api()
        if namespace is None:
            obj = custom.get_cluster_custom_object(api.GROUP, api.VERSION, api.CLUSTER_HOST_PLURAL, name)
        else:
            obj = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.HOST_PLURAL, name)
        return Ledger.from_status(obj.get("status")), str(obj["metadata"]["resourceVersion"])

    def _save(self, host_key: str, ledger: Ledger, version: str) -> bool:
        import kubernetes

        namespace, name = self._where(host_key)
        custom = self._api()
        body = {"metadata": {"resourceVersion": version},
                "status": {**ledger.to_status(), "copiesInFlight": len(ledger.holders)}}
        try:
            if namespace is None:
                custom.patch_cluster_custom_object_status(api.GROUP, api.VERSION, api.CLUSTER_HOST_PLURAL, name, body)
            else:
                custom.patch_namespaced_custom_object_status(api.GROUP, api.VERSION, namespace, api.HOST_PLURAL,
                                                             name, body)
        except kubernetes.client.ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def _gone(self, entries: Sequence[Entry]) -> list[str]:
        import kubernetes

        custom = self._api()
        gone: list[str] = []
        for entry in entries:
            namespace, _, name = entry.vm.partition("/")
            if not namespace or not name:
                continue
            try:
                obj = custom.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VM_PLURAL, name)
            except kubernetes.client.ApiException as exc:
                if exc.status == 404:
                    gone.append(entry.uid)
                    continue
                raise
            if str(obj.get("metadata", {}).get("uid")) != entry.uid:  # same name, a new VM
                gone.append(entry.uid)
        return gone

    async def load(self, host_key: str) -> tuple[Ledger, str]:
        result: tuple[Ledger, str] = await self._call(self._load, host_key)
        return result

    async def save(self, host_key: str, ledger: Ledger, version: str) -> bool:
        result: bool = await self._call(self._save, host_key, ledger, version)
        return result

    async def gone(self, entries: Sequence[Entry]) -> list[str]:
        result: list[str] = await self._call(self._gone, entries)
        return result

    @staticmethod
    async def _call(fn: Any, *args: Any) -> Any:
        try:
            return await asyncio.to_thread(fn, *args)
        except LedgerError:
            raise
        except Exception as exc:  # API server unreachable, forbidden, host object gone: no slot decision now
            raise LedgerError(f"{type(exc).__name__}: {exc}") from exc
