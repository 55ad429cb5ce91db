"""The three provisioning strategies' cmdlet sequences, end to end on the simulated host."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hyperv_operator.hyperv import cmdlets as c
from hyperv_operator.hyperv import scripts

Sim = Any  # tests/unit/simulator/conftest.py: the `sim` / `make_sim` fixtures
SHARE = "\\\\FS\\VMSHARE"
BASE = SHARE + "\\BASE.VHDX"
BASE_SIZE = 9 * 10**9
VM_ROOT = SHARE + "\\VMs"

GiB = 1024**3


def new_vm(sim: Sim, name: str, vhd: str) -> str:
    vm = sim.one(c.new_vm(name, VM_ROOT, vhd, GiB, 2, None))
    assert vm["State"] == "Off" and vm.is_a("VirtualMachine")
    return str(vm["Id"])


def start_copy(sim: Sim, dest: str) -> int:
    out = sim.one(scripts.start_background_copy(BASE, dest, dest + ".partial", dest + ".copy.json"))
    return int(out["ProcessId"])


def copy_status(sim: Sim, dest: str) -> dict[str, object]:
    doc: dict[str, object] = json.loads(sim.one(c.read_text_file(dest + ".copy.json")).value)
    return doc


def test_differencing_chain(sim: Sim) -> None:
    base_print = sim.host.disk_fingerprint(BASE)
    child = SHARE + "\\VM7.VHDX"
    vhd = sim.one(c.new_differencing_vhd(child, BASE))
    assert (vhd["VhdType"], vhd["ParentPath"], vhd["FileSize"]) == ("Differencing", BASE, 4 * 1024 * 1024)
    vm_id = new_vm(sim, "VM7", child)
    sim.run(c.start_vm(vm_id))
    assert sim.one(c.get_vm_by_id(vm_id))["State"] == "Running"
    before = sim.host.guest_view(vm_id)
    assert before[0].startswith(b"BOOT:")  # the base's blocks show through the child
    sim.host.guest_write(vm_id, 5, b"vm7 data")
    sim.wait(60)
    assert sim.host.guest_view(vm_id)[5] == b"vm7 data"
    assert sim.one(c.get_vhd(child))["FileSize"] > 4 * 1024 * 1024 + 60 * 1e6  # guest activity grows the child
    assert sim.one(c.get_vm_by_id(vm_id))["Uptime"] == "PT1M"
    assert sim.host.disk_fingerprint(BASE) == base_print


def test_copy_strategy(sim: Sim) -> None:
    dest = VM_ROOT + "\\VM8.vhdx"
    pid = start_copy(sim, dest)
    initial = copy_status(sim, dest)  # the starter's status, written right after Win32_Process.Create
    assert initial["processId"] == pid and initial["processCreatedAt"] and initial["bytesCopied"] == 0
    sim.wait(60.5)
    status = copy_status(sim, dest)
    assert status["state"] == "Running" and status["processId"] == pid
    assert status["bytesCopied"] == 60 * 75_000_000 and status["bytesTotal"] == BASE_SIZE
    assert not sim.one(c.test_path(dest)).value  # never a half file at the destination
    assert sim.one(c.get_item(dest + ".partial"))["Length"] == int(60.5 * 75e6)
    sim.wait(60)
    status = copy_status(sim, dest)
    assert status["state"] == "Completed" and status["bytesCopied"] == BASE_SIZE and status["finishedAt"]
    assert not sim.one(c.test_path(dest + ".partial")).value
    assert sim.host.disk_fingerprint(dest) == sim.host.disk_fingerprint(BASE)
    copy = sim.one(c.get_item(dest))
    assert copy["Length"] == BASE_SIZE and copy["IsReadOnly"] is False
    vm_id = new_vm(sim, "VM8", dest)
    sim.run(c.start_vm(vm_id))
    sim.host.guest_write(vm_id, 1, b"independent")
    assert sim.host.guest_view(vm_id)[1] == b"independent"
    assert sim.host.disk_fingerprint(BASE)[2] == sim.host.disk_fingerprint(BASE)[2]
    assert sim.host.guest_view(vm_id)[0].startswith(b"BOOT:")


def test_quick_provisioning(sim: Sim) -> None:
    base_print = sim.host.disk_fingerprint(BASE)
    vm_id = new_vm(sim, "VM9", BASE)
    sim.run(c.set_vm(vm_id, checkpoint_type="Standard"))
    snap = sim.one(c.checkpoint_vm(vm_id, "hvop-quick"))
    assert snap.is_a("VMSnapshot") and snap["Name"] == "hvop-quick" and snap["VMId"] == vm_id
    assert snap["CheckpointType"] == "Standard"
    [drive] = sim.run(c.get_vm_hard_disk_drives(vm_id))
    avhdx = str(drive["Path"])
    assert avhdx.lower().startswith((SHARE + "\\BASE_").lower()) and avhdx.endswith(".avhdx")
    guid = avhdx.rsplit("_", 1)[1].removesuffix(".avhdx")
    assert guid == guid.upper() and len(guid) == 36
    assert sim.one(c.get_vhd(avhdx))["ParentPath"] == BASE
    sim.run(c.start_vm(vm_id))
    sim.host.guest_write(vm_id, 3, b"written before re-parent")
    dest = VM_ROOT + "\\VM9.vhdx"
    start_copy(sim, dest)
    sim.wait(121)
    assert copy_status(sim, dest)["state"] == "Completed"
    sim.host.guest_write(vm_id, 4, b"written during copy")
    view = sim.host.guest_view(vm_id)
    sim.run(c.reparent_vhd(avhdx, dest))
    assert sim.one(c.get_vhd(avhdx))["ParentPath"] == dest
    assert sim.host.guest_view(vm_id) == view
    grown = sim.one(c.get_vhd(avhdx))["FileSize"]
    assert grown > 150e6  # two minutes of guest writes, like the blog's 205,520,896 bytes
    sim.run(c.remove_vm_snapshot(vm_id, "hvop-quick"))
    vm = sim.one(c.get_vm_by_id(vm_id))
    assert vm["Status"] == "Merging disks" and vm["State"] == "Running"
    assert sim.run(c.get_vm_snapshots(vm_id)) == []
    sim.host.guest_write(vm_id, 6, b"written during merge")
    sim.wait(grown / 300e6 + 0.1)
    vm = sim.one(c.get_vm_by_id(vm_id))
    assert vm["Status"] == "Operating normally" and vm["State"] == "Running"
    [drive] = sim.run(c.get_vm_hard_disk_drives(vm_id))
    assert drive["Path"] == dest
    vhd = sim.one(c.get_vhd(dest))
    assert vhd["VhdType"] == "Dynamic" and not vhd["ParentPath"] and vhd["Attached"] is True
    assert not sim.one(c.test_path(avhdx)).value
    final = sim.host.guest_view(vm_id)
    assert final[3] == b"written before re-parent" and final[4] == b"written during copy"
    assert final[6] == b"written during merge" and final[0].startswith(b"BOOT:")
    assert {k: v for k, v in final.items() if k != 6} == view
    assert sim.host.disk_fingerprint(BASE) == base_print
    assert sim.host.files()[BASE]["WriteOpen"] is False


def test_start_vm_on_the_base_fails(sim: Sim) -> None:
    vm_id = new_vm(sim, "VM9", BASE)
    err = sim.fails(c.start_vm(vm_id))
    assert err.category == "PermissionDenied" and "denied" in err.message and BASE in err.message
    assert sim.one(c.get_vm_by_id(vm_id))["State"] == "Off"


def test_start_vm_on_a_read_only_attribute_base_fails(sim: Sim) -> None:
    other = SHARE + "\\OTHER.VHDX"
    sim.host.add_base_disk(other, 10**8, acl_read_only=False)
    vm_id = new_vm(sim, "VM", other)
    err = sim.fails(c.start_vm(vm_id))
    assert err.category == "PermissionDenied" and "read-only" in err.message


def test_merge_into_the_base_fails_and_changes_nothing(sim: Sim) -> None:
    vm_id = new_vm(sim, "VM9", BASE)
    sim.run(c.set_vm(vm_id, checkpoint_type="Standard"), c.checkpoint_vm(vm_id, "quick"), c.start_vm(vm_id))
    sim.host.guest_write(vm_id, 2, b"guest")
    files_before = set(sim.host.files())
    err = sim.fails(c.remove_vm_snapshot(vm_id, "quick"))
    assert err.category == "PermissionDenied"
    assert err.fq_error_id.endswith(",Microsoft.HyperV.PowerShell.Commands.RemoveVMSnapshot")
    assert [s["Name"] for s in sim.run(c.get_vm_snapshots(vm_id))] == ["quick"]
    assert sim.one(c.get_vm_by_id(vm_id))["Status"] == "Operating normally"
    assert set(sim.host.files()) == files_before
    assert sim.host.guest_view(vm_id)[2] == b"guest"


def test_reparent_onto_a_copy_that_was_opened_for_write_fails(sim: Sim) -> None:
    vm_id = new_vm(sim, "VM9", BASE)
    sim.run(c.checkpoint_vm(vm_id, "quick"), c.start_vm(vm_id))
    [drive] = sim.run(c.get_vm_hard_disk_drives(vm_id))
    dest = VM_ROOT + "\\VM9.vhdx"
    start_copy(sim, dest)
    sim.wait(200)
    intruder = new_vm(sim, "intruder", dest)  # someone boots the copy: its DataWriteGuid changes
    sim.run(c.start_vm(intruder), c.stop_vm(intruder, turn_off=True), c.remove_vm(intruder))
    err = sim.fails(c.reparent_vhd(str(drive["Path"]), dest))
    assert err.category == "InvalidData" and "mismatch in the identifiers" in err.message
    assert sim.one(c.get_vhd(str(drive["Path"])))["ParentPath"] == BASE


def test_online_reparent_needs_leaf_path(sim: Sim) -> None:
    from hyperv_operator.hyperv.commands import cmd, pipe

    vm_id = new_vm(sim, "VM9", BASE)
    sim.run(c.checkpoint_vm(vm_id, "quick"), c.start_vm(vm_id))
    avhdx = str(sim.one(c.get_vm_hard_disk_drives(vm_id))["Path"])
    dest = VM_ROOT + "\\VM9.vhdx"
    start_copy(sim, dest)
    sim.wait(200)
    err = sim.fails(pipe(cmd("Hyper-V\\Set-VHD", Path=avhdx, ParentPath=dest)))
    assert err.category == "InvalidOperation" and "LeafPath" in err.message
    # offline, no -LeafPath needed
    sim.run(c.stop_vm(vm_id, turn_off=True), pipe(cmd("Hyper-V\\Set-VHD", Path=avhdx, ParentPath=dest)))
    assert sim.one(c.get_vhd(avhdx))["ParentPath"] == dest


def test_new_vhd_rules(sim: Sim) -> None:
    vm_id = new_vm(sim, "VM9", BASE)
    sim.run(c.checkpoint_vm(vm_id, "quick"))
    avhdx = str(sim.one(c.get_vm_hard_disk_drives(vm_id))["Path"])
    cases = [
        (c.new_differencing_vhd(SHARE + "\\x.vhdx", avhdx), "InvalidArgument"),
        (c.new_differencing_vhd(SHARE + "\\x.vhdx", SHARE + "\\missing.vhdx"), "ObjectNotFound"),
        (c.new_differencing_vhd(BASE, BASE), "ResourceExists"),
        (c.new_differencing_vhd(SHARE + "\\nofolder\\x.vhdx", BASE), "ObjectNotFound"),
    ]
    for statement, category in cases:
        assert sim.fails(statement).category == category, statement
    sim.run(c.new_differencing_vhd(SHARE + "\\a.vhdx", BASE), c.new_differencing_vhd(SHARE + "\\b.vhdx", BASE))


def test_background_copy_rules(sim: Sim) -> None:
    dest = VM_ROOT + "\\VM.vhdx"
    pid = start_copy(sim, dest)
    other = VM_ROOT + "\\OTHER.vhdx"
    start_copy(sim, other)  # simultaneous copies progress independently
    sim.wait(30.2)
    assert copy_status(sim, dest)["bytesCopied"] == copy_status(sim, other)["bytesCopied"] == 30 * 75_000_000
    sim.run(c.stop_process(pid))
    sim.wait(200)
    frozen = copy_status(sim, dest)
    assert frozen["state"] == "Running" and frozen["bytesCopied"] == 30 * 75_000_000
    assert sim.one(c.get_item(dest + ".partial"))["Length"] == int(30.2 * 75e6)
    assert not sim.one(c.test_path(dest)).value
    assert copy_status(sim, other)["state"] == "Completed"
    assert sim.fails(c.stop_process(pid)).category == "ObjectNotFound"
    err = sim.fails(scripts.start_background_copy(BASE, other, other + ".p", other + ".s"))
    assert "already exists" in err.message
    err = sim.fails(scripts.start_background_copy(SHARE + "\\nope.vhdx", dest, dest + ".p", dest + ".s"))
    assert err.category == "ObjectNotFound"
    sim.run(c.remove_file(dest + ".partial"))  # no longer in use once the worker is gone


def test_disk_full_fails_the_copy(sim: Sim) -> None:
    sim.host.fail_next("StartBackgroundCopy", "DiskFull")
    dest = VM_ROOT + "\\VM.vhdx"
    start_copy(sim, dest)
    sim.wait(500)
    status = copy_status(sim, dest)
    assert status["state"] == "Failed" and status["error"] == "There is not enough space on the disk."
    assert not sim.one(c.test_path(dest)).value


def test_real_free_space_runs_out_during_a_copy(make_sim: Any) -> None:
    sim = make_sim(free_bytes=BASE_SIZE + 10**9)
    dest = VM_ROOT + "\\VM.vhdx"
    start_copy(sim, dest)
    sim.wait(500)
    status = copy_status(sim, dest)
    assert status["state"] == "Failed" and "not enough space" in str(status["error"])
    assert sim.host.free_bytes() < 10**6


def test_copy_of_a_disk_being_written_fails(sim: Sim) -> None:
    child = SHARE + "\\VM7.vhdx"
    sim.run(c.new_differencing_vhd(child, BASE))
    vm_id = new_vm(sim, "VM7", child)
    sim.run(c.start_vm(vm_id))
    sim.one(scripts.start_background_copy(child, child + ".copy", child + ".p", child + ".s"))
    status = json.loads(sim.one(c.read_text_file(child + ".s")).value)
    assert status["state"] == "Failed" and "being used by another process" in status["error"]


def test_start_vm_on_a_disk_being_copied_is_busy(sim: Sim) -> None:
    dest = VM_ROOT + "\\VM.vhdx"
    start_copy(sim, dest)
    sim.wait(200)
    vm_id = new_vm(sim, "VM", dest)
    start_copy_again = scripts.start_background_copy(dest, VM_ROOT + "\\again.vhdx", VM_ROOT + "\\a.p",
                                                     VM_ROOT + "\\a.s")
    sim.run(start_copy_again)
    err = sim.fails(c.start_vm(vm_id))
    assert err.category == "ResourceBusy" and "being used by another process" in err.message


def test_broken_chain_stops_the_vm_from_starting(sim: Sim) -> None:
    copy = VM_ROOT + "\\parent.vhdx"
    start_copy(sim, copy)
    sim.wait(200)
    child = VM_ROOT + "\\child.vhdx"
    sim.run(c.new_differencing_vhd(child, copy))
    toucher = new_vm(sim, "toucher", copy)
    sim.run(c.start_vm(toucher), c.stop_vm(toucher, turn_off=True))  # the parent changed
    vm_id = new_vm(sim, "child", child)
    err = sim.fails(c.start_vm(vm_id))
    assert err.category == "InvalidData" and "mismatch" in err.message


@pytest.mark.parametrize("running", [False, True])
def test_checkpoint_of_a_differencing_vm_and_merge(sim: Sim, running: bool) -> None:
    child = SHARE + "\\VM7.vhdx"
    sim.run(c.new_differencing_vhd(child, BASE))
    vm_id = new_vm(sim, "VM7", child)
    if running:
        sim.run(c.start_vm(vm_id))
        sim.host.guest_write(vm_id, 9, b"before checkpoint")
    sim.run(c.checkpoint_vm(vm_id, "cp"))
    avhdx = str(sim.one(c.get_vm_hard_disk_drives(vm_id))["Path"])
    assert avhdx.lower().startswith((SHARE + "\\VM7_").lower())
    if running:
        sim.host.guest_write(vm_id, 10, b"after checkpoint")
    sim.run(c.remove_vm_snapshot(vm_id, "cp"))
    sim.wait(10)
    assert sim.one(c.get_vm_hard_disk_drives(vm_id))["Path"] == child
    assert sim.one(c.get_vhd(child))["ParentPath"] == BASE
    if running:
        view = sim.host.guest_view(vm_id)
        assert view[9] == b"before checkpoint" and view[10] == b"after checkpoint"
    sim.run(c.stop_vm(vm_id, turn_off=True), c.start_vm(vm_id))  # the chain is still valid
