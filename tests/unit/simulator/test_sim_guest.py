"""The simulated guest (issue 14): heartbeat after its boot, KVP hostname/OS, DHCP addresses per adapter,
all read through the cmdlets the operator sends."""

from __future__ import annotations

from tests.unit.simulator.conftest import SHARE, VM_ROOT, Sim

from hyperv_operator.hyperv import cmdlets as c
from hyperv_operator.provisioning import guest

GiB = 2**30


def diff_vm(sim: Sim, name: str, switch: str | None) -> str:
    disk = f"{SHARE}\\{name}.vhdx"
    sim.run(c.new_differencing_vhd(disk, f"{SHARE}\\BASE.VHDX"))
    return str(sim.one(c.new_vm(name, VM_ROOT, disk, GiB, 2, switch))["Id"])


def read(sim: Sim, vm_id: str) -> guest.GuestInfo:
    # As the engine's observation reads a running VM: Get-VM -Id (its Heartbeat), adapters, KVP.
    out = sim.run(c.get_vm_by_id(vm_id), c.get_vm_network_adapters(vm_id), c.get_kvp_component(vm_id))
    return guest.parse(out, vm_id)


def test_heartbeat_kvp_and_address_arrive_in_order_after_start(sim: Sim) -> None:
    vm_id = diff_vm(sim, "web", "Default Switch")
    off = read(sim, vm_id)
    assert (off.heartbeat, off.hostname, off.addresses) == ("", "", ())
    adapter = off.adapters[0]
    assert adapter.name == "Network Adapter" and adapter.switch_name == "Default Switch"
    assert adapter.mac_address.startswith("00155D") and len(adapter.mac_address) == 12
    sim.run(c.start_vm(vm_id))
    booting = read(sim, vm_id)
    assert booting.heartbeat == "NoContact" and booting.hostname == ""
    sim.wait(21)
    up = read(sim, vm_id)
    assert up.heartbeat_ok and up.hostname == "localhost" and up.os_name
    assert up.addresses == () and up.adapters[0].addresses  # only the link-local address before DHCP
    sim.wait(10)
    assert read(sim, vm_id).addresses[0].startswith("172.20.")
    sim.run(c.stop_vm(vm_id, turn_off=True))
    assert read(sim, vm_id).heartbeat == ""


def test_no_switch_no_address_and_no_integration_services_no_heartbeat(sim: Sim) -> None:
    lonely, silent = diff_vm(sim, "lonely", None), diff_vm(sim, "silent", "Default Switch")
    sim.host.set_guest(silent, integration_services=False)
    sim.run(c.start_vm(lonely), c.start_vm(silent))
    sim.wait(120)
    alone = read(sim, lonely)
    assert alone.heartbeat_ok and alone.addresses == ()
    quiet = read(sim, silent)
    assert (quiet.heartbeat, quiet.hostname, quiet.addresses) == ("NoContact", "", ())


def test_cim_instance_of_another_class_is_refused(sim: Sim) -> None:
    from hyperv_operator.hyperv.commands import cmd, pipe

    for namespace, class_name in (("root\\cimv2", "Win32_Service"), ("root\\virtualization\\v2", "Msvm_Foo")):
        error = sim.fails(pipe(cmd("CimCmdlets\\Get-CimInstance", Namespace=namespace, ClassName=class_name)))
        assert error.category == "ObjectNotFound" and error.fq_error_id.startswith("HRESULT 0x80041010")


def test_runtime_memory_resize_rules(sim: Sim) -> None:
    vm_id = diff_vm(sim, "mem", "Default Switch")
    sim.run(c.set_vm_memory(vm_id, 2 * GiB))  # off: always
    assert sim.one(c.get_vm_by_id(vm_id))["MemoryStartup"] == 2 * GiB
    sim.run(c.start_vm(vm_id))
    booting = sim.fails(c.set_vm_memory(vm_id, 3 * GiB))  # the guest cannot take part yet
    assert booting.category == "InvalidOperation"
    sim.wait(30)
    sim.run(c.set_vm_memory(vm_id, 3 * GiB))  # grows online
    assert sim.one(c.get_vm_by_id(vm_id))["MemoryStartup"] == 3 * GiB
    linux = sim.fails(c.set_vm_memory(vm_id, GiB))  # a Linux guest cannot give memory back
    assert linux.category == "InvalidOperation"
    sim.host.set_guest(vm_id, os_name="Windows Server 2022 Datacenter")
    sim.run(c.set_vm_memory(vm_id, GiB))
    assert sim.fails(c.set_vm_memory(vm_id, 256 * 2**20)).category == "InvalidOperation"  # below its demand
    assert sim.fails(c.set_vm_memory(vm_id, GiB + 1)).category == "InvalidArgument"  # not a multiple of 2 MB


def test_kvp_read_is_one_vms_component_filtered_on_the_host(sim: Sim) -> None:
    first, second = diff_vm(sim, "kvp-a", None), diff_vm(sim, "kvp-b", None)
    sim.run(c.start_vm(first), c.start_vm(second))
    statement = c.get_kvp_component(first)
    assert statement.commands[0].parameter("Filter") == f"SystemName = '{first.upper()}'"
    out = sim.run(statement)
    assert [str(o["SystemName"]).lower() for o in out] == [first]  # not every VM on the host
    assert sim.run(c.get_kvp_component("00000000-0000-4000-8000-000000000000")) == []  # no match, no error
    bad = c.pipe(c.cmd(c.CIM + "Get-CimInstance", Namespace=c.VIRTUALIZATION_NAMESPACE,
                       ClassName="Msvm_KvpExchangeComponent", Filter="SystemName LIKE '%'"))
    assert "0x80041017" in sim.fails(bad).fq_error_id


def test_the_kvp_filter_is_built_from_a_guid_only() -> None:
    import pytest

    with pytest.raises(ValueError):
        c.get_kvp_component("x' OR SystemName LIKE '%")
