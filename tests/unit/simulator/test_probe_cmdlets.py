"""The host probe's three commands on the simulated host (hyperv/probe.py), in process and over WinRM."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hyperv_operator.hyperv import cmdlets as c
from hyperv_operator.hyperv import probe
from hyperv_operator.hyperv.commands import cmd, pipe
from hyperv_operator.hyperv.winrm import WinRMClient, WinRMSettings
from hyperv_operator.simulator.cmdlets import resolve
from hyperv_operator.simulator.host import SimulatedHost
from hyperv_operator.simulator.tls import generate_tls
from hyperv_operator.simulator.wsman import WSManServer

Sim = Any
GiB = 2**30


def test_every_command_the_operator_sends_is_implemented() -> None:
    for name in sorted(c.ALL_CMDLETS | probe.PROBE_CMDLETS):
        assert resolve(name).qualified.lower() == name.lower()


def test_get_vmhost(sim: Sim) -> None:
    host = sim.one(probe.get_vm_host())
    assert host.is_a("VMHost")
    assert host.type_names[0] == "Microsoft.HyperV.PowerShell.VMHost"
    assert host["ComputerName"] == "HV01"
    assert host["VirtualMachinePath"] == "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V"
    assert host["VirtualHardDiskPath"] == "C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks"
    assert host["LogicalProcessorCount"] == 16
    assert host["MemoryCapacity"] == 128 * GiB


def test_get_vmhost_uses_the_host_name(make_sim: Any) -> None:
    assert make_sim(host_name="HV-LAB-7").one(probe.get_vm_host())["ComputerName"] == "HV-LAB-7"


def test_get_vmhost_for_another_computer_is_not_found(sim: Sim) -> None:
    err = sim.fails(pipe(cmd("Hyper-V\\Get-VMHost", ComputerName="elsewhere")))
    assert err.category == "ObjectNotFound"
    assert "elsewhere" in err.message


def test_get_module_hyperv(sim: Sim) -> None:
    module = sim.one(probe.get_hyperv_module())
    assert module.is_a("PSModuleInfo")
    assert module.type_names[0] == "System.Management.Automation.PSModuleInfo"
    assert module["Name"] == "Hyper-V"
    assert module["Version"] == "2.0.0.0"


def test_get_module_of_a_module_that_is_not_loaded_outputs_nothing(sim: Sim) -> None:
    assert sim.run(pipe(cmd("Microsoft.PowerShell.Core\\Get-Module", Name="VMware.PowerCLI"))) == []
    names = {m["Name"] for m in sim.run(pipe(cmd("Microsoft.PowerShell.Core\\Get-Module")))}
    assert "Hyper-V" in names


def test_get_module_is_in_the_core_module_only(sim: Sim) -> None:
    err = sim.fails(pipe(cmd("Microsoft.PowerShell.Management\\Get-Module", Name="Hyper-V")))
    assert err.fq_error_id == "CommandNotFoundException"


def test_get_psdrive_reports_the_models_free_space(make_sim: Any) -> None:
    sim = make_sim(free_bytes=100 * GiB)
    drive = sim.one(probe.get_drive("C:\\"))
    assert drive.is_a("PSDriveInfo")
    assert drive.type_names[0] == "System.Management.Automation.PSDriveInfo"
    assert drive["Name"] == "C"
    assert drive["Root"] == "C:\\"
    assert drive["Free"] == sim.host.free_bytes()
    assert drive["Used"] + drive["Free"] == 100 * GiB
    assert drive["Used"] > 0  # the base disk on the share counts: one pool for the whole host


def test_get_psdrive_free_space_follows_the_files(sim: Sim) -> None:
    before = sim.one(probe.get_drive("C"))["Free"]
    sim.run(c.new_directory("C:\\VMs"), c.new_differencing_vhd("C:\\VMs\\d.vhdx", "\\\\FS\\VMSHARE\\BASE.VHDX"))
    after = sim.one(probe.get_drive("C"))["Free"]
    assert after < before


def test_get_psdrive_unknown_drive_or_provider(sim: Sim) -> None:
    err = sim.fails(probe.get_drive("Q"))
    assert err.category == "ObjectNotFound"
    assert "A drive with the name 'Q' does not exist." in err.message
    err = sim.fails(pipe(cmd("Microsoft.PowerShell.Management\\Get-PSDrive", Name="C", PSProvider="Registry")))
    assert err.category == "ObjectNotFound"


def test_the_batched_probe_splits_into_its_three_parts(sim: Sim) -> None:
    statements = probe.probe_statements("C")
    results = probe.split_outputs(sim.run(*statements))
    built = probe.build_probe("in-process", "C", statements, results, latency=0.0)
    assert built.host_name == "HV01"
    assert built.hyperv_version == "2.0.0.0"
    assert built.free_bytes == sim.host.free_bytes()
    assert built.logical_processors == 16
    assert built.memory_bytes == 128 * GiB
    assert built.missing_commands == ()


def test_probe_commands_are_logged_and_take_faults(sim: Sim) -> None:
    sim.host.fail_next("Get-PSDrive", "Transient")
    err = sim.fails(*probe.probe_statements("C"))
    assert err.category == "OperationTimeout"
    assert [name for name, _ in sim.host.call_log()[-3:]] == [
        "Hyper-V\\Get-VMHost", "Microsoft.PowerShell.Core\\Get-Module", "Microsoft.PowerShell.Management\\Get-PSDrive"]


# --- over WinRM ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def winrm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimulatedHost, WSManServer, WinRMClient]]:
    host = SimulatedHost(host_name="HV-PROBE", free_bytes=500 * GiB)
    host.add_folder("\\\\FS\\VMSHARE")
    host.add_base_disk("\\\\FS\\VMSHARE\\BASE.VHDX", 3 * GiB)
    tls = generate_tls(Path(tmp_path_factory.mktemp("tls-probe")))
    server = WSManServer(host, username="hvadmin", password="pw").start(tls=tls.server_pair)
    client = WinRMClient(WinRMSettings(server="127.0.0.1", port=server.port, auth="basic", username="hvadmin",
                                       password="pw", ca_bundle=str(tls.ca_cert), read_timeout=10,
                                       operation_timeout=8))
    yield host, server, client
    client.close_sync()
    server.stop()


def test_winrm_probe_against_the_simulator(winrm: tuple[SimulatedHost, WSManServer, WinRMClient]) -> None:
    host, server, client = winrm
    pipelines = len(server.received)
    result = client.probe_sync("C")
    assert result.missing_commands == ()
    assert result.host_name == "HV-PROBE"
    assert result.hyperv_version == "2.0.0.0"
    assert result.free_bytes == host.free_bytes() == 500 * GiB - 3 * GiB
    assert result.virtual_machine_path == "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V"
    assert result.virtual_hard_disk_path == "C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks"
    assert result.logical_processors == 16
    assert result.memory_bytes == 128 * GiB
    assert result.drive == "C"
    assert len(server.received) == pipelines + 1  # one batched pipeline


def test_winrm_probe_values_keep_their_types(winrm: tuple[SimulatedHost, WSManServer, WinRMClient]) -> None:
    _, _, client = winrm
    outputs = client.run_sync(probe.probe_statements("C"))
    kinds = [o.type_names[0] for o in outputs]
    assert kinds == ["Microsoft.HyperV.PowerShell.VMHost", "System.Management.Automation.PSModuleInfo",
                     "System.Management.Automation.PSDriveInfo"]
    drive = outputs[2]
    assert isinstance(drive["Free"], int) and isinstance(drive["Used"], int)
    assert isinstance(outputs[0]["MemoryCapacity"], int)


# --- seeded random faults (used by the integration fault tests) --------------------------------------


def _attempts(sim: Sim, n: int) -> list[str | None]:
    from hyperv_operator.simulator.errors import CmdletError

    out: list[str | None] = []
    for _ in range(n):
        try:
            sim.run(probe.get_vm_host())
            out.append(None)
        except CmdletError as err:
            out.append(err.category)
    return out


def test_fault_rate_is_seeded_counted_and_switchable(make_sim: Any) -> None:
    first, second = make_sim(), make_sim()
    first.host.set_fault_rate(0.3, seed=7, kinds=("ObjectInUse", "Transient"))
    second.host.set_fault_rate(0.3, seed=7, kinds=("ObjectInUse", "Transient"))
    a, b = _attempts(first, 200), _attempts(second, 200)
    assert a == b
    failed = [x for x in a if x is not None]
    assert 30 <= len(failed) <= 90
    assert set(failed) == {"ResourceBusy", "OperationTimeout"}
    assert len(first.host.random_faults) == len(failed)
    assert {name for name, _ in first.host.random_faults} == {"Hyper-V\\Get-VMHost"}
    first.host.set_fault_rate(0.0)
    assert _attempts(first, 50) == [None] * 50


def test_fault_rate_limited_to_commands_and_changes_nothing(sim: Sim) -> None:
    sim.host.set_fault_rate(1.0, seed=1, commands=["New-Item"])
    assert sim.run(probe.get_vm_host())
    err = sim.fails(c.new_directory("C:\\Faulted"))
    assert err.category == "ResourceBusy"
    assert not any(f.lower() == "c:\\faulted" for f in sim.host.folders())


def test_fault_rate_rejects_bad_arguments(sim: Sim) -> None:
    with pytest.raises(ValueError):
        sim.host.set_fault_rate(1.5)
    with pytest.raises(ValueError):
        sim.host.set_fault_rate(0.1, kinds=("Boom",))


def test_drop_rate_drops_requests_and_the_client_recovers(
    winrm: tuple[SimulatedHost, WSManServer, WinRMClient],
) -> None:
    from hyperv_operator.hyperv.errors import HostUnreachableError

    _, server, client = winrm
    server.set_drop_rate(1.0, seed=3)
    try:
        with pytest.raises(HostUnreachableError, match="closed or reset"):
            client.run_sync([probe.get_vm_host()])
        assert server.dropped_requests >= 1
    finally:
        server.set_drop_rate(0.0)
    assert client.run_sync([probe.get_vm_host()])[0]["ComputerName"] == "HV-PROBE"


def test_clear_faults_forgets_pending_and_random_faults(sim: Sim) -> None:
    sim.host.fail_next("Hyper-V\\New-VM", "ObjectInUse", count=2)
    sim.host.set_fault_rate(1.0, seed=1, commands=["Get-VMHost"])
    assert sim.host.pending_faults() == [("hyper-v\\new-vm", "ObjectInUse", 2)]
    sim.host.clear_faults()
    assert sim.host.pending_faults() == []
    assert sim.run(probe.get_vm_host())


def test_fault_rate_per_batch_fails_one_command_of_a_batch(make_sim: Any) -> None:
    from hyperv_operator.simulator.errors import CmdletError

    sim = make_sim()
    sim.host.set_fault_rate(0.25, seed=11, kinds=("Transient",), per="batch")
    failed_batches = 0
    for _ in range(200):
        before = len(sim.host.call_log())
        try:
            sim.run(*probe.probe_statements("C"))
        except CmdletError as err:
            failed_batches += 1
            assert err.category == "OperationTimeout"
            ran = [name for name, _ in sim.host.call_log()[before:]]
            # the faulted command ran, and the statements after it too (a batch goes on, as on Windows)
            assert sim.host.random_faults[-1][0] in ran and len(ran) == 3
    assert 25 <= failed_batches <= 80
    assert len(sim.host.random_faults) == failed_batches
    assert {name for name, _ in sim.host.random_faults} == {
        "Hyper-V\\Get-VMHost", "Microsoft.PowerShell.Core\\Get-Module", "Microsoft.PowerShell.Management\\Get-PSDrive"}
    sim.host.set_fault_rate(0.0)
    assert len(sim.run(*probe.probe_statements("C"))) == 3
    with pytest.raises(ValueError):
        sim.host.set_fault_rate(0.1, per="pipeline")
