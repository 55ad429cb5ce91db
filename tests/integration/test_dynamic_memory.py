"""Issue 14, Dynamic Memory through the real API server (CEL) and the operator process: the simulated
host holds the range the spec asks for before the VM's first start."""

from __future__ import annotations

import uuid

import kubernetes
import pytest

from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV
from hyperv_operator.hyperv import cmdlets
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

MiB = 1024 * 1024


def test_dynamic_memory_reaches_the_host_and_a_bad_range_is_refused(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    with pytest.raises(kubernetes.client.ApiException) as info:  # CEL: minimum <= memory <= maximum
        kube.create_vm(NAMESPACE, f"dm-bad-{uuid.uuid4().hex[:6]}", "Differencing", memory="1Gi",
                       dynamicMemory={"minimum": "2Gi", "maximum": "4Gi"})
    assert info.value.status == 422
    name = f"dm-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing", memory="1Gi",
                   dynamicMemory={"minimum": "512Mi", "maximum": "4Gi", "buffer": 30})
    ready = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Ready") or {}).get("status") == "True",
                         timeout=120, what="Ready")
    (vm,) = sim.host.execute([cmdlets.get_vm_by_id(ready["status"]["vmId"])])
    assert vm.properties["DynamicMemoryEnabled"] is True
    assert (vm.properties["MemoryMinimum"], vm.properties["MemoryStartup"], vm.properties["MemoryMaximum"]) == \
        (512 * MiB, 1024 * MiB, 4096 * MiB)
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)
