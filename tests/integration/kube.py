"""A small typed wrapper over the kubernetes client for the integration tests (admin identity)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kubernetes

from hyperv_operator import api


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        self.client = kubernetes.config.new_client_from_config(str(kubeconfig))
        self.objects = kubernetes.client.CustomObjectsApi(self.client)
        self.core = kubernetes.client.CoreV1Api(self.client)

    def create_vm(self, namespace: str, name: str, strategy: str, host: str = "hv01", **spec: Any) -> dict[str, Any]:
        body = {
            "apiVersion": api.API_VERSION,
            "kind": api.VM_KIND,
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "hostRef": {"name": host},
                "baseVhd": spec.pop("baseVhd", "\\\\FS\\VMSHARE\\BASE.VHDX"),
                "strategy": strategy,
                "memory": "1Gi",
                **spec,
            },
        }
        return dict(
            self.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VM_PLURAL, body)
        )

    def get_vm(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return dict(
                self.objects.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VM_PLURAL, name)
            )
        except kubernetes.client.ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def get_host(self, namespace: str, name: str) -> dict[str, Any]:
        return dict(self.objects.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.HOST_PLURAL, name))

    def patch_vm(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return dict(
            self.objects.patch_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VM_PLURAL, name, patch)
        )

    def delete_vm(self, namespace: str, name: str) -> None:
        self.objects.delete_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VM_PLURAL, name)

    def wait_vm(
        self,
        namespace: str,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        *,
        timeout: float = 90,
        what: str = "condition",
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        obj: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            obj = self.get_vm(namespace, name)
            if obj is not None and predicate(obj):
                return obj
            time.sleep(0.2)
        raise AssertionError(
            f"{namespace}/{name}: timed out waiting for {what}; last status: {(obj or {}).get('status')}"
        )

    def wait_phase(self, namespace: str, name: str, phase: str, timeout: float = 90) -> dict[str, Any]:
        return self.wait_vm(
            namespace,
            name,
            lambda o: (o.get("status") or {}).get("phase") == phase,
            timeout=timeout,
            what=f"phase {phase}",
        )

    def wait_gone(self, namespace: str, name: str, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            obj = self.get_vm(namespace, name)
            if obj is None:
                return
            time.sleep(0.2)
        raise AssertionError(f"{namespace}/{name} still exists; status: {(obj or {}).get('status')}")

    def events_for(self, namespace: str, name: str) -> list[Any]:
        events = self.core.list_namespaced_event(namespace, field_selector=f"involvedObject.name={name}")
        return list(events.items)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if cond.get("type") == type_:
            return dict(cond)
    return None
