"""Files, folders and VM lifecycle rules of the simulated host."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from hyperv_operator.hyperv import cmdlets as c
from hyperv_operator.hyperv import scripts
from hyperv_operator.hyperv.commands import SWITCH, Int64, cmd, pipe

Sim = Any
SHARE = "\\\\FS\\VMSHARE"
BASE = SHARE + "\\BASE.VHDX"
VM_ROOT = SHARE + "\\VMs"
GiB = 1024**3
REMOVE_IO = "RemoveFileSystemItemIOError,Microsoft.PowerShell.Commands.RemoveItemCommand"


def new_vm(sim: Sim, name: str, vhd: str = BASE, switch: str | None = None) -> str:
    return str(sim.one(c.new_vm(name, VM_ROOT, vhd, GiB, 2, switch))["Id"])


def test_vm_names_are_not_unique(sim: Sim) -> None:
    first, second = new_vm(sim, "web"), new_vm(sim, "web")
    assert first != second
    vms = sim.run(c.get_all_vms())
    assert [v["Name"] for v in vms] == ["web", "web"] and {v["Id"] for v in vms} == {first, second}
    config = sim.host.files()
    assert f"{VM_ROOT}\\web\\Virtual Machines\\{first.upper()}.vmcx" in config
    assert f"{VM_ROOT}\\web\\Virtual Machines\\{second.upper()}.VMRS" in config
    vm = sim.one(c.get_vm_by_id(first))
    assert (vm["Path"], vm["CheckpointType"], vm["Status"], vm["Uptime"]) == (
        VM_ROOT + "\\web", "Production", "Operating normally", "PT0S")
    assert vm.type_names[0] == "Microsoft.HyperV.PowerShell.VirtualMachine"
    assert isinstance(vm["CreationTime"], datetime) and vm["CreationTime"].tzinfo is not None


def test_new_vm_rules(sim: Sim) -> None:
    assert sim.fails(c.new_vm("x", SHARE + "\\nofolder", BASE, GiB, 2, None)).category == "ObjectNotFound"
    assert sim.fails(c.new_vm("x", VM_ROOT, SHARE + "\\none.vhdx", GiB, 2, None)).category == "ObjectNotFound"
    sim.host.add_switch("External")
    vm = sim.one(c.new_vm("x", VM_ROOT, BASE, GiB, 2, "external"))
    assert vm["SwitchName"] == "external"
    new_vm(sim, "y", switch="Default Switch")


def test_set_vm_notes_and_processor_rules(sim: Sim) -> None:
    child = SHARE + "\\c.vhdx"
    sim.run(c.new_differencing_vhd(child, BASE))
    vm_id = new_vm(sim, "vm", child)
    sim.run(c.set_vm(vm_id, notes="hyperv-operator.io/uid=abc", processor_count=2), c.start_vm(vm_id))
    sim.run(c.set_vm(vm_id, notes="changed while running", checkpoint_type="Standard"))
    err = sim.fails(c.set_vm(vm_id, processor_count=4))
    assert err.category == "InvalidOperation"
    vm = sim.one(c.get_vm_by_id(vm_id))
    assert (vm["Notes"], vm["ProcessorCount"], vm["CheckpointType"]) == ("changed while running", 2, "Standard")


def test_stop_vm_graceful_takes_simulated_seconds_turn_off_is_instant(sim: Sim) -> None:
    child = SHARE + "\\c.vhdx"
    sim.run(c.new_differencing_vhd(child, BASE))
    vm_id = new_vm(sim, "vm", child)
    sim.run(c.start_vm(vm_id), c.start_vm(vm_id))  # Start-VM on a running VM does nothing
    sim.wait(30)
    sim.run(c.stop_vm(vm_id, turn_off=False))
    assert sim.one(c.get_vm_by_id(vm_id))["State"] == "Stopping"
    assert sim.fails(c.remove_vm(vm_id)).category == "InvalidOperation"
    assert sim.fails(c.start_vm(vm_id)).category == "ResourceBusy"
    sim.wait(5)
    assert sim.one(c.get_vm_by_id(vm_id))["State"] == "Off"
    sim.run(c.stop_vm(vm_id, turn_off=True))  # already off: nothing
    sim.run(c.start_vm(vm_id), c.stop_vm(vm_id, turn_off=True))
    vm = sim.one(c.get_vm_by_id(vm_id))
    assert vm["State"] == "Off" and vm["Uptime"] == "PT0S"


def test_remove_vm_needs_off_and_keeps_disks_and_folders(sim: Sim) -> None:
    child = SHARE + "\\c.vhdx"
    sim.run(c.new_differencing_vhd(child, BASE))
    vm_id = new_vm(sim, "vm", child)
    sim.run(c.checkpoint_vm(vm_id, "cp"), c.start_vm(vm_id))
    err = sim.fails(c.remove_vm(vm_id))
    assert err.category == "InvalidOperation" and "current state" in err.message
    sim.run(c.stop_vm(vm_id, turn_off=True), c.remove_vm(vm_id))
    assert sim.host.vms() == []
    files = sim.host.files()
    assert child in files and any(p.endswith(".avhdx") for p in files)
    assert not any(p.lower().endswith((".vmcx", ".vmgs", ".vmrs")) for p in files)
    assert VM_ROOT + "\\vm\\Virtual Machines" in sim.host.folders()
    assert sim.fails(c.get_vm_by_id(vm_id)).fq_error_id.startswith("InvalidParameter,")  # VM gone


def test_remove_item_rules(sim: Sim) -> None:
    child = SHARE + "\\c.vhdx"
    sim.run(c.new_differencing_vhd(child, BASE))
    vm_id = new_vm(sim, "vm", child)
    err = sim.fails(c.remove_file(child))  # attached to a VM (even an Off one)
    assert (err.category, err.fq_error_id) == ("WriteError", REMOVE_IO)
    assert err.message == (f"The process cannot access the file '{child}' because it is being used by another "
                           "process.")
    err = sim.fails(c.remove_file(BASE))
    assert err.category == "PermissionDenied" and "denied" in err.message
    cfg = next(p for p in sim.host.files() if p.endswith(".vmcx"))
    assert sim.fails(c.remove_file(cfg)).fq_error_id == REMOVE_IO
    assert sim.fails(c.remove_empty_directory(VM_ROOT + "\\vm")).category == "InvalidOperation"
    sim.run(c.remove_vm(vm_id), c.remove_file(child))
    for sub in ("Virtual Machines", ""):
        sim.run(c.remove_empty_directory(f"{VM_ROOT}\\vm\\{sub}".rstrip("\\")))
    assert not sim.one(c.test_path(VM_ROOT + "\\vm")).value
    err = sim.fails(c.remove_file(child))
    assert (err.category, err.fq_error_id) == ("ObjectNotFound",
                                               "PathNotFound,Microsoft.PowerShell.Commands.RemoveItemCommand")


def test_read_only_attribute_needs_force() -> None:
    from hyperv_operator.simulator.host import SimulatedHost

    host = SimulatedHost(clock=lambda: 0.0)
    host.add_base_disk("C:\\Bases\\b.vhdx", 10**8, acl_read_only=False)
    with pytest.raises(Exception, match="sufficient access rights"):
        host.execute([pipe(cmd("Microsoft.PowerShell.Management\\Remove-Item", LiteralPath="C:\\Bases\\b.vhdx"))])
    host.execute([c.remove_file("c:\\bases\\B.VHDX")])  # -Force; paths are case-insensitive
    assert host.files() == {}


def test_copy_files_in_use_cannot_be_removed(sim: Sim) -> None:
    dest = VM_ROOT + "\\x.vhdx"
    sim.run(scripts.start_background_copy(BASE, dest, dest + ".partial", dest + ".json"))
    sim.wait(5)
    assert sim.fails(c.remove_file(dest + ".partial")).fq_error_id == REMOVE_IO
    err = sim.fails(pipe(cmd("Microsoft.PowerShell.Management\\Get-Content", LiteralPath=dest + ".partial")))
    assert "being used by another process" in err.message
    sim.run(c.remove_file(dest + ".json"))  # the status file is not held open


def test_items_and_children(sim: Sim) -> None:
    folder = sim.one(c.new_directory(VM_ROOT + "\\a\\b\\c"))
    assert folder["PSIsContainer"] is True and folder["FullName"] == VM_ROOT + "\\a\\b\\c"
    again = sim.one(c.new_directory(VM_ROOT + "\\A\\B\\C"))  # -Force: exists is fine
    assert again["FullName"] == VM_ROOT + "\\a\\b\\c"
    err = sim.fails(pipe(cmd("Microsoft.PowerShell.Management\\New-Item", ItemType="Directory",
                             Path=VM_ROOT + "\\a")))
    assert err.category == "ResourceExists"
    assert sim.fails(c.new_directory("\\\\OTHER\\SHARE\\x")).category == "ObjectNotFound"
    sim.run(pipe(cmd("Microsoft.PowerShell.Management\\New-Item", ItemType="File", Path=VM_ROOT + "\\a\\n.txt",
                     Value="hello\nworld")))
    names = [(o["Name"], o["PSIsContainer"]) for o in sim.run(c.get_child_items(VM_ROOT + "\\a"))]
    assert names == [("b", True), ("n.txt", False)]
    item = sim.one(c.get_item(VM_ROOT + "\\a\\n.txt"))
    assert item.type_names[0] == "System.IO.FileInfo"
    assert (item["Length"], item["IsReadOnly"], item["Attributes"], item["Extension"]) == (11, False, "Archive",
                                                                                            ".txt")
    assert isinstance(item["LastWriteTimeUtc"], datetime)
    assert sim.one(c.read_text_file(VM_ROOT + "\\a\\n.txt")).value == "hello\nworld"
    lines = sim.run(pipe(cmd("Microsoft.PowerShell.Management\\Get-Content", LiteralPath=VM_ROOT + "\\a\\n.txt")))
    assert [o.value for o in lines] == ["hello", "world"]
    base = sim.one(c.get_item(BASE))
    assert (base["IsReadOnly"], base["Attributes"], base["Length"]) == (True, "ReadOnly, Archive", 9 * 10**9)
    assert [o.value for o in sim.run(c.test_path(BASE.lower()), c.test_path(SHARE + "\\zz"))] == [True, False]
    assert sim.fails(c.get_child_items(SHARE + "\\zz")).fq_error_id == (
        "PathNotFound,Microsoft.PowerShell.Commands.GetChildItemCommand")


def test_disk_full_fault_on_new_vhd_and_real_free_space(make_sim: Any) -> None:
    sim = make_sim(free_bytes=9 * 10**9 + 5 * 2**20)
    sim.host.fail_next("New-VHD", "DiskFull")
    err = sim.fails(c.new_differencing_vhd(SHARE + "\\a.vhdx", BASE))
    assert (err.category, err.message) == ("WriteError", "There is not enough space on the disk.")
    sim.run(c.new_differencing_vhd(SHARE + "\\a.vhdx", BASE))
    err = sim.fails(c.new_differencing_vhd(SHARE + "\\b.vhdx", BASE))
    assert err.message == "There is not enough space on the disk."


def test_checkpoint_types(sim: Sim) -> None:
    vm_id = new_vm(sim, "vm")
    sim.run(c.set_vm(vm_id, checkpoint_type="Disabled"))
    assert sim.fails(c.checkpoint_vm(vm_id, "x")).category == "InvalidOperation"
    sim.run(c.set_vm(vm_id, checkpoint_type="Production"))
    assert sim.one(c.checkpoint_vm(vm_id, "x"))["CheckpointType"] == "Production"
    sim.run(c.start_vm(vm_id))
    assert sim.one(c.checkpoint_vm(vm_id, "y"))["CheckpointType"] == "Standard"  # falls back while running
    sim.run(c.set_vm(vm_id, checkpoint_type="ProductionOnly"))
    assert sim.fails(c.checkpoint_vm(vm_id, "z")).category == "InvalidOperation"
    snaps = sim.run(c.get_vm_snapshots(vm_id))
    assert [s["Name"] for s in snaps] == ["x", "y"] and snaps[1]["ParentCheckpointId"] == snaps[0]["Id"]
    assert sim.run(pipe(cmd("Hyper-V\\Get-VM", Id=vm_id), cmd("Hyper-V\\Get-VMSnapshot", Name="nomatch"))) == []


def test_drift_hooks(sim: Sim) -> None:
    child = SHARE + "\\c.vhdx"
    sim.run(c.new_differencing_vhd(child, BASE))
    vm_id = new_vm(sim, "vm", child)
    sim.run(c.start_vm(vm_id))
    sim.host.stop_vm_out_of_band(vm_id)
    assert sim.one(c.get_vm_by_id(vm_id))["State"] == "Off"
    sim.run(c.start_vm(vm_id))
    sim.host.delete_vm_out_of_band(vm_id)
    assert sim.run(c.get_all_vms()) == []
    assert child in sim.host.files()
    sim.run(c.remove_file(child))


def test_guest_write_needs_a_running_vm(sim: Sim) -> None:
    vm_id = new_vm(sim, "vm")
    with pytest.raises(Exception, match="Off"):
        sim.host.guest_write(vm_id, 0, b"x")


def test_int64_memory_round_trip(sim: Sim) -> None:
    vm = sim.one(pipe(cmd("Hyper-V\\New-VM", Name="big", Path=VM_ROOT, VHDPath=BASE,
                          MemoryStartupBytes=Int64(64 * GiB), Generation=2, SwitchName="Default Switch")))
    assert vm["MemoryStartup"] == 64 * GiB
    sim.run(pipe(cmd("Hyper-V\\Get-VM", Id=str(vm["Id"])), cmd("Hyper-V\\Remove-VM", Force=SWITCH)))


def test_time_scale_multiplies_the_clock() -> None:
    from hyperv_operator.simulator.host import SimulatedHost

    now = [0.0]
    host = SimulatedHost(clock=lambda: now[0], time_scale=60.0)
    host.add_folder(VM_ROOT)
    host.add_base_disk(BASE, 9 * 10**9)
    dest = VM_ROOT + "\\x.vhdx"
    host.execute([scripts.start_background_copy(BASE, dest, dest + ".p", dest + ".s")])
    now[0] = 2.5  # 150 simulated seconds: 9 GB at 75 MB/s takes 120
    assert host.execute([c.test_path(dest)])[0].value is True
    assert host.simulated_seconds() == 150.0


def test_execute_is_thread_safe(sim: Sim) -> None:
    import threading

    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                sim.run(c.new_differencing_vhd(f"{VM_ROOT}\\t{n}-{i}.vhdx", BASE), c.get_all_vms())
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sum(1 for p in sim.host.files() if "\\t" in p) == 80
