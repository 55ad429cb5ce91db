"""Issue 14, classes, without the admission webhook (the shared session runs none): the controller sizes
a VM from its VirtualMachineClass and stalls one that sets its own size, sending the host nothing."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hyperv_operator import api
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV
from tests.integration import hostview
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

GiB = 2**30


@pytest.fixture
def vm_class(kube: Kube) -> Iterator[str]:
    name = f"small-{uuid.uuid4().hex[:6]}"
    kube.objects.create_cluster_custom_object(api.GROUP, api.VERSION, api.VM_CLASS_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": api.VM_CLASS_KIND, "metadata": {"name": name},
        "spec": {"cpus": 3, "memory": "2Gi", "namespaces": [NAMESPACE]}})
    yield name
    kube.objects.delete_cluster_custom_object(api.GROUP, api.VERSION, api.VM_CLASS_PLURAL, name)


def _create(kube: Kube, name: str, **spec: Any) -> None:
    body = {"apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"hostRef": {"name": "hv01"}, "baseVhd": "\\\\FS\\VMSHARE\\BASE.VHDX", "strategy": "Differencing",
                     **spec}}
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.VM_PLURAL, body)


def test_the_class_sizes_the_vm_and_a_class_change_follows_the_resize_rules(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, vm_class: str
) -> None:
    name = f"classy-{uuid.uuid4().hex[:6]}"
    _create(kube, name, className=vm_class)
    obj = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Ready") or {}).get("status") == "True",
                       what="Ready")
    host = hostview.vm(sim, obj["status"]["vmId"])
    assert (host["ProcessorCount"], host["MemoryStartup"]) == (3, 2 * GiB)
    # the admin grows the class: memory grows online on the running Generation 2 VM (drift interval)
    kube.objects.patch_cluster_custom_object(api.GROUP, api.VERSION, api.VM_CLASS_PLURAL, vm_class,
                                             {"spec": {"memory": "3Gi"}})
    kube.wait_vm(NAMESPACE, name, lambda o: hostview.vm(sim, o["status"]["vmId"])["MemoryStartup"] == 3 * GiB,
                 timeout=120, what="the class's new memory on the host")
    assert hostview.vm(sim, obj["status"]["vmId"])["State"] == "Running"
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)


def test_a_tenant_cannot_exceed_the_class(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, vm_class: str
) -> None:
    name = f"greedy-{uuid.uuid4().hex[:6]}"
    _create(kube, name, className=vm_class, cpus=32, memory="64Gi")
    obj = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Stalled") or {}).get("reason")
                       == "ClassOverrideRefused", what="Stalled ClassOverrideRefused")
    assert "cpus, memory" in condition(obj, "Stalled")["message"]  # type: ignore[index]
    assert not obj["status"].get("vmId")
    assert hostview.vms_tagged(sim, obj["metadata"]["uid"]) == []
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)
