"""The simulated host's side of unattend.xml (issue 14, bootstrap format Unattend): a Windows image's
partitions, Mount-VHD of a VM's own (differencing) disk giving its Windows volume a drive letter,
Set-Content into an existing folder of it, and Windows Setup's implicit answer-file search at the
first boot of a generalized image (docs/windows-fidelity.md, "Guest, resize and bootstrap")."""

from __future__ import annotations

from tests.unit.simulator.conftest import SHARE, VM_ROOT, Sim

from hyperv_operator.hyperv import cmdlets as c

GiB = 2**30
MiB = 2**20
WIN = SHARE + "\\WIN2022.VHDX"


def answer(name: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<unattend xmlns="urn:schemas-microsoft-com:unattend">'
            f'<settings pass="specialize"><component name="Microsoft-Windows-Shell-Setup" '
            f'processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" '
            f'versionScope="nonSxS"><ComputerName>{name}</ComputerName></component></settings></unattend>').encode()


def _child(sim: Sim, name: str) -> str:
    disk = f"{VM_ROOT}\\{name}.vhdx"
    sim.run(c.new_differencing_vhd(disk, WIN))
    return disk


def _hostname(sim: Sim, vm_id: str) -> str:
    sim.wait(21)
    kvp = sim.run(c.get_kvp_component(vm_id))
    items = [str(i) for o in kvp for i in o["GuestIntrinsicExchangeItems"]]
    return next(i for i in items if "FullyQualifiedDomainName" in i)


def test_mounting_a_vms_own_disk_letters_the_windows_volume_and_the_write_stays_out_of_the_base(sim: Sim) -> None:
    sim.host.add_windows_base(WIN, 9 * 10**9)
    before = sim.host.disk_fingerprint(WIN)
    disk = _child(sim, "win1")
    parts = sim.run(c.mount_os_disk(disk))
    assert [(p["PartitionNumber"], p["Type"], p["DriveLetter"]) for p in parts] == [
        (1, "System", "\0"), (2, "Reserved", "\0"), (3, "Basic", "D"), (4, "Recovery", "\0")]
    assert sim.one(c.get_vhd(disk))["Attached"] is True
    # Set-Content creates no folders: a missing one fails, an existing one takes the file
    assert sim.fails(c.write_file("D:\\Windows\\Nowhere\\unattend.xml", b"x")).category == "ObjectNotFound"
    sim.run(c.write_file("D:\\Windows\\Panther\\unattend.xml", answer("WEB-01")), c.dismount_vhd(disk))
    assert sim.host.os_files(disk)["Windows\\Panther\\unattend.xml"] == answer("WEB-01")
    assert "Windows\\Panther\\unattend.xml" not in sim.host.os_files(WIN)
    assert sim.host.disk_fingerprint(WIN) == before  # the base is byte-identical
    assert sim.fails(c.mount_os_disk(WIN)).category == "PermissionDenied"  # the base is read-only
    vm_id = str(sim.one(c.new_vm("win1", VM_ROOT, disk, GiB, 2, None))["Id"])
    sim.run(c.start_vm(vm_id))
    assert "WEB-01" in _hostname(sim, vm_id)
    assert sim.host.guest_answer_file(vm_id) == "Windows\\Panther\\unattend.xml"


def test_windows_setup_searches_panther_sysprep_and_the_system_drive_in_order_and_nothing_else(sim: Sim) -> None:
    sim.host.add_windows_base(WIN, 9 * 10**9, files={"Windows\\System32\\Sysprep\\unattend.xml": answer("FROM-SYSPREP"),
                                                     "unattend.xml": answer("FROM-ROOT")})
    # Panther (written on the VM's disk) wins over the Sysprep folder and the root of the system drive
    first = _child(sim, "a")
    sim.run(c.mount_os_disk(first), c.write_file("D:\\Windows\\Panther\\unattend.xml", answer("FROM-PANTHER")),
            c.dismount_vhd(first))
    a = str(sim.one(c.new_vm("a", VM_ROOT, first, GiB, 2, None))["Id"])
    # without it, the base's Sysprep folder answers
    b = str(sim.one(c.new_vm("b", VM_ROOT, _child(sim, "b"), GiB, 2, None))["Id"])
    # an unattend.xml on a data disk's root, or anywhere else on the Windows volume, is not searched
    third = _child(sim, "c")
    sim.run(c.mount_os_disk(third), c.write_file("D:\\Windows\\unattend.xml", answer("FROM-ELSEWHERE")),
            c.dismount_vhd(third))
    letter = str(sim.one(c.new_config_volume(VM_ROOT + "\\data.vhdx", 64 * MiB, "cidata"))["DriveLetter"])
    sim.run(c.write_file(f"{letter}:\\unattend.xml", answer("FROM-DATA-DISK")), c.dismount_vhd(VM_ROOT + "\\data.vhdx"))
    cid = str(sim.one(c.new_vm("c", VM_ROOT, third, GiB, 2, None))["Id"])
    sim.run(c.add_vm_scsi_disk(cid, VM_ROOT + "\\data.vhdx", 0, 1))
    for vm_id in (a, b, cid):
        sim.run(c.start_vm(vm_id))
    sim.wait(21)
    assert "FROM-PANTHER" in _hostname(sim, a)
    assert "FROM-SYSPREP" in _hostname(sim, b)
    assert "FROM-SYSPREP" in _hostname(sim, cid)  # the data disk and \Windows\unattend.xml were ignored
    assert sim.host.guest_answer_file(b) == "Windows\\System32\\Sysprep\\unattend.xml"


def test_a_generalized_image_without_an_answer_file_gets_a_random_name_and_a_specialized_one_keeps_its_own(
        sim: Sim) -> None:
    sim.host.add_windows_base(WIN, 9 * 10**9)
    vm_id = str(sim.one(c.new_vm("r", VM_ROOT, _child(sim, "r"), GiB, 2, None))["Id"])
    sim.run(c.start_vm(vm_id))
    name = _hostname(sim, vm_id)
    assert "WIN-" in name and sim.host.guest_answer_file(vm_id) is None
    other = SHARE + "\\SPECIALIZED.VHDX"
    sim.host.add_windows_base(other, 9 * 10**9, generalized=False)
    disk = f"{VM_ROOT}\\s.vhdx"
    sim.run(c.new_differencing_vhd(disk, other), c.mount_os_disk(disk),
            c.write_file("D:\\Windows\\Panther\\unattend.xml", answer("IGNORED")), c.dismount_vhd(disk))
    sid = str(sim.one(c.new_vm("s", VM_ROOT, disk, GiB, 2, None))["Id"])
    sim.run(c.start_vm(sid))
    assert "IGNORED" not in _hostname(sim, sid)  # no specialize pass: the answer file is not applied
