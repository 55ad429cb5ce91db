"""Issue 14: spec.dynamicMemory, decided by resize.py and applied on the simulated host (in process)."""

from __future__ import annotations

import pytest
from tests.unit.provisioning.test_engine_simulator import World, provision, ref, run, spec

from hyperv_operator.api import DynamicMemory
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.simulator.errors import CmdletError
from hyperv_operator.tenancy import classes

MiB = 1024 * 1024
DM = {"minimum": "256Mi", "maximum": "2Gi", "buffer": 25}


def _vm(world: World, vm_id: str) -> dict[str, object]:
    (obj,) = world.host.execute([cmdlets.get_vm_by_id(vm_id)])
    return dict(obj.properties)


@pytest.mark.parametrize("value", [{"minimum": "1Gi", "maximum": "2Gi"}, {"minimum": "256Mi", "maximum": "256Mi"},
                                   {"minimum": "256Mi", "maximum": "2Gi", "buffer": 4}])
def test_the_documented_constraints_are_checked_against_the_startup_memory(value: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        DynamicMemory.from_dict(value, 512 * MiB)


def test_dynamic_memory_is_set_before_the_first_start() -> None:
    world = World()
    vm = ref("dm-new")
    status = run(provision(world, vm, spec("Differencing", dynamicMemory=DM)))
    host = _vm(world, status["vmId"])
    assert (host["DynamicMemoryEnabled"], host["MemoryMinimum"], host["MemoryMaximum"], host["MemoryStartup"]) == \
        (True, 256 * MiB, 2048 * MiB, 512 * MiB)
    assert host["State"] == "Running"
    names = [name.rsplit("\\", 1)[-1] for name, _ in world.host.call_log()]
    assert names.index("Set-VMMemory") < names.index("Start-VM")


def test_a_new_range_waits_for_power_off_then_restart_applies_it() -> None:
    world = World()
    vm = ref("dm-change")
    status = run(provision(world, vm, spec("Differencing", dynamicMemory=DM)))
    wider = {**DM, "maximum": "4Gi"}
    status = run(provision(world, vm, spec("Differencing", dynamicMemory=wider), status))
    pending = next(c for c in status["conditions"] if c["type"] == "ResizePending")
    assert pending["status"] == "True" and "memory mode" in pending["message"]
    assert _vm(world, status["vmId"])["MemoryMaximum"] == 2048 * MiB  # not while running
    status = run(provision(world, vm, spec("Differencing", dynamicMemory=wider, updatePolicy="Restart"), status))
    host = _vm(world, status["vmId"])
    assert host["MemoryMaximum"] == 4096 * MiB and host["State"] == "Running"
    status = run(provision(world, vm, spec("Differencing", updatePolicy="Restart"), status))  # back to static
    assert _vm(world, status["vmId"])["DynamicMemoryEnabled"] is False


def test_the_simulator_enforces_minimum_startup_maximum_and_off_only_switching() -> None:
    world = World()
    vm = ref("dm-sim")
    status = run(provision(world, vm, spec("Differencing")))
    vm_id = status["vmId"]
    with pytest.raises(CmdletError):  # running: Dynamic Memory cannot be switched on
        world.host.execute([cmdlets.set_vm_dynamic_memory(vm_id, 512 * MiB, 256 * MiB, 2048 * MiB, 20)])
    world.host.execute([cmdlets.stop_vm(vm_id, turn_off=True)])
    for startup, minimum, maximum, buffer in ((512, 1024, 2048, 20), (4096, 256, 2048, 20), (512, 256, 2048, 3)):
        with pytest.raises(CmdletError):
            world.host.execute([cmdlets.set_vm_dynamic_memory(vm_id, startup * MiB, minimum * MiB, maximum * MiB,
                                                              buffer)])
    world.host.execute([cmdlets.set_vm_dynamic_memory(vm_id, 512 * MiB, 256 * MiB, 2048 * MiB, 20)])
    assert _vm(world, vm_id)["DynamicMemoryEnabled"] is True


def test_a_class_carries_dynamic_memory_and_a_vm_may_not_set_its_own() -> None:
    klass = {"cpus": 2, "memory": "1Gi", "dynamicMemory": DM}
    assert classes.effective({"className": "small"}, klass)["dynamicMemory"] == DM
    refusal = classes.check("ns", {"className": "small", "dynamicMemory": DM}, klass)
    assert refusal is not None and "dynamicMemory" in refusal.message
