"""A small executor standing in for SimulatedHost in the WinRM tests."""

from __future__ import annotations

import datetime
import threading
import uuid
from collections.abc import Callable, Sequence

from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.simulator.errors import CmdletError

VM_ID = "6f1903ca-e06a-4a8b-bdfc-b44203149d55"
CREATED = datetime.datetime(2024, 5, 1, 10, 20, 30, 123456, tzinfo=datetime.UTC)


def vm(name: str = "vm1", state: str = "Running") -> HostObject:
    return HostObject(
        ("Microsoft.HyperV.PowerShell.VirtualMachine", "Microsoft.HyperV.PowerShell.VirtualizationObject"),
        {
            "Name": name,
            "Id": uuid.UUID(VM_ID),
            "State": state,
            "Notes": "uid=abc",
            "MemoryStartup": 4 * 1024**3,
            "ProcessorCount": 2,
            "CreationTime": CREATED,
            "Path": "C:\\VMs\\vm1",
            "Tags": ["a", "b"],
            "Nothing": None,
            "Drive": HostObject(("Microsoft.HyperV.PowerShell.HardDiskDrive",), {"Path": "C:\\VMs\\vm1.vhdx"}),
        },
    )


def not_found(target: str) -> CmdletError:
    return CmdletError(
        f"Hyper-V was unable to find a virtual machine with id '{target}'.",
        category="ObjectNotFound",
        fq_error_id="InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM",
        target=target,
    )


def _count(value: object) -> int:
    """How many answers a String[] parameter gets (one per element)."""
    return len(value) if isinstance(value, tuple) else 1


class FakeExecutor:
    """Dispatches on the bare cmdlet name; `fail_next(err)` makes the next batch raise."""

    def __init__(self) -> None:
        self.batches: list[list[Statement]] = []
        self.handlers: dict[str, Callable[[Statement], list[HostObject]]] = {
            "Get-VM": self._get_vm,
            "Test-Path": lambda s: [HostObject(("System.Boolean",), {}, value=True)] * _count(
                s.commands[0].parameter("LiteralPath")
            ),
            "Get-Content": lambda s: [HostObject(("System.String",), {}, value='{"state": "Running"}')],
            "New-Item": lambda s: [
                HostObject(("System.IO.DirectoryInfo",), {"FullName": s.commands[0].parameter("Path")})
            ],
            "Echo": lambda s: [
                HostObject(("Echo",), {"Parameters": [f"{k}={v!r}" for k, v in s.commands[0].parameters]})
            ],
            "Get-VMHost": lambda s: [
                HostObject(
                    ("Microsoft.HyperV.PowerShell.VMHost",),
                    {
                        "ComputerName": "HV01",
                        "VirtualMachinePath": "C:\\VMs",
                        "VirtualHardDiskPath": "C:\\VHDs",
                        "LogicalProcessorCount": 16,
                        "MemoryCapacity": 64 * 1024**3,
                    },
                )
            ],
        }
        self._fail: list[CmdletError] = []
        self._lock = threading.Lock()

    def fail_next(self, error: CmdletError) -> None:
        with self._lock:
            self._fail.append(error)

    def execute(self, statements: Sequence[Statement]) -> list[HostObject]:
        with self._lock:
            self.batches.append(list(statements))
            if self._fail:
                raise self._fail.pop(0)
        out: list[HostObject] = []
        for statement in statements:
            first = statement.commands[0]
            if first.is_script:
                out.append(
                    HostObject(
                        ("System.Management.Automation.PSCustomObject",),
                        {"ProcessId": 4711, "StatusPath": first.parameter("StatusPath")},
                    )
                )
                continue
            name = first.name.rsplit("\\", 1)[-1]
            handler = self.handlers.get(name)
            if handler is None:
                raise CmdletError(
                    f"The term '{first.name}' is not recognized as the name of a cmdlet, function, script file, "
                    "or operable program.",
                    category="ObjectNotFound",
                    fq_error_id="CommandNotFoundException",
                    target=first.name,
                    exception_type="System.Management.Automation.CommandNotFoundException",
                )
            out.extend(handler(statement))
        return out

    def _get_vm(self, statement: Statement) -> list[HostObject]:
        vm_id = statement.commands[0].parameter("Id")
        if vm_id is not None and vm_id != VM_ID:
            raise not_found(str(vm_id))
        return [vm()]


def new_statement_id() -> str:
    return str(uuid.uuid4())
