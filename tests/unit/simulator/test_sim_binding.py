"""PowerShell-like command resolution and parameter binding on the simulated host."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hyperv_operator.hyperv import cmdlets as c
from hyperv_operator.hyperv import scripts
from hyperv_operator.hyperv.commands import SWITCH, Command, Int64, Statement, UInt64, cmd, pipe, script
from hyperv_operator.hyperv.errors import PermanentHostError, TransientHostError
from hyperv_operator.simulator.inprocess import InProcessClient

Sim = Any
SHARE = "\\\\FS\\VMSHARE"
BASE = SHARE + "\\BASE.VHDX"
VM_ROOT = SHARE + "\\VMs"
NEWVM = "Microsoft.HyperV.PowerShell.Commands.NewVM"


def new_vm(**params: Any) -> Statement:
    base: dict[str, Any] = {"Name": "vm", "Path": VM_ROOT, "VHDPath": BASE, "MemoryStartupBytes": Int64(2**30),
                            "Generation": 2}
    base.update(params)
    return pipe(cmd("Hyper-V\\New-VM", **base))


NOT_RECOGNIZED = "is not recognized as the name of a cmdlet, function, script file, or operable program"

ERROR_CASES: list[tuple[str, Statement, str, str, str]] = [
    # (case, statement, category, fq_error_id, message fragment)
    ("unknown cmdlet", pipe(cmd("Hyper-V\\Get-VMFoo")), "ObjectNotFound", "CommandNotFoundException",
     "The term 'Hyper-V\\Get-VMFoo' " + NOT_RECOGNIZED),
    ("wrong module", pipe(cmd("Microsoft.PowerShell.Management\\Get-VM")), "ObjectNotFound",
     "CommandNotFoundException", NOT_RECOGNIZED),
    ("unknown parameter", pipe(cmd("Hyper-V\\Get-VM", Identity="x")), "InvalidArgument",
     "NamedParameterNotFound,Microsoft.HyperV.PowerShell.Commands.GetVM",
     "A parameter cannot be found that matches parameter name 'Identity'."),
    ("no abbreviations", pipe(cmd("Hyper-V\\Stop-VM", Name="vm", Turn=SWITCH)), "InvalidArgument",
     "NamedParameterNotFound,Microsoft.HyperV.PowerShell.Commands.StopVM", "'Turn'"),
    ("Int64 overflow into Int16", new_vm(Generation=Int64(2**40)), "InvalidArgument",
     f"CannotConvertArgumentNoMessage,{NEWVM}", "too large or too small for an Int16"),
    ("bare int beyond Int32", new_vm(MemoryStartupBytes=2**32), "InvalidArgument",
     f"CannotConvertArgumentNoMessage,{NEWVM}", "Int32"),
    ("negative UInt64", pipe(cmd("Hyper-V\\New-VHD", Path=SHARE + "\\d.vhdx", SizeBytes=Int64(-1))),
     "InvalidArgument", "CannotConvertArgumentNoMessage,Microsoft.Vhd.PowerShell.Cmdlets.NewVHD", "UInt64"),
    ("bad guid", pipe(cmd("Hyper-V\\Get-VM", Id="not-a-guid")), "InvalidArgument",
     "CannotConvertArgumentNoMessage,Microsoft.HyperV.PowerShell.Commands.GetVM", "System.Guid"),
    ("bad enum", pipe(cmd("Hyper-V\\Set-VM", Name="vm", CheckpointType="Quick")), "InvalidArgument",
     "CannotConvertArgumentNoMessage,Microsoft.HyperV.PowerShell.Commands.SetVM", "Disabled, Production"),
    ("missing mandatory", pipe(cmd("Hyper-V\\Get-VHD")), "InvalidArgument",
     "MissingMandatoryParameter,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD", "missing mandatory parameters: Path"),
    ("missing VM", pipe(cmd("Hyper-V\\Start-VM")), "InvalidArgument",
     "MissingMandatoryParameter,Microsoft.HyperV.PowerShell.Commands.StartVM", "mandatory"),
    ("switch given to a string", pipe(cmd("Hyper-V\\Get-VHD", Path=SWITCH)), "InvalidArgument",
     "MissingArgument,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD", "Missing an argument for parameter 'Path'"),
    ("array to a scalar", pipe(cmd("Hyper-V\\Set-VM", Name="vm", Notes=("a", "b"))), "InvalidArgument",
     "CannotConvertArgument,Microsoft.HyperV.PowerShell.Commands.SetVM", "System.Object[]"),
    ("empty string", pipe(cmd("Microsoft.PowerShell.Management\\Test-Path", LiteralPath="")), "InvalidData",
     "ParameterArgumentValidationErrorEmptyStringNotAllowed,Microsoft.PowerShell.Commands.TestPathCommand",
     "empty string"),
    ("both Id and Name", pipe(cmd("Hyper-V\\Get-VM", Id="00000000-0000-0000-0000-000000000001", Name="x")),
     "InvalidArgument", "AmbiguousParameterSet,Microsoft.HyperV.PowerShell.Commands.GetVM", "Parameter set"),
    ("duplicate parameter", pipe(Command("Hyper-V\\Get-VHD", (("Path", BASE), ("path", BASE)))),
     "InvalidArgument", "ParameterAlreadyBound,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD", "more than once"),
    ("pipeline object not bindable", pipe(cmd("Hyper-V\\Get-VHD", Path=BASE), cmd("Hyper-V\\Start-VM")),
     "InvalidArgument", "InputObjectNotBound,Microsoft.HyperV.PowerShell.Commands.StartVM", "input object"),
    # Hyper-V reports a missing VM as InvalidArgument / InvalidParameter (pluralsight/PS-AutoLab-Env#133)
    ("Get-VM by unknown id", c.get_vm_by_id("9a5f2b4e-0000-4000-8000-000000000000"), "InvalidArgument",
     "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM", "unable to find a virtual machine"),
    ("Get-Item of a missing file", c.get_item(SHARE + "\\none.txt"), "ObjectNotFound",
     "PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand", "because it does not exist"),
    ("Get-VHD of a missing file", c.get_vhd(SHARE + "\\none.vhdx"), "ObjectNotFound",
     "ObjectNotFound,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD", "none.vhdx"),
    ("relative path", c.test_path("VMs\\x"), "InvalidArgument",
     "ArgumentException,Microsoft.PowerShell.Commands.TestPathCommand", "not an absolute"),
    ("wildcards in -Path", pipe(cmd("Microsoft.PowerShell.Management\\Get-Item", Path=SHARE + "\\*.vhdx")),
     "NotImplemented", "WildcardNotSupported,Microsoft.PowerShell.Commands.GetItemCommand", "LiteralPath"),
    ("unknown script", pipe(script("Remove-Item C:\\ -Recurse")), "ParserError", "ScriptNotRecognized",
     "fixed scripts"),
    ("script parameter missing", pipe(script(scripts.START_BACKGROUND_COPY, Source=BASE)), "InvalidArgument",
     "MissingMandatoryParameter,StartBackgroundCopy", "Destination"),
    ("unknown switch", pipe(cmd("Hyper-V\\Get-VM", IgnoreIdMismatch=SWITCH)), "InvalidArgument",
     "NamedParameterNotFound,Microsoft.HyperV.PowerShell.Commands.GetVM", "IgnoreIdMismatch"),
    ("Set-VHD -IgnoreIdMismatch is not offered",
     pipe(cmd("Hyper-V\\Set-VHD", Path=BASE, ParentPath=BASE, IgnoreIdMismatch=SWITCH)), "InvalidArgument",
     "NamedParameterNotFound,Microsoft.Vhd.PowerShell.Cmdlets.SetVHD", "IgnoreIdMismatch"),
    ("unknown switch name", new_vm(SwitchName="Nope"), "InvalidArgument", f"InvalidParameter,{NEWVM}", "Nope"),
    ("memory not a multiple of 2 MB", new_vm(MemoryStartupBytes=Int64(2**30 + 1)), "InvalidArgument",
     f"InvalidParameter,{NEWVM}", "2 MB"),
    ("generation 3", new_vm(Generation=3), "InvalidData", f"ParameterArgumentValidationError,{NEWVM}", "3"),
]


@pytest.mark.parametrize(("case", "statement", "category", "fq_error_id", "fragment"), ERROR_CASES,
                         ids=[case[0] for case in ERROR_CASES])
def test_errors(sim: Sim, case: str, statement: Statement, category: str, fq_error_id: str, fragment: str) -> None:
    sim.run(new_vm())  # a VM named "vm" for the name-based cases
    before = (sim.host.files(), sim.host.vms())
    err = sim.fails(statement)
    assert (err.category, err.fq_error_id) == (category, fq_error_id), err.message
    assert fragment in err.message
    assert (sim.host.files(), sim.host.vms()) == before  # a failed command changed nothing


def test_command_not_found_shape(sim: Sim) -> None:
    err = sim.fails(pipe(cmd("Get-Nothing")))
    assert err.exception_type == "System.Management.Automation.CommandNotFoundException"
    assert err.message.startswith("The term 'Get-Nothing' is not recognized as the name of a cmdlet")


@pytest.mark.parametrize("name", ["Hyper-V\\Get-VM", "Get-VM", "hyper-v\\get-vm", "GET-VM"])
def test_names_resolve_case_insensitively_with_or_without_module(sim: Sim, name: str) -> None:
    assert sim.run(pipe(cmd(name))) == []


def test_parameter_names_are_case_insensitive_and_values_widen(sim: Sim) -> None:
    vm = sim.one(pipe(cmd("hyper-v\\new-vm", name="vm", path=VM_ROOT, vhdpath=BASE, memorystartupbytes=1024 * 2**20,
                          GENERATION=Int64(1))))
    assert (vm["MemoryStartup"], vm["Generation"]) == (2**30, 1)
    assert vm["HardDrives"][0]["ControllerType"] == "IDE"
    sim.run(pipe(cmd("Hyper-V\\Get-VM", id=str(vm["Id"]).upper()), cmd("Hyper-V\\Set-VM", processorcount=4,
                                                                         checkpointtype="standard")))
    got = sim.one(c.get_vm_by_id(str(vm["Id"])))
    assert (got["ProcessorCount"], got["CheckpointType"]) == (4, "Standard")
    disk = sim.one(pipe(cmd("Hyper-V\\New-VHD", Path=SHARE + "\\d.vhdx", SizeBytes=UInt64(2**30), Dynamic=None)))
    assert (disk["VhdType"], disk["Size"], disk["ParentPath"]) == ("Dynamic", 2**30, None)


def test_switch_accepts_none_and_bool(sim: Sim) -> None:
    vm_id = str(sim.one(new_vm())["Id"])
    sim.run(pipe(cmd("Hyper-V\\Get-VM", Id=vm_id), cmd("Hyper-V\\Checkpoint-VM", SnapshotName="a", Passthru=None)))
    out = sim.run(pipe(cmd("Hyper-V\\Get-VM", Id=vm_id), cmd("Hyper-V\\Checkpoint-VM", SnapshotName="b",
                                                              Passthru=False)))
    assert out == []
    assert [s["Name"] for s in sim.run(c.get_vm_snapshots(vm_id))] == ["a", "b"]


def test_pipeline_by_property_name(sim: Sim) -> None:
    vm_id = str(sim.one(new_vm())["Id"])
    out = sim.run(pipe(cmd("Hyper-V\\Get-VM", Id=vm_id), cmd("Hyper-V\\Get-VMHardDiskDrive"), cmd("Hyper-V\\Get-VHD")))
    assert [o["Path"] for o in out] == [BASE]
    assert out[0].is_a("VirtualHardDisk") and out[0]["Attached"] is False


def test_empty_pipeline_input_runs_nothing(sim: Sim) -> None:
    vm_id = str(sim.one(new_vm())["Id"])
    assert sim.run(c.remove_vm_snapshot(vm_id, "none")) == []
    assert sim.run(c.get_vm_snapshots(vm_id)) == []


def test_a_failed_statement_does_not_end_the_batch(sim: Sim) -> None:
    """Windows runs the next statement of a batch after a statement-terminating error (PowerShell.cs
    BatchInvocationWorkItem); which Hyper-V failures are statement-terminating is not documented, so the
    simulator takes every failure as one: the batch goes on, and the first failure is what is raised."""
    err = sim.fails(c.new_directory(SHARE + "\\a"), c.get_vhd(SHARE + "\\missing.vhdx"),
                    c.new_directory(SHARE + "\\b"), c.get_vhd(SHARE + "\\other.vhdx"))
    assert sim.one(c.test_path(SHARE + "\\a")).value is True
    assert sim.one(c.test_path(SHARE + "\\b")).value is True
    assert "missing.vhdx" in f"{err.message} {err.target}"


def test_call_log_records_names_and_parameters(sim: Sim) -> None:
    sim.run(c.get_all_vms(), scripts.start_background_copy(BASE, VM_ROOT + "\\x.vhdx", VM_ROOT + "\\x.p",
                                                             VM_ROOT + "\\x.s"))
    sim.fails(pipe(cmd("Nope\\Get-VM", Id="x")))
    log = sim.host.call_log()
    assert log[0] == ("Hyper-V\\Get-VM", {})
    assert log[1][0] == "StartBackgroundCopy" and log[1][1]["Source"] == BASE
    assert log[2] == ("Nope\\Get-VM", {"Id": "x"})


@pytest.mark.parametrize(("kind", "category", "transient"), [
    ("ObjectInUse", "ResourceBusy", True),
    ("Transient", "OperationTimeout", True),
    ("AccessDenied", "PermissionDenied", False),
    ("DiskFull", "WriteError", False),
])
def test_faults_change_nothing_and_classify(sim: Sim, kind: str, category: str, transient: bool) -> None:
    sim.host.fail_next("new-vm", kind)  # module prefix optional, case-insensitive
    client = InProcessClient(sim.host)
    with pytest.raises(TransientHostError if transient else PermanentHostError) as info:
        asyncio.run(client.run([new_vm()]))
    assert info.value.category == category and "New-VM" in info.value.command
    assert sim.host.vms() == []
    assert len(asyncio.run(client.run([new_vm()]))) == 1  # count=1: the next call succeeds


def test_fault_count_and_module_filter(sim: Sim) -> None:
    sim.host.fail_next("Hyper-V\\Get-VM", "ObjectInUse", count=2)
    sim.host.fail_next("Microsoft.PowerShell.Management\\Get-VHD", "ObjectInUse")  # wrong module: never fires
    assert sim.fails(c.get_all_vms()).category == "ResourceBusy"
    assert sim.fails(c.get_all_vms()).category == "ResourceBusy"
    assert sim.run(c.get_all_vms()) == []
    assert sim.one(c.get_vhd(BASE))["Path"] == BASE


def test_latency_sleeps_outside_the_model(make_sim: Any) -> None:
    slept: list[float] = []
    sim = make_sim(sleep=slept.append)
    sim.host.set_latency("Get-VM", 0.25)
    sim.run(c.get_all_vms(), c.get_vhd(BASE))
    assert slept == [0.25]


def test_on_command_callback_can_kill_the_caller_after_a_step(sim: Sim) -> None:
    seen: list[tuple[str, str]] = []

    class Killed(Exception):
        pass

    def callback(name: str, params: dict[str, object], phase: str) -> None:
        seen.append((name, phase))
        if name.endswith("New-VHD") and phase == "after":
            raise Killed

    sim.host.on_command(callback)
    with pytest.raises(Killed):
        sim.run(c.new_differencing_vhd(SHARE + "\\c.vhdx", BASE), c.get_all_vms())
    assert seen == [("Hyper-V\\New-VHD", "before"), ("Hyper-V\\New-VHD", "after")]
    assert sim.one(c.test_path(SHARE + "\\c.vhdx")).value is True


def test_inprocess_client_permanent_error_carries_command(sim: Sim) -> None:
    client = InProcessClient(sim.host)
    with pytest.raises(PermanentHostError) as info:
        asyncio.run(client.run([c.get_vm_by_id("9a5f2b4e-0000-4000-8000-000000000000")]))
    assert info.value.fq_error_id == "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"
    assert "Get-VM" in info.value.command
    asyncio.run(client.close())
