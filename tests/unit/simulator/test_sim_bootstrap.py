"""The simulated host's side of issue 14's configuration disk: New-VHD | Mount-VHD | Initialize-Disk |
New-Partition | Format-Volume, Set-Content by the volume's drive letter, Dismount-VHD, Rename-Item,
Add/Remove-VMHardDiskDrive, and the guest agent that reads a cidata volume at first boot."""

from __future__ import annotations

from tests.unit.simulator.conftest import SHARE, VM_ROOT, Sim

from hyperv_operator.hyperv import cmdlets as c

GiB = 2**30
MiB = 2**20
PARTIAL = VM_ROOT + "\\web-cidata.partial.vhdx"
FINAL = VM_ROOT + "\\web-cidata.vhdx"


def _vm(sim: Sim, name: str = "web") -> str:
    disk = f"{SHARE}\\{name}.vhdx"
    sim.run(c.new_differencing_vhd(disk, f"{SHARE}\\BASE.VHDX"))
    return str(sim.one(c.new_vm(name, VM_ROOT, disk, GiB, 2, None))["Id"])


def _build(sim: Sim, label: str = "cidata", files: dict[str, bytes] | None = None, path: str = PARTIAL) -> str:
    volume = sim.one(c.new_config_volume(path, 64 * MiB, label))
    letter = str(volume["DriveLetter"])
    assert volume["FileSystem"] == "FAT32" and volume["FileSystemLabel"] == label
    for name, content in (files if files is not None else {"user-data": b"#cloud-config\n",
                                                            "meta-data": b"instance-id: i-1\nlocal-hostname: web1\n"}
                          ).items():
        sim.run(c.write_file(f"{letter}:\\{name}", content))
    return letter


def test_build_write_dismount_rename_attach_and_the_guest_reads_it_at_first_boot(sim: Sim) -> None:
    vm_id = _vm(sim)
    letter = _build(sim)
    assert letter == "D"  # the first free letter after the host's C:
    vhd = sim.one(c.get_vhd(PARTIAL))
    assert vhd["Attached"] is True and vhd["DiskNumber"] == 1  # mounted on the host
    assert "being used by another process" in sim.fails(c.add_vm_scsi_disk(vm_id, PARTIAL, 0, 1)).message
    assert sim.fails(c.rename_item(PARTIAL, "web-cidata.vhdx")).category == "WriteError"  # still mounted
    sim.run(c.dismount_vhd(PARTIAL), c.rename_item(PARTIAL, "web-cidata.vhdx"))
    assert sim.one(c.get_vhd(FINAL))["Attached"] is False
    sim.run(c.add_vm_scsi_disk(vm_id, FINAL, 0, 1))
    sim.run(c.new_dynamic_vhd(VM_ROOT + "\\data.vhdx", 64 * MiB))
    assert "location 1 is in use" in sim.fails(c.add_vm_scsi_disk(vm_id, VM_ROOT + "\\data.vhdx", 0, 1)).message
    sim.run(c.start_vm(vm_id))
    assert sim.host.guest_first_boot_files(vm_id)["user-data"] == b"#cloud-config\n"
    sim.wait(21)
    kvp = sim.run(c.get_kvp_component(vm_id))
    assert any("web1" in str(item) for o in kvp if str(o["SystemName"]).lower() == vm_id
               for item in o["GuestIntrinsicExchangeItems"])
    sim.run(c.remove_vm_scsi_disk(vm_id, 0, 1), c.remove_file(FINAL))  # SCSI hot-remove while running
    assert [str(o["Path"]) for o in sim.run(c.get_vm_hard_disk_drives(vm_id))] == [f"{SHARE}\\web.vhdx"]


def test_the_guest_agent_needs_the_cidata_label_and_both_files(sim: Sim) -> None:
    for label, files in (("config-2", None), ("cidata", {"user-data": b"x"})):
        vm_id = _vm(sim, f"web-{label}-{len(files or {})}")
        path = VM_ROOT + f"\\{vm_id}.vhdx"
        _build(sim, label, files, path=path)
        sim.run(c.dismount_vhd(path), c.add_vm_scsi_disk(vm_id, path, 0, 1), c.start_vm(vm_id))
        assert sim.host.guest_first_boot_files(vm_id) == {}, label
        sim.wait(21)
        kvp = [o for o in sim.run(c.get_kvp_component(vm_id)) if str(o["SystemName"]).lower() == vm_id]
        assert any("localhost" in str(i) for i in kvp[0]["GuestIntrinsicExchangeItems"])  # unchanged


def test_start_vm_refuses_a_disk_still_mounted_on_the_host(sim: Sim) -> None:
    vm_id = _vm(sim)
    _build(sim)
    sim.run(c.dismount_vhd(PARTIAL), c.add_vm_scsi_disk(vm_id, PARTIAL, 0, 1))
    sim.host.execute([c.pipe(c.cmd(c.HYPERV + "Mount-VHD", Path=PARTIAL))])  # someone mounts it again
    assert "being used by another process" in sim.fails(c.start_vm(vm_id)).message
    sim.run(c.dismount_vhd(PARTIAL), c.start_vm(vm_id))


def test_set_content_on_a_letter_nothing_is_mounted_on_fails_and_a_raw_disk_cannot_be_reinitialized(sim: Sim) -> None:
    assert sim.fails(c.write_file("Q:\\user-data", b"x")).category == "ObjectNotFound"
    _build(sim)
    assert sim.fails(c.dismount_vhd(FINAL)).category == "ObjectNotFound"  # no such file
    sim.run(c.dismount_vhd(PARTIAL))
    assert sim.fails(c.dismount_vhd(PARTIAL)).category == "InvalidOperation"  # not mounted any more


def test_a_windows_guest_reads_cidata_only_with_cloudbase_init(sim: Sim) -> None:
    for agent, hostname in (("cloudbase-init", "web1"), (None, "WIN-BASE")):
        vm_id = _vm(sim, f"win-{agent}")
        sim.host.set_guest(vm_id, os_name="Windows Server 2022 Datacenter", hostname="WIN-BASE")
        sim.host.set_guest_agent(vm_id, agent)
        path = VM_ROOT + f"\\{vm_id}.vhdx"
        _build(sim, path=path)
        sim.run(c.dismount_vhd(path), c.add_vm_scsi_disk(vm_id, path, 0, 1), c.start_vm(vm_id))
        sim.wait(21)
        kvp = sim.run(c.get_kvp_component(vm_id))
        assert any(f">{hostname}<" in str(i) for i in kvp[0]["GuestIntrinsicExchangeItems"]), agent
