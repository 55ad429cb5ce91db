"""The simulated host's VM power, states, firmware, shared storage and naming rules, as Windows has them
(sources in docs/windows-fidelity.md, section "VM and disk cmdlets, power, states, errors")."""

from __future__ import annotations

from typing import Any

import pytest

from hyperv_operator.hyperv import cmdlets as c
from hyperv_operator.hyperv.commands import SWITCH, cmd, pipe
from hyperv_operator.hyperv.errors import PermanentHostError, TransientHostError, classify, is_not_found
from hyperv_operator.simulator.cmdlets import resolve

from .conftest import BASE, SHARE, VM_ROOT, Sim

GiB = 1024**3
STOP_FAILED = "OperationFailed,Microsoft.HyperV.PowerShell.Commands.StopVM"


def running_vm(sim: Sim, name: str = "vm") -> str:
    child = f"{SHARE}\\{name}.vhdx"
    sim.run(c.new_differencing_vhd(child, BASE))
    vm_id = str(sim.one(c.new_vm(name, VM_ROOT, child, GiB, 2, None))["Id"])
    sim.run(c.start_vm(vm_id))
    return vm_id


def state(sim: Sim, vm_id: str) -> str:
    return str(sim.one(c.get_vm_by_id(vm_id))["State"])


def sync_stop(vm_id: str) -> Any:
    return pipe(cmd("Hyper-V\\Get-VM", Id=vm_id), cmd("Hyper-V\\Stop-VM", Force=SWITCH))


def test_synchronous_stop_vm_force_blocks_the_session_until_the_guest_is_off(sim: Sim) -> None:
    vm_id = running_vm(sim)
    sim.host.set_guest(vm_id, shutdown_seconds=90)
    before = sim.host.simulated_seconds()
    sim.run(sync_stop(vm_id))
    assert sim.host.simulated_seconds() - before >= 90  # the caller waited for the guest
    assert state(sim, vm_id) == "Off"


def test_synchronous_stop_gives_up_after_five_minutes_and_the_vm_keeps_running(sim: Sim) -> None:
    vm_id = running_vm(sim)
    sim.host.set_guest(vm_id, shutdown_seconds=3600)  # a hung guest
    before = sim.host.simulated_seconds()
    err = sim.fails(sync_stop(vm_id))
    assert (err.fq_error_id, err.category, err.message) == (STOP_FAILED, "NotSpecified", "Failed to stop.")
    assert 300 <= sim.host.simulated_seconds() - before < 301
    assert state(sim, vm_id) == "Running"


def test_stop_without_shutdown_integration_service_fails_and_turn_off_still_works(sim: Sim) -> None:
    vm_id = running_vm(sim)
    sim.host.set_guest(vm_id, shutdown_service=False)
    assert sim.fails(sync_stop(vm_id)).fq_error_id == STOP_FAILED
    job = sim.one(c.stop_vm(vm_id, turn_off=False))  # -AsJob: returns at once, the job failed
    assert job.is_a("Job") and job["State"] == "Failed"
    assert state(sim, vm_id) == "Running"
    sim.run(c.stop_vm(vm_id, turn_off=True))
    assert state(sim, vm_id) == "Off"


def test_stop_as_job_returns_at_once_and_the_state_shows_the_shutdown(sim: Sim) -> None:
    vm_id = running_vm(sim)
    before = sim.host.simulated_seconds()
    job = sim.one(c.stop_vm(vm_id, turn_off=False))
    assert job["State"] == "Running" and sim.host.simulated_seconds() == before
    assert state(sim, vm_id) == "Stopping"
    sim.wait(5)
    assert state(sim, vm_id) == "Off"


def test_paused_saved_and_critical_states(sim: Sim) -> None:
    vm_id = running_vm(sim)
    sim.host.set_vm_state(vm_id, "Paused")
    assert state(sim, vm_id) == "Paused"
    assert sim.fails(c.start_vm(vm_id)).category == "InvalidOperation"
    sim.run(c.resume_vm(vm_id))
    assert state(sim, vm_id) == "Running"
    assert sim.fails(c.resume_vm(vm_id)).category == "InvalidOperation"  # only a paused VM resumes
    sim.host.set_vm_state(vm_id, "Saved")
    sim.run(c.start_vm(vm_id))  # restores a saved VM
    assert state(sim, vm_id) == "Running"
    sim.host.lose_storage(vm_id)
    assert state(sim, vm_id) == "RunningCritical"
    assert sim.fails(c.checkpoint_vm(vm_id, "x")).category == "InvalidOperation"
    assert sim.fails(sync_stop(vm_id)).category == "InvalidOperation"
    sim.run(c.stop_vm(vm_id, turn_off=True))
    assert state(sim, vm_id) == "OffCritical"
    assert sim.fails(c.start_vm(vm_id)).category == "InvalidOperation"
    sim.host.lose_storage(vm_id, False)
    assert state(sim, vm_id) == "Off"


def test_set_vm_firmware_generation_2_only_while_off(sim: Sim) -> None:
    vm_id = str(sim.one(c.new_vm("g2", VM_ROOT, BASE, GiB, 2, None))["Id"])
    assert sim.host.firmware(vm_id) == (True, "MicrosoftWindows")
    sim.run(c.set_vm_firmware(vm_id, secure_boot=True, template="MicrosoftUEFICertificateAuthority"))
    assert sim.host.firmware(vm_id) == (True, "MicrosoftUEFICertificateAuthority")
    bad = pipe(cmd("Hyper-V\\Get-VM", Id=vm_id), cmd("Hyper-V\\Set-VMFirmware", SecureBootTemplate="Linux"))
    assert sim.fails(bad).category == "InvalidArgument"
    g1 = str(sim.one(c.new_vm("g1", VM_ROOT, BASE, GiB, 1, None))["Id"])
    assert sim.fails(c.set_vm_firmware(g1, secure_boot=False, template=None)).category == "InvalidArgument"
    running = running_vm(sim, "r")
    assert sim.fails(c.set_vm_firmware(running, secure_boot=False, template=None)).category == "InvalidOperation"


def test_generation_2_needs_a_vhdx_and_get_vhd_reports_the_format(sim: Sim) -> None:
    vhd = SHARE + "\\old.vhd"
    sim.host.add_base_disk(vhd, 10**8)
    assert sim.one(c.get_vhd(vhd))["VhdFormat"] == "VHD"
    assert sim.one(c.get_vhd(BASE))["VhdFormat"] == "VHDX"
    assert sim.fails(c.new_vm("g2", VM_ROOT, vhd, GiB, 2, None)).category == "InvalidArgument"
    sim.run(c.new_vm("g1", VM_ROOT, vhd, GiB, 1, None))


def test_get_vhd_of_a_disk_another_host_holds_fails_in_use_but_the_file_is_usable(sim: Sim) -> None:
    sim.host.hold_elsewhere(BASE)
    err = sim.fails(c.get_vhd(BASE))
    assert err.category == "ResourceBusy" and "being used by another process" in err.message
    assert sim.one(c.get_item(BASE))["Length"] > 0
    sim.run(c.new_differencing_vhd(SHARE + "\\child.vhdx", BASE))  # a differencing child still works


@pytest.mark.parametrize("name", ["bad\x01name", "tab\tname", "a<b", "pipe|x", "dot.", "space ", "CON", "lpt1.txt"])
def test_names_windows_forbids_are_refused(sim: Sim, name: str) -> None:
    err = sim.fails(c.new_directory(f"{VM_ROOT}\\{name}"))
    assert (err.category, err.fq_error_id.split(",")[0]) == ("InvalidArgument", "ArgumentException")
    assert sim.fails(c.new_vm(name, VM_ROOT, BASE, GiB, 2, None)).category == "InvalidArgument"


def test_parameter_values_over_maximum_received_object_size_are_refused(sim: Sim) -> None:
    err = sim.fails(c.set_vm(running_vm(sim), notes="x" * (6 * 1024 * 1024)))  # 12 MiB as UTF-16
    assert (err.category, err.fq_error_id) == ("OperationStopped", "JobFailure")
    assert "exceeded the allowed maximum object size" in err.message


def test_real_error_ids_classify_by_id_not_text(sim: Sim) -> None:
    missing = sim.fails(c.get_vm_by_id("9a5f2b4e-0000-4000-8000-000000000000"))
    err = classify(missing.message, fq_error_id=missing.fq_error_id, category=missing.category,
                   exception_type=missing.exception_type)
    assert isinstance(err, PermanentHostError) and is_not_found(err)
    with pytest.raises(Exception) as info:
        resolve("Hyper-V\\Get-VMNothing")
    nf: Any = info.value
    err = classify(nf.message, fq_error_id=nf.fq_error_id, category=nf.category, exception_type=nf.exception_type)
    assert nf.message.endswith("try again.")  # the old text rule made this transient
    assert isinstance(err, PermanentHostError) and not is_not_found(err)
    sim.host.hold_elsewhere(BASE)
    busy = sim.fails(c.get_vhd(BASE))
    assert isinstance(classify(busy.message, fq_error_id=busy.fq_error_id, category=busy.category,
                               exception_type=busy.exception_type), TransientHostError)
