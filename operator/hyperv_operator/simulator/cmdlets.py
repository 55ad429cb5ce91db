"""The simulated cmdlets: PowerShell-like parameter binding over `simulator/model.py`.

Binding follows PowerShell for structured commands (what pypsrp sends): parameter names are
case-insensitive; values arrive as str, int (a .NET Int32 on the wire), bool, Int64, UInt64, SWITCH
or None (a switch without value), tuple/list of str. Int32 widens to Int64/UInt64; an Int64/UInt64
narrows to Int32/Int16 only when in range; negative values never bind to UInt64; a bare int outside
the Int32 range is rejected (pypsrp would send it as `<I32>`, which Windows cannot parse).

Stricter than PowerShell (documented choices):
- No parameter-name abbreviation (`-Pass` for `-Passthru`): exact names or declared aliases only.
- An array never binds to a scalar [string] parameter (PowerShell would join it with spaces).
- A bool never binds to an integer parameter.
- `-Path` values containing wildcard characters (`*?[]`) are refused (NotImplemented): the operator
  uses `-LiteralPath`; the simulated host does not expand wildcards.
- An empty string never binds to a mandatory [string] parameter, nor to path parameters.
- `Get-VMSnapshot -Name` accepts `*`/`?` wildcards (like Hyper-V); no match gives no output.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hyperv_operator.hyperv.commands import HostObject as HostObject
from hyperv_operator.hyperv.commands import Int64, Switch, UInt64
from hyperv_operator.simulator.errors import CmdletError
from hyperv_operator.simulator.model import (
    CHECKPOINT_TYPES,
    HYPERV_EXCEPTION,
    VM,
    Drive,
    FileNode,
    Folder,
    HostModel,
    ModelError,
    Mount,
    NetAdapter,
    Snapshot,
    canonical_path,
    failed_to_stop,
    iso_o,
    leaf_name,
    parent_path,
    path_not_found,
    vhd_format,
    xs_duration,
)

BINDING_EXCEPTION = "System.Management.Automation.ParameterBindingException"

_RANGES: dict[str, tuple[int, int, str]] = {
    "int16": (-(2**15), 2**15 - 1, "System.Int16"),
    "int32": (-(2**31), 2**31 - 1, "System.Int32"),
    "int64": (-(2**63), 2**63 - 1, "System.Int64"),
    "uint64": (0, 2**64 - 1, "System.UInt64"),
}
_NET_TYPES = {"string": "System.String", "string[]": "System.String[]", "guid": "System.Guid",
              "switch": "System.Management.Automation.SwitchParameter", "int32[]": "System.Int32[]",
              "vm": "Microsoft.HyperV.PowerShell.VirtualMachine[]", "object[]": "System.Object[]",
              "bool": "System.Boolean",
              "drive": "Microsoft.HyperV.PowerShell.HardDiskDrive[]",
              "adapter": "Microsoft.HyperV.PowerShell.VMNetworkAdapterBase[]",
              "cim": "Microsoft.Management.Infrastructure.CimInstance[]",
              "snapshot": "Microsoft.HyperV.PowerShell.VMSnapshot[]"}


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # string, string[], guid, int16, int32, int64, uint64, int32[], switch, enum, vm, snapshot
    mandatory: bool = False
    enum_type: str = ""
    choices: tuple[str, ...] = ()
    pipeline_type: str | None = None  # ValueFromPipeline: accepted HostObject type name
    by_property: bool = False  # ValueFromPipelineByPropertyName
    allow_empty: bool = False
    path: bool = False
    wildcards: bool = False  # a -Path parameter (wildcards would be expanded)
    aliases: tuple[str, ...] = ()

    def net_type(self) -> str:
        if self.kind in _RANGES:
            return _RANGES[self.kind][2]
        if self.kind == "enum":
            return self.enum_type
        return _NET_TYPES.get(self.kind, "System.Object")


Bound = dict[str, Any]
Impl = Callable[["Context", Bound], list[HostObject]]


@dataclass(frozen=True)
class Cmdlet:
    name: str
    module: str
    type_name: str
    params: tuple[Param, ...]
    impl: Impl
    exclusive: tuple[tuple[str, ...], ...] = ()
    one_of: tuple[str, ...] = ()  # at least one must be bound (parameter sets with different mandatory)

    def param(self, name: str) -> Param | None:
        lowered = name.lower()
        for p in self.params:
            if p.name.lower() == lowered or lowered in (a.lower() for a in p.aliases):
                return p
        return None

    @property
    def qualified(self) -> str:
        return f"{self.module}\\{self.name}"


@dataclass
class Context:
    model: HostModel
    cmdlet: Cmdlet
    fault_disk_full: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def error(self, err: ModelError) -> CmdletError:
        fq = err.fq_error_id if err.fq_error_id is not None else f"{err.reason},{self.cmdlet.type_name}"
        return CmdletError(err.message, category=err.category, fq_error_id=fq, target=err.target,
                           exception_type=err.exception_type)


def _cim_error(message: str, category: str, hresult: str, target: str) -> ModelError:
    """Get-CimInstance's CimException as WMI reports it (0x80041010 invalid class, 0x80041017 invalid query)."""
    return ModelError(message, category=category, reason="",
                      fq_error_id=f"HRESULT {hresult},Microsoft.Management.Infrastructure.CimCmdlets."
                                  "GetCimInstanceCommand", target=target,
                      exception_type="Microsoft.Management.Infrastructure.CimException")


def binding_error(cmdlet: Cmdlet, message: str, reason: str, *, category: str = "InvalidArgument",
                  target: str = "") -> CmdletError:
    return CmdletError(message, category=category, fq_error_id=f"{reason},{cmdlet.type_name}", target=target,
                       exception_type=BINDING_EXCEPTION)


def _show(value: object) -> str:
    if isinstance(value, (Int64, UInt64)):
        return str(value.value)
    if isinstance(value, (tuple, list)):
        return "System.Object[]"
    return str(value)


def _convert_error(cmdlet: Cmdlet, p: Param, value: object, detail: str) -> CmdletError:
    return binding_error(
        cmdlet,
        f"Cannot bind parameter '{p.name}'. Cannot convert value \"{_show(value)}\" to type \"{p.net_type()}\". "
        f"Error: \"{detail}\"",
        "CannotConvertArgumentNoMessage",
        target=_show(value),
    )


def _to_int(cmdlet: Cmdlet, p: Param, value: object, kind: str) -> int:
    lo, hi, net = _RANGES[kind]
    if isinstance(value, (bool, Switch)) or value is None:
        raise _convert_error(cmdlet, p, value, f"Invalid cast to {net}.")
    if isinstance(value, Int64):
        number = value.value
        if not _RANGES["int64"][0] <= number <= _RANGES["int64"][1]:
            raise _convert_error(cmdlet, p, value, "Value was either too large or too small for an Int64.")
    elif isinstance(value, UInt64):
        number = value.value
        if not 0 <= number <= _RANGES["uint64"][1]:
            raise _convert_error(cmdlet, p, value, "Value was either too large or too small for a UInt64.")
    elif isinstance(value, int):
        number = value
        if not _RANGES["int32"][0] <= number <= _RANGES["int32"][1]:
            raise _convert_error(cmdlet, p, value, "Value was either too large or too small for an Int32 (a bare "
                                 "int travels as <I32>; wrap it in Int64/UInt64).")
    elif isinstance(value, str):
        try:
            number = int(value.strip(), 10)
        except ValueError:
            raise _convert_error(cmdlet, p, value, "Input string was not in a correct format.") from None
    else:
        raise _convert_error(cmdlet, p, value, f"Invalid cast to {net}.")
    if not lo <= number <= hi:
        short = net.split(".")[-1]
        article = "a" if short.startswith("U") else "an"
        raise _convert_error(cmdlet, p, value, f"Value was either too large or too small for {article} {short}.")
    return number


def convert(cmdlet: Cmdlet, p: Param, value: object) -> Any:
    """Bind one named value to a parameter, PowerShell style."""
    if p.kind == "switch":
        if value is None or isinstance(value, Switch):
            return True
        if isinstance(value, bool):
            return value
        raise _convert_error(cmdlet, p, value, "Invalid cast to System.Management.Automation.SwitchParameter.")
    if value is None or isinstance(value, Switch):
        raise binding_error(cmdlet, f"Missing an argument for parameter '{p.name}'. Specify a parameter of type "
                            f"'{p.net_type()}' and try again.", "MissingArgument", target=p.name)
    if p.kind in _RANGES:
        return _to_int(cmdlet, p, value, p.kind)
    if p.kind == "int32[]":
        items = list(value) if isinstance(value, (tuple, list)) else [value]
        return [_to_int(cmdlet, p, item, "int32") for item in items]
    if p.kind in ("string", "guid", "enum"):
        if isinstance(value, (tuple, list)):
            raise binding_error(cmdlet, f"Cannot convert 'System.Object[]' to the type '{p.net_type()}' required by "
                                f"parameter '{p.name}'. Specified method is not supported.", "CannotConvertArgument",
                                target=p.name)
        text = value if isinstance(value, str) else _show(value) if not isinstance(value, bool) else str(value)
        if p.kind == "string":
            _check_empty(cmdlet, p, text)
            _check_wildcards(cmdlet, p, text)
            return text
        if p.kind == "guid":
            try:
                return str(uuid.UUID(text))
            except ValueError:
                raise _convert_error(cmdlet, p, value, "Guid should contain 32 digits with 4 dashes "
                                     "(xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx).") from None
        for choice in p.choices:
            if choice.lower() == text.lower():
                return choice
        raise _convert_error(cmdlet, p, value, f"Unable to match the identifier name {text} to a valid enumerator "
                             f"name. Specify one of the following enumerator names and try again: "
                             f"{', '.join(p.choices)}")
    if p.kind == "bool":  # a [bool] parameter (not a switch): $true / $false, nothing else [strict]
        if isinstance(value, bool):
            return value
        raise _convert_error(cmdlet, p, value, "Cannot convert value to type System.Boolean. Boolean parameters "
                                               "accept only Boolean values and numbers, such as $True, $False, 1 or 0.")
    if p.kind == "object[]":  # Set-Content -Value: a byte[] (<BA>) or strings, kept as they are
        return list(value) if isinstance(value, (tuple, list)) else [value]
    if p.kind == "string[]":
        items = list(value) if isinstance(value, (tuple, list)) else [value]
        texts = []
        for item in items:
            if isinstance(item, (tuple, list)):
                raise _convert_error(cmdlet, p, value, "Nested arrays are not supported.")
            text = item if isinstance(item, str) else _show(item)
            _check_empty(cmdlet, p, text)
            _check_wildcards(cmdlet, p, text)
            texts.append(text)
        return texts
    # vm / snapshot objects only come from the pipeline
    raise binding_error(cmdlet, f"Cannot bind parameter '{p.name}'. Cannot convert the \"{_show(value)}\" value of "
                        f"type \"System.String\" to type \"{p.net_type()}\".", "CannotConvertArgumentNoMessage",
                        target=p.name)


def _check_empty(cmdlet: Cmdlet, p: Param, text: str) -> None:
    if text == "" and not p.allow_empty:
        raise binding_error(cmdlet, f"Cannot bind argument to parameter '{p.name}' because it is an empty string.",
                            "ParameterArgumentValidationErrorEmptyStringNotAllowed", category="InvalidData",
                            target=p.name)


def _check_wildcards(cmdlet: Cmdlet, p: Param, text: str) -> None:
    if p.wildcards and any(ch in text for ch in "*?[]"):
        raise binding_error(cmdlet, f"The simulated host does not expand wildcards in -{p.name} '{text}'; use "
                            "-LiteralPath.", "WildcardNotSupported", category="NotImplemented", target=text)


def bind_named(cmdlet: Cmdlet, parameters: Sequence[tuple[str, object]]) -> Bound:
    bound: Bound = {}
    for name, value in parameters:
        p = cmdlet.param(name)
        if p is None:
            raise binding_error(cmdlet, f"A parameter cannot be found that matches parameter name '{name}'.",
                                "NamedParameterNotFound", target=name)
        if p.name in bound:
            raise binding_error(cmdlet, f"Cannot bind parameter because parameter '{p.name}' is specified more than "
                                "once. To provide multiple values to parameters that can accept multiple values, use "
                                "the array syntax.", "ParameterAlreadyBound", target=p.name)
        bound[p.name] = convert(cmdlet, p, value)
    return bound


def bind_pipeline(cmdlet: Cmdlet, named: Bound, item: HostObject) -> Bound:
    bound = dict(named)
    for p in cmdlet.params:
        if p.pipeline_type and p.name not in bound and item.is_a(p.pipeline_type):
            bound[p.name] = item
            return bound
    done = False
    for p in cmdlet.params:
        if p.by_property and p.name not in bound:
            names = {p.name.lower(), *(a.lower() for a in p.aliases)}
            for key, value in item.properties.items():
                if key.lower() in names and value is not None and p.name not in bound:
                    bound[p.name] = convert(cmdlet, p, value)
                    done = True
    if not done:
        raise binding_error(cmdlet, "The input object cannot be bound to any parameters for the command either "
                            "because the command does not take pipeline input or the input and its properties do not "
                            "match any of the parameters that take pipeline input.", "InputObjectNotBound")
    return bound


def check_complete(cmdlet: Cmdlet, bound: Bound) -> None:
    for group in cmdlet.exclusive:
        if sum(1 for name in group if name in bound) > 1:
            raise binding_error(cmdlet, "Parameter set cannot be resolved using the specified named parameters.",
                                "AmbiguousParameterSet")
    missing = [p.name for p in cmdlet.params if p.mandatory and p.name not in bound]
    if cmdlet.one_of and not any(name in bound for name in cmdlet.one_of):
        missing.append(cmdlet.one_of[-1])
    if missing:
        raise binding_error(cmdlet, "Cannot process command because of one or more missing mandatory parameters: "
                            f"{' '.join(missing)}.", "MissingMandatoryParameter")


# --- output objects ----------------------------------------------------------------------------

VM_TYPES = ("Microsoft.HyperV.PowerShell.VirtualMachine", "Microsoft.HyperV.PowerShell.VirtualMachineBase",
            "Microsoft.HyperV.PowerShell.VirtualizationObject", "System.Object")
HDD_TYPES = ("Microsoft.HyperV.PowerShell.HardDiskDrive", "Microsoft.HyperV.PowerShell.Drive",
             "Microsoft.HyperV.PowerShell.VirtualizationObject", "System.Object")
SNAPSHOT_TYPES = ("Microsoft.HyperV.PowerShell.VMSnapshot", "Microsoft.HyperV.PowerShell.VirtualMachineBase",
                  "Microsoft.HyperV.PowerShell.VirtualizationObject", "System.Object")
VHD_TYPES = ("Microsoft.Vhd.PowerShell.VirtualHardDisk", "System.Object")
FILE_TYPES = ("System.IO.FileInfo", "System.IO.FileSystemInfo", "System.MarshalByRefObject", "System.Object")
DIR_TYPES = ("System.IO.DirectoryInfo", "System.IO.FileSystemInfo", "System.MarshalByRefObject", "System.Object")
PSCUSTOM_TYPES = ("System.Management.Automation.PSCustomObject", "System.Object")
PSDRIVE_TYPES = ("System.Management.Automation.PSDriveInfo", "System.Object")


def primitive(value: Any) -> HostObject:
    if isinstance(value, bool):
        return HostObject(("System.Boolean", "System.ValueType", "System.Object"), {}, value)
    if isinstance(value, str):
        return HostObject(("System.String", "System.Object"), {}, value)
    raise TypeError(value)


def drive_object(model: HostModel, vm: VM, drive: Drive) -> HostObject:
    return HostObject(HDD_TYPES, {
        "Path": drive.path, "VMId": vm.id, "VMName": vm.name, "ControllerType": drive.controller_type,
        "ControllerNumber": drive.controller_number, "ControllerLocation": drive.controller_location,
        "Name": f"Hard Drive on {drive.controller_type} controller number {drive.controller_number} at location "
                f"{drive.controller_location}",
        "Id": f"Microsoft:{vm.id.upper()}\\{drive.id.upper()}", "DiskNumber": None, "ComputerName": model.host_name,
        "VMSnapshotId": "00000000-0000-0000-0000-000000000000", "VMSnapshotName": "",
    })


def vm_object(model: HostModel, vm: VM) -> HostObject:
    current = next((s for s in vm.snapshots if s.id == vm.current_snapshot_id), None)
    return HostObject(VM_TYPES, {
        "Name": vm.name, "VMName": vm.name, "Id": vm.id, "VMId": vm.id, "State": model.vm_state(vm),
        "Status": model.vm_status(vm), "OperationalStatus": model.vm_operational_status(vm),
        "Uptime": xs_duration(model.uptime(vm)), "Path": vm.path,
        "ConfigurationLocation": vm.path, "SnapshotFileLocation": vm.path, "CheckpointFileLocation": vm.path,
        "Notes": vm.notes, "CheckpointType": vm.checkpoint_type, "Generation": vm.generation,
        "MemoryStartup": vm.memory_startup, "ProcessorCount": vm.processor_count, "ComputerName": model.host_name,
        "HardDrives": [drive_object(model, vm, d) for d in vm.drives],
        "ParentCheckpointId": current.id if current else None,
        "ParentCheckpointName": current.name if current else None,
        "ParentSnapshotId": current.id if current else None, "ParentSnapshotName": current.name if current else None,
        "CreationTime": model.date(vm.created), "Version": "11.0", "IsClustered": False,
        "DynamicMemoryEnabled": vm.dynamic_memory, "SwitchName": vm.switch_name,
        "MemoryMinimum": vm.memory_minimum, "MemoryMaximum": vm.memory_maximum,
        "Heartbeat": model.heartbeat_status(vm),
    })


def snapshot_object(model: HostModel, vm: VM, snap: Snapshot) -> HostObject:
    parent = next((s for s in vm.snapshots if s.id == snap.parent_snapshot_id), None)
    drives = [Drive(vm.drives[i].id, captured, vm.drives[i].controller_type, vm.drives[i].controller_number,
                    vm.drives[i].controller_location) for i, captured, _ in snap.disks if i < len(vm.drives)]
    return HostObject(SNAPSHOT_TYPES, {
        "Id": snap.id, "Name": snap.name, "VMId": vm.id, "VMName": vm.name, "CheckpointType": snap.checkpoint_type,
        "SnapshotType": "Standard", "ParentCheckpointId": snap.parent_snapshot_id,
        "ParentCheckpointName": parent.name if parent else None, "ParentSnapshotId": snap.parent_snapshot_id,
        "ParentSnapshotName": parent.name if parent else None, "Path": vm.path,
        "CreationTime": model.date(snap.created), "IsDeleted": False, "ComputerName": model.host_name,
        "HardDrives": [drive_object(model, vm, d) for d in drives],
    })


def vhd_object(model: HostModel, node: FileNode) -> HostObject:
    assert node.vhd is not None
    return HostObject(VHD_TYPES, {
        "ComputerName": model.host_name, "Path": node.path, "VhdFormat": vhd_format(node.path),
        "VhdType": node.vhd.vhd_type,
        "FileSize": node.size, "Size": node.vhd.size, "MinimumSize": node.vhd.size, "LogicalSectorSize": 512,
        "PhysicalSectorSize": 4096, "BlockSize": node.vhd.block_size, "ParentPath": node.vhd.parent_path,
        "DiskIdentifier": node.vhd.disk_identifier, "FragmentationPercentage": 0, "Alignment": 1,
        "Attached": node.key in model.attached_keys(), "IsPMEMCompatible": False, "AddressAbstractionType": "None",
        "DiskNumber": model.mounts[node.key].disk_number if node.key in model.mounts else None,
        "Number": model.mounts[node.key].disk_number if node.key in model.mounts else None,
    })


def _times(model: HostModel, created: float, modified: float) -> dict[str, datetime]:
    return {"CreationTimeUtc": model.date(created), "LastWriteTimeUtc": model.date(modified),
            "CreationTime": model.date(created), "LastWriteTime": model.date(modified)}


FILESYSTEM_PROVIDER = "Microsoft.PowerShell.Core\\FileSystem"
PROVIDER_TYPES = ("System.Management.Automation.ProviderInfo", "System.Object")


def provider_notes(model: HostModel, path: str) -> dict[str, Any]:
    """The note properties the FileSystem provider adds to everything it outputs (Get-Item,
    Get-ChildItem, each string of Get-Content): PSPath, PSParentPath, PSChildName, PSDrive,
    PSProvider. A UNC path belongs to no PowerShell drive: PSDrive is $null [strict]."""
    parent = parent_path(path)
    drive: HostObject | None = None
    if not path.startswith("\\\\"):
        letter = path[0].upper()
        drive = HostObject(PSDRIVE_TYPES, {"CurrentLocation": "", "Name": letter, "Provider": FILESYSTEM_PROVIDER,
                                           "Root": f"{letter}:\\", "Description": "", "MaximumSize": None,
                                           "DisplayRoot": None}, value=letter)
    return {
        "PSPath": f"{FILESYSTEM_PROVIDER}::{path}",
        "PSParentPath": f"{FILESYSTEM_PROVIDER}::{parent}" if parent else "",
        "PSChildName": leaf_name(path),
        "PSDrive": drive,
        "PSProvider": HostObject(PROVIDER_TYPES, {
            "ImplementingType": "Microsoft.PowerShell.Commands.FileSystemProvider", "Name": "FileSystem",
            "PSSnapIn": "Microsoft.PowerShell.Core", "ModuleName": "Microsoft.PowerShell.Core", "Description": "",
            "Capabilities": "Filter, ShouldProcess, Credentials"}, value=FILESYSTEM_PROVIDER),
    }


def file_object(model: HostModel, node: FileNode) -> HostObject:
    name = leaf_name(node.path)
    dot = name.rfind(".")
    parent = node.path[: len(node.path) - len(name)].rstrip("\\") or node.path
    return HostObject(FILE_TYPES, {
        "Name": name, "Length": node.size, "DirectoryName": parent, "IsReadOnly": node.read_only, "Exists": True,
        "FullName": node.path, "Extension": name[dot:] if dot > 0 else "", **_times(model, node.created, node.modified),
        "Attributes": "ReadOnly, Archive" if node.read_only else "Archive",
        **provider_notes(model, node.path), "PSIsContainer": False, "Mode": "-ar---" if node.read_only else "-a----",
        "BaseName": name[:dot] if dot > 0 else name, "Target": [], "LinkType": None,
    })


def folder_object(model: HostModel, path: str, created: float) -> HostObject:
    name = leaf_name(path)
    return HostObject(DIR_TYPES, {
        "Name": name, "FullName": path, "Exists": True, "Extension": "", **_times(model, created, created),
        "Attributes": "Directory", **provider_notes(model, path), "PSIsContainer": True, "Mode": "d-----",
        "BaseName": name, "Target": [], "LinkType": None,
    })


def item_object(model: HostModel, path: str) -> HostObject:
    canon = canonical_path(path)
    node = model.files.get(canon.lower())
    if node is not None:
        return file_object(model, node)
    folder = model.folders.get(canon.lower())
    if folder is not None:
        return folder_object(model, folder.path, folder.created)
    if canon.lower() in model.roots:
        return folder_object(model, model.roots[canon.lower()], 0.0)
    raise ModelError(f"Cannot find path '{path}' because it does not exist.", category="ObjectNotFound",
                     reason="PathNotFound", target=path,
                     exception_type="System.Management.Automation.ItemNotFoundException")


# --- implementations ---------------------------------------------------------------------------


def _vms_from(ctx: Context, b: Bound, name_param: str = "Name") -> list[VM]:
    model = ctx.model
    if "VM" in b:
        obj: HostObject = b["VM"]
        return [model.vm(str(obj["Id"]))]
    out: list[VM] = []
    for name in b.get(name_param, []):
        found = [vm for vm in model.vms.values() if fnmatch.fnmatchcase(vm.name.lower(), name.lower())]
        if not found:
            raise ModelError(f"Hyper-V was unable to find a virtual machine with name '{name}'.",
                             category="InvalidArgument", reason="InvalidParameter", target=name)
        out.extend(found)
    return out


def get_vm(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    if "Id" in b:
        return [vm_object(model, model.vm(b["Id"]))]
    if "Name" in b:
        out: list[HostObject] = []
        for name in b["Name"]:
            found = [vm for vm in model.vms.values() if fnmatch.fnmatchcase(vm.name.lower(), name.lower())]
            if not found and not any(ch in name for ch in "*?"):
                raise ModelError(f"Hyper-V was unable to find a virtual machine with name '{name}'.",
                                 category="InvalidArgument", reason="InvalidParameter", target=name)
            out.extend(vm_object(model, vm) for vm in found)
        return out
    return [vm_object(model, vm) for vm in model.vms.values()]


def get_vm_hard_disk_drive(ctx: Context, b: Bound) -> list[HostObject]:
    def wanted(d: Drive) -> bool:
        return ((b.get("ControllerType") is None or d.controller_type == b["ControllerType"])
                and (b.get("ControllerNumber") is None or d.controller_number == b["ControllerNumber"])
                and (b.get("ControllerLocation") is None or d.controller_location == b["ControllerLocation"]))

    return [drive_object(ctx.model, vm, d) for vm in _vms_from(ctx, b, "VMName") for d in vm.drives if wanted(d)]


def get_vm_snapshot(ctx: Context, b: Bound) -> list[HostObject]:
    out: list[HostObject] = []
    pattern = b.get("Name")
    for vm in _vms_from(ctx, b, "VMName"):
        for snap in vm.snapshots:
            if pattern is None or fnmatch.fnmatchcase(snap.name.lower(), pattern.lower()):
                out.append(snapshot_object(ctx.model, vm, snap))
    return out


def get_vhd(ctx: Context, b: Bound) -> list[HostObject]:
    out: list[HostObject] = []
    for path in b["Path"]:
        node = ctx.model.vhd_node(path)
        other = ctx.model.held_elsewhere.get(node.key)
        if other is not None:  # shared storage: only the host using the disk may Get-VHD it
            raise ModelError(f"Getting the mounted storage instance for the path '{node.path}' failed. The process "
                             "cannot access the file because it is being used by another process. (0x80070020)",
                             category="ResourceBusy", reason="ObjectInUse", target=node.path,
                             exception_type=HYPERV_EXCEPTION)
        out.append(vhd_object(ctx.model, node))
    return out


def new_vhd(ctx: Context, b: Bound) -> list[HostObject]:
    out: list[HostObject] = []
    for path in b["Path"]:
        if "ParentPath" in b:
            node = ctx.model.new_vhd_differencing(path, b["ParentPath"])
        elif "SizeBytes" in b:
            node = ctx.model.new_vhd_dynamic(path, b["SizeBytes"])
        else:
            raise ModelError("Cannot process command because of one or more missing mandatory parameters: "
                             "ParentPath SizeBytes.", category="InvalidArgument", reason="MissingMandatoryParameter",
                             exception_type=BINDING_EXCEPTION)
        out.append(vhd_object(ctx.model, node))
    return out


def set_vhd(ctx: Context, b: Bound) -> list[HostObject]:
    node = ctx.model.set_vhd_parent(b["Path"], b["ParentPath"], b.get("LeafPath"))
    return [vhd_object(ctx.model, node)] if b.get("Passthru") else []


def new_vm(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    path = b.get("Path", "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V")
    vm = model.new_vm(b.get("Name", "New Virtual Machine"), path, b.get("VHDPath"),
                      b.get("MemoryStartupBytes", 512 * 1024 * 1024), b.get("Generation", 1), b.get("SwitchName"))
    return [vm_object(model, vm)]


def set_vm(ctx: Context, b: Bound) -> list[HostObject]:
    out: list[HostObject] = []
    for vm in _vms_from(ctx, b):
        ctx.model.set_vm(vm, notes=b.get("Notes"), processor_count=b.get("ProcessorCount"),
                         checkpoint_type=b.get("CheckpointType"))
        if b.get("Passthru"):
            out.append(vm_object(ctx.model, vm))
    return out


def checkpoint_vm(ctx: Context, b: Bound) -> list[HostObject]:
    out: list[HostObject] = []
    for vm in _vms_from(ctx, b):
        snap = ctx.model.checkpoint_vm(vm, b.get("SnapshotName"))
        if b.get("Passthru"):
            out.append(snapshot_object(ctx.model, vm, snap))
    return out


def start_vm(ctx: Context, b: Bound) -> list[HostObject]:
    out: list[HostObject] = []
    for vm in _vms_from(ctx, b):
        ctx.model.start_vm(vm)
        if b.get("Passthru"):
            out.append(vm_object(ctx.model, vm))
    return out


def stop_vm(ctx: Context, b: Bound) -> list[HostObject]:
    out: list[HostObject] = []
    as_job = bool(b.get("AsJob"))
    for vm in _vms_from(ctx, b):
        if as_job:  # the job runs the same stop; its failure shows only in the job and the VM's state
            try:
                ctx.model.stop_vm(vm, turn_off=bool(b.get("TurnOff")))
                state = "Running"
            except ModelError:
                state = "Failed"
            out.append(job_object(ctx.model, "Stop-VM", state))
            continue
        blocks = ctx.model.stop_vm(vm, turn_off=bool(b.get("TurnOff")))
        if blocks > 0:  # synchronous graceful stop: the caller waits for the guest (host.py sleeps)
            ctx.extra["block_seconds"] = max(float(ctx.extra.get("block_seconds", 0.0)), blocks)
            if vm.stop_fails:
                ctx.extra["then_fail"] = ctx.error(failed_to_stop(vm.name))
        if b.get("Passthru"):
            out.append(vm_object(ctx.model, vm))
    return out


def resume_vm(ctx: Context, b: Bound) -> list[HostObject]:
    out: list[HostObject] = []
    for vm in _vms_from(ctx, b):
        ctx.model.resume_vm(vm)
        if b.get("Passthru"):
            out.append(vm_object(ctx.model, vm))
    return out


def set_vm_firmware(ctx: Context, b: Bound) -> list[HostObject]:
    for vm in _vms_from(ctx, b):
        ctx.model.set_firmware(vm, secure_boot=b.get("EnableSecureBoot"), template=b.get("SecureBootTemplate"))
    return []


JOB_TYPES = ("Microsoft.HyperV.PowerShell.VMJob", "System.Management.Automation.Job", "System.Object")


# --- the guest (issue 14) ------------------------------------------------------------------------

# Type names and properties as a real trace shows them (pluralsight/PS-AutoLab-Env#237).
INTEGRATION_TYPES = ("Microsoft.HyperV.PowerShell.VMIntegrationComponent", "Microsoft.HyperV.PowerShell.VMDevice",
                     "Microsoft.HyperV.PowerShell.VMComponentObject",
                     "Microsoft.HyperV.PowerShell.VirtualizationObject", "System.Object")
ADAPTER_TYPES = ("Microsoft.HyperV.PowerShell.VMNetworkAdapter", "Microsoft.HyperV.PowerShell.VMNetworkAdapterBase",
                 "Microsoft.HyperV.PowerShell.VirtualMachineComponent",
                 "Microsoft.HyperV.PowerShell.VirtualizationObject", "System.Object")
INTEGRATION_SERVICES = ("Guest Service Interface", "Heartbeat", "Key-Value Pair Exchange", "Shutdown",
                        "Time Synchronization", "VSS")
INTEGRATION_SERVICE_NAMES = {
    # Integration services are named in the host's display language (docker/for-win#409 lists a German
    # host's; PlagueHO/LabBuilder#183: `-Name Heartbeat` on it fails); same order as INTEGRATION_SERVICES.
    "en-US": INTEGRATION_SERVICES,
    "de-DE": ("Gastdienstschnittstelle", "Takt", "Austausch von Schlüsselwertepaaren", "Herunterfahren",
              "Zeitsynchronisierung", "VSS"),
}
KVP_CLASS = "Msvm_KvpExchangeComponent"
VIRTUALIZATION_NAMESPACE = "root\\virtualization\\v2"


def set_vm_memory(ctx: Context, b: Bound) -> list[HostObject]:
    dynamic_params = ("DynamicMemoryEnabled", "MinimumBytes", "MaximumBytes", "Buffer")
    for vm in _vms_from(ctx, b, "VMName"):
        if any(p in b for p in dynamic_params):
            ctx.model.set_memory_config(vm, startup=b.get("StartupBytes"), dynamic=b.get("DynamicMemoryEnabled"),
                                        minimum=b.get("MinimumBytes"), maximum=b.get("MaximumBytes"),
                                        buffer=b.get("Buffer"))
        elif "StartupBytes" in b:
            ctx.model.set_memory(vm, int(b["StartupBytes"]))
    return []


def get_vm_integration_service(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    names = b.get("Name")
    shown = INTEGRATION_SERVICE_NAMES[model.ui_culture]
    for name in names or []:
        if not any(ch in name for ch in "*?[") and not any(s.lower() == name.lower() for s in shown):
            # PlagueHO/LabBuilder#183 (German host, `-Name Heartbeat`): "Ein Parameter ist ungültig. Es wurde
            # keine Integrationskomponente mit dem angegebenen Namen gefunden." [strict: English wording ours]
            raise ModelError("A parameter is invalid. No integration component with the given name was found.",
                             category="InvalidArgument", reason="InvalidParameter", target=name,
                             exception_type="Microsoft.HyperV.PowerShell.VirtualizationInvalidArgumentException")
    out: list[HostObject] = []
    for vm in _vms_from(ctx, b, "VMName"):
        for canonical, service in zip(INTEGRATION_SERVICES, shown, strict=True):
            if names is not None and not any(fnmatch.fnmatchcase(service.lower(), n.lower()) for n in names):
                continue
            if canonical == "Heartbeat":
                status = model.heartbeat(vm)
            else:
                status = "OK" if model.guest_up_for(vm) is not None else ("No Contact" if model.heartbeat(vm) else "")
            out.append(HostObject(INTEGRATION_TYPES, {
                "Name": service, "VMName": vm.name, "VMId": vm.id, "Enabled": canonical != "Guest Service Interface",
                "PrimaryStatusDescription": status or None, "SecondaryStatusDescription": None,
                "Id": f"Microsoft:{vm.id.upper()}\\{service}", "ComputerName": model.host_name,
            }))
    return out


def _adapter_object(model: HostModel, vm: VM, adapter: NetAdapter) -> HostObject:
    return HostObject(ADAPTER_TYPES, {
        "Name": adapter.name, "VMName": vm.name, "VMId": vm.id,
        "Id": f"Microsoft:{vm.id.upper()}\\{adapter.id.upper()}",
        "MacAddress": adapter.mac, "DynamicMacAddressEnabled": not adapter.static_mac,
        "SwitchName": adapter.switch_name,
        "Connected": adapter.switch_name is not None, "IPAddresses": model.guest_addresses(vm, adapter),
        "Status": ["Ok"] if vm.state == "Running" else [], "IsLegacy": False, "ComputerName": model.host_name,
    })


def get_vm_network_adapter(ctx: Context, b: Bound) -> list[HostObject]:
    name = b.get("Name")
    return [_adapter_object(ctx.model, vm, adapter) for vm in _vms_from(ctx, b, "VMName") for adapter in vm.adapters
            if name is None or fnmatch.fnmatchcase(adapter.name.lower(), name.lower())]


def _adapter_from(ctx: Context, obj: HostObject) -> tuple[VM, NetAdapter]:
    vm = ctx.model.vm(str(obj["VMId"]))
    wanted = str(obj["Id"]).lower()
    adapter = next((a for a in vm.adapters if f"microsoft:{vm.id}\\{a.id}".lower() == wanted), None)
    if adapter is None:
        raise ModelError(f"Hyper-V was unable to find the network adapter '{obj['Id']}'.", category="ObjectNotFound",
                         reason="ObjectNotFound", target=str(obj["Id"]))
    return vm, adapter


def add_vm_network_adapter(ctx: Context, b: Bound) -> list[HostObject]:
    out = []
    for vm in _vms_from(ctx, b, "VMName"):
        adapter = ctx.model.add_network_adapter(vm, str(b.get("Name") or "Network Adapter"), b.get("SwitchName"),
                                                b.get("StaticMacAddress"))
        if b.get("Passthru"):
            out.append(_adapter_object(ctx.model, vm, adapter))
    return out


def remove_vm_network_adapter(ctx: Context, b: Bound) -> list[HostObject]:
    vm, adapter = _adapter_from(ctx, b["VMNetworkAdapter"])
    ctx.model.remove_network_adapter(vm, adapter)
    return []


def set_vm_network_adapter_vlan(ctx: Context, b: Bound) -> list[HostObject]:
    if not b.get("Access") or "VlanId" not in b:
        raise ModelError("Only -Access -VlanId is modelled.", category="NotImplemented", reason="NotImplemented")
    _, adapter = _adapter_from(ctx, b["VMNetworkAdapter"])
    ctx.model.set_adapter_vlan(adapter, int(b["VlanId"]))
    return []


def _kvp_item_xml(name: str, data: str) -> str:
    """An embedded Msvm_KvpExchangeDataItem in CIM-XML, as GuestIntrinsicExchangeItems carries it."""
    from xml.sax.saxutils import escape

    return ('<INSTANCE CLASSNAME="Msvm_KvpExchangeDataItem">'
            f'<PROPERTY NAME="Data" TYPE="string"><VALUE>{escape(data)}</VALUE></PROPERTY>'
            f'<PROPERTY NAME="Name" TYPE="string"><VALUE>{escape(name)}</VALUE></PROPERTY>'
            '<PROPERTY NAME="Source" TYPE="uint16"><VALUE>2</VALUE></PROPERTY></INSTANCE>')


def _kvp_cim_instances(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    namespace, class_name = str(b.get("Namespace") or "root\\cimv2"), str(b["ClassName"])
    wanted = namespace.replace("/", "\\").lower() == VIRTUALIZATION_NAMESPACE.lower()
    if not wanted or class_name.lower() != KVP_CLASS.lower():
        # Only the Hyper-V KVP component is modelled; anything else is refused loudly [strict].
        # WMI's "Invalid class" (0x80041010), shaped as for Win32_Process below.
        raise _cim_error("Invalid class ", "ObjectNotFound", "0x80041010", class_name)
    wanted_id: str | None = None
    if "Filter" in b:
        # WQL `SystemName = '<guid>'` is the one filter form modelled [strict]; WMI refuses a malformed
        # query (0x80041017); a filter that matches nothing gives no output and no error.
        match = _SYSTEM_NAME_FILTER.match(b["Filter"])
        if match is None:
            raise _cim_error("Invalid query ", "InvalidArgument", "0x80041017", b["Filter"])
        wanted_id = match.group(1).lower()
    types = (f"Microsoft.Management.Infrastructure.CimInstance#root/virtualization/v2/{KVP_CLASS}",
             f"Microsoft.Management.Infrastructure.CimInstance#{KVP_CLASS}",
             "Microsoft.Management.Infrastructure.CimInstance", "System.Object")
    return [HostObject(types, {
        "SystemName": vm.id.upper(), "ElementName": "Key-Value Pair Exchange", "CreationClassName": KVP_CLASS,
        "GuestIntrinsicExchangeItems": [_kvp_item_xml(k, v) for k, v in model.kvp_items(vm).items()],
        "EnabledState": 2 if vm.state == "Running" else 3,
    }) for vm in model.vms.values() if wanted_id is None or vm.id.lower() == wanted_id]


def job_object(model: HostModel, command: str, state: str) -> HostObject:
    """What -AsJob writes: a job (Id, Name, State, Command); the job's type name is not documented
    [not verified against a real host]."""
    model.job_ids += 1
    return HostObject(JOB_TYPES, {"Id": model.job_ids, "Name": f"Job{model.job_ids}", "State": state,
                                  "Command": command, "HasMoreData": state == "Failed",
                                  "PSJobTypeName": "VMJob", "Location": model.host_name})


def remove_vm(ctx: Context, b: Bound) -> list[HostObject]:
    for vm in _vms_from(ctx, b):
        ctx.model.remove_vm(vm)
    return []


def remove_vm_snapshot(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    targets: list[tuple[VM, Snapshot]] = []
    if "VMSnapshot" in b:
        obj: HostObject = b["VMSnapshot"]
        vm = model.vm(str(obj["VMId"]))
        snap = next((s for s in vm.snapshots if s.id == obj["Id"]), None)
        if snap is None:
            raise ModelError(f"Hyper-V was unable to find a checkpoint with ID '{obj['Id']}'.",
                             category="ObjectNotFound", reason="ObjectNotFound", target=str(obj["Id"]))
        targets.append((vm, snap))
    else:
        if "Name" not in b:
            raise ModelError("Cannot process command because of one or more missing mandatory parameters: Name.",
                             category="InvalidArgument", reason="MissingMandatoryParameter",
                             exception_type=BINDING_EXCEPTION)
        for vm in _vms_from(ctx, b, "VMName"):
            for name in b["Name"]:
                targets.extend((vm, s) for s in vm.snapshots if fnmatch.fnmatchcase(s.name.lower(), name.lower()))
    out: list[HostObject] = []
    for vm, snap in targets:
        model.remove_snapshot(vm, snap)
        if b.get("Passthru"):
            out.append(snapshot_object(model, vm, snap))
    return out


def _paths(b: Bound) -> list[str]:
    return list(b.get("LiteralPath") or b.get("Path") or [])


def test_path(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    return [primitive(model.exists(canonical_path(p)) and not model.observe_status_read(canonical_path(p),
                                                                                          opens=False))
            for p in _paths(b)]


def get_item(ctx: Context, b: Bound) -> list[HostObject]:
    return [item_object(ctx.model, p) for p in _paths(b)]


def get_child_item(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    out: list[HostObject] = []
    for path in _paths(b):
        canon = canonical_path(path)
        node = model.files.get(canon.lower())
        if node is not None:
            out.append(file_object(model, node))
            continue
        if not model.is_dir(canon):
            raise ModelError(f"Cannot find path '{path}' because it does not exist.", category="ObjectNotFound",
                             reason="PathNotFound", target=path,
                             exception_type="System.Management.Automation.ItemNotFoundException")
        folders, files = model.children(canon)
        out.extend(folder_object(model, f.path, f.created) for f in folders)
        out.extend(file_object(model, n) for n in files)
    return out


def get_content(ctx: Context, b: Bound) -> list[HostObject]:
    """Each string carries the provider's notes and ReadCount (its line number; 1 with -Raw), so it
    travels as an extended primitive object (<Obj><S>..</S><MS>..</MS></Obj>), as Windows sends it."""
    out: list[HostObject] = []
    for path in _paths(b):
        if ctx.model.observe_status_read(canonical_path(path), opens=True):
            raise path_not_found(path)  # between the old worker's delete and its move
        text = ctx.model.read_text(path)
        notes = provider_notes(ctx.model, canonical_path(path))
        lines = [text] if b.get("Raw") else text.splitlines()
        out.extend(HostObject(("System.String", "System.Object"), {**notes, "ReadCount": n}, line)
                   for n, line in enumerate(lines, start=1))
    return out


def new_item(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    item_type = (b.get("ItemType") or "File").lower()
    out: list[HostObject] = []
    for path in b["Path"]:
        canon = canonical_path(path)
        if item_type == "directory":
            if model.is_dir(canon) and not b.get("Force"):
                raise ModelError(f"An item with the specified name {canon} already exists.",
                                 category="ResourceExists", reason="DirectoryExist", target=canon,
                                 exception_type="System.IO.IOException")
            made = model.ensure_folder(canon)
            if isinstance(made, Folder):
                out.append(folder_object(model, made.path, made.created))
            else:
                out.append(folder_object(model, made, 0.0))
        elif item_type == "file":
            existing = model.files.get(canon.lower())
            if model.is_dir(canon) or (existing is not None and not b.get("Force")):
                raise ModelError(f"The file '{canon}' already exists.", category="WriteError",
                                 reason="NewItemIOError", target=canon, exception_type="System.IO.IOException")
            if existing is not None and (existing.acl_protected or existing.read_only
                                         or model.in_use_by(existing.key)):
                raise ModelError(f"Access to the path '{canon}' is denied.", category="PermissionDenied",
                                 reason="NewItemUnauthorizedAccessError", target=canon,
                                 exception_type="System.UnauthorizedAccessException")
            if b.get("Force"):
                parent = canon.rsplit("\\", 1)[0]
                model.ensure_folder(parent)
            model.require_folder_of(canon)
            text = b.get("Value", "")
            if existing is not None:
                del model.files[existing.key]
            node = model.add_file(FileNode(canon, model.now, model.now, float(len(text.encode())), text=text))
            out.append(file_object(model, node))
        else:
            raise ModelError(f"The type is not a known type for the file system. Only \"file\" and \"directory\" can "
                             f"be created (got '{b.get('ItemType')}').", category="InvalidArgument",
                             reason="NewItemUnknownType", target=str(b.get("ItemType")))
    return out


def remove_item(ctx: Context, b: Bound) -> list[HostObject]:
    for path in _paths(b):
        ctx.model.remove_item(path, force=bool(b.get("Force")), recurse=bool(b.get("Recurse")))
    return []


def stop_process(ctx: Context, b: Bound) -> list[HostObject]:
    for pid in b["Id"]:
        ctx.model.stop_process(pid)
    return []


# --- the host probe (hyperv/probe.py) -------------------------------------------------------------

VMHOST_TYPES = ("Microsoft.HyperV.PowerShell.VMHost", "Microsoft.HyperV.PowerShell.VirtualizationObject",
                "System.Object")
MODULE_TYPES = ("System.Management.Automation.PSModuleInfo", "System.Object")
# Modules the simulated session has loaded: (name, version, type, path). Hyper-V counts as loaded from
# the start (a real session autoloads it at its first Hyper-V cmdlet; the probe runs Get-VMHost first).
LOADED_MODULES = (
    ("Hyper-V", "2.0.0.0", "Binary", "C:\\Windows\\system32\\WindowsPowerShell\\v1.0\\Modules\\Hyper-V\\2.0.0.0\\"
     "Microsoft.HyperV.PowerShell.Cmdlets.dll"),
    ("Microsoft.PowerShell.Management", "3.1.0.0", "Manifest",
     "C:\\Windows\\system32\\WindowsPowerShell\\v1.0\\Modules\\Microsoft.PowerShell.Management\\"
     "Microsoft.PowerShell.Management.psd1"),
    ("Microsoft.PowerShell.Utility", "3.1.0.0", "Manifest",
     "C:\\Windows\\system32\\WindowsPowerShell\\v1.0\\Modules\\Microsoft.PowerShell.Utility\\"
     "Microsoft.PowerShell.Utility.psd1"),
)


def _matches(name: str, patterns: Sequence[str] | None) -> bool:
    return patterns is None or any(fnmatch.fnmatchcase(name.lower(), p.lower()) for p in patterns)


def get_vm_host(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    for computer in b.get("ComputerName") or []:
        if computer.lower() not in (model.host_name.lower(), "localhost", ".", "127.0.0.1"):
            raise ModelError(f"Hyper-V was unable to find a virtual machine host on computer '{computer}'.",
                             category="ObjectNotFound", reason="InvalidParameter", target=computer,
                             exception_type="Microsoft.HyperV.PowerShell.VirtualizationException")
    return [HostObject(VMHOST_TYPES, {
        "ComputerName": model.host_name, "Name": model.host_name,
        "FullyQualifiedDomainName": model.host_name.lower() + ".sim.local",
        "VirtualMachinePath": model.virtual_machine_path, "VirtualHardDiskPath": model.virtual_hard_disk_path,
        "LogicalProcessorCount": model.logical_processors, "MemoryCapacity": model.memory_capacity,
        "EnableEnhancedSessionMode": False, "NumaSpanningEnabled": True, "MaximumStorageMigrations": 2,
        "MaximumVirtualMachineMigrations": 2, "VirtualMachineMigrationEnabled": False,
        "MacAddressMinimum": "00155D010000", "MacAddressMaximum": "00155D0100FF",
    })]


def get_module(ctx: Context, b: Bound) -> list[HostObject]:
    patterns = b.get("Name")
    return [HostObject(MODULE_TYPES, {
        "Name": name, "Version": version, "ModuleType": module_type, "Path": path,
        "ModuleBase": path.rsplit("\\", 1)[0],
    }, value=name) for name, version, module_type, path in LOADED_MODULES if _matches(name, patterns)
        and (name != "Hyper-V" or ctx.model.hyperv_module)]


def get_psdrive(ctx: Context, b: Bound) -> list[HostObject]:
    model = ctx.model
    providers = b.get("PSProvider")
    filesystem = _matches("FileSystem", providers) or _matches("Microsoft.PowerShell.Core\\FileSystem", providers)
    patterns = b.get("Name")
    drives = [r for r in model.drive_letters() if filesystem and _matches(r[0], patterns)]
    for pattern in patterns or []:
        if not any(ch in pattern for ch in "*?[") and not any(r[0].lower() == pattern.lower() for r in drives):
            raise ModelError(f"Cannot find drive. A drive with the name '{pattern}' does not exist.",
                             category="ObjectNotFound", reason="DriveNotFound", target=pattern,
                             exception_type="System.Management.Automation.DriveNotFoundException")
    return [HostObject(PSDRIVE_TYPES, {
        "Name": root[0], "Root": root, "Free": model.free_bytes(), "Used": model.used_bytes(),
        "Provider": "Microsoft.PowerShell.Core\\FileSystem", "Description": "", "CurrentLocation": "",
        "DisplayRoot": None,
    }, value=root[0]) for root in drives]


POWERSHELL_EXE = "C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe"


def start_background_copy(ctx: Context, b: Bound) -> list[HostObject]:
    """scripts.START_BACKGROUND_COPY, as Windows runs it: Win32_Process.Create of the full
    powershell.exe path with the worker as -EncodedCommand (the simulator runs only the known worker:
    any other worker text is refused, it cannot know what it would do)."""
    from hyperv_operator.hyperv.scripts import WORKER_COMMAND_LINE_TAIL, script_name

    worker = "current" if script_name(b["Worker"]) == "CopyWorker" else LEGACY_WORKER_IDS.get(
        hashlib.sha256(str(b["Worker"]).encode("utf-8")).hexdigest())
    if worker is None:
        raise ModelError("The simulated host runs only the operator's fixed copy worker "
                         "(hyperv_operator.hyperv.scripts.COPY_WORKER); this -Worker text is not it.",
                         category="NotImplemented", reason="", fq_error_id="WorkerNotRecognized",
                         exception_type="System.NotSupportedException")
    job = ctx.model.start_copy(b["Source"], b["Destination"], b["PartialPath"], b["StatusPath"],
                               fail_half_way=ctx.fault_disk_full,
                               worker_command_line=f'"{POWERSHELL_EXE}" -NoProfile -NonInteractive '
                                                   f"{WORKER_COMMAND_LINE_TAIL}",
                               create_return=int(ctx.extra.get("create_return", 0)), worker=worker)
    return [HostObject(PSCUSTOM_TYPES, {"ProcessId": job.pid, "ProcessCreatedAt": iso_o(ctx.model.date(job.started)),
                                        "StatusPath": b["StatusPath"], "PartialPath": b["PartialPath"]})]


def start_background_copy_bare_powershell(ctx: Context, b: Bound) -> list[HostObject]:
    """The start script before the fidelity pass, run as Windows runs it: it wrote a "Running" status
    (processId 0) first, then Win32_Process.Create with a bare `powershell.exe` got 9, path not found
    (ansible/ansible#70655; strict: real hosts fail so only sometimes), and the script threw, leaving
    the stale status behind."""
    if ctx.model.exists(canonical_path(b["Destination"])):
        ctx.model.start_copy(b["Source"], b["Destination"], b["PartialPath"], b["StatusPath"])  # "already exists"
    node = ctx.model.file(b["Source"])
    started = iso_o(ctx.model.date())
    ctx.model.write_text(b["StatusPath"], json.dumps(
        {"state": "Running", "bytesCopied": 0, "bytesTotal": node.size, "processId": 0, "startedAt": started,
         "updatedAt": started, "finishedAt": None, "error": None}, separators=(",", ":")))
    message = "Win32_Process.Create failed with code 9"
    raise ModelError(message, category="OperationStopped", reason="", fq_error_id=message,
                     exception_type="System.Management.Automation.RuntimeException")


LEGACY_SCRIPT_IDS = {
    "5287d716f0bd7662cae0640db0650856bf6242d96f819b4538f00f12a0820df9": "StartBackgroundCopyBarePowershell",
}
"""sha256 of scripts the operator sent before the fidelity pass -> their modelled behaviour on Windows."""

LEGACY_WORKER_IDS = {
    "50ad71607501298bd79bb75a10f3187db9a74917294c71a93733a6391a7fda7b": "move-item",
}
"""sha256 of copy workers the operator sent before the fidelity pass -> how the model runs them
("move-item": status replaced with Move-Item -Force, a failed write aborts the copy)."""


CIM_PROCESS_TYPES = (*(f"Microsoft.Management.Infrastructure.CimInstance#root/cimv2/{c}" for c in
                       ("Win32_Process", "CIM_Process", "CIM_LogicalElement", "CIM_ManagedSystemElement")),
                     "Microsoft.Management.Infrastructure.CimInstance", "System.Object")
_SYSTEM_NAME_FILTER = re.compile(r"^\s*SystemName\s*=\s*'([0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-"
                                 r"[0-9A-Fa-f]{12})'\s*$", re.IGNORECASE)
_PROCESS_ID_FILTER = re.compile(r"^\s*ProcessId\s*=\s*(\d{1,10})\s*$", re.IGNORECASE)


def _process_cim_instances(ctx: Context, b: Bound) -> list[HostObject]:
    """Get-CimInstance -ClassName Win32_Process [-Filter "ProcessId = <n>"]: the processes, as CIM
    instances (ProcessId, Name, CommandLine, ExecutablePath, CreationDate). Only this class and this
    filter form are modelled [strict]; WMI refuses an unknown class (0x80041010) and a malformed WQL
    filter (0x80041017); a filter that matches nothing gives no output and no error."""
    model = ctx.model
    if str(b["ClassName"]).lower() != "win32_process":
        raise _cim_error("Invalid class ", "ObjectNotFound", "0x80041010", str(b["ClassName"]))
    wanted: int | None = None
    if "Filter" in b:
        match = _PROCESS_ID_FILTER.match(b["Filter"])
        if match is None:
            raise _cim_error("Invalid query ", "InvalidArgument", "0x80041017", b["Filter"])
        wanted = int(match.group(1))
    return [HostObject(CIM_PROCESS_TYPES, {
        "ProcessId": p.pid, "Name": p.name, "CommandLine": p.command_line, "CreationDate": model.date(p.created),
        "ExecutablePath": POWERSHELL_EXE if p.name == "powershell.exe" else f"C:\\Windows\\System32\\{p.name}",
        "Handle": str(p.pid), "CSName": model.host_name,
    }) for p in sorted(model.processes.values(), key=lambda p: p.pid) if wanted is None or p.pid == wanted]


def get_cim_instance(ctx: Context, b: Bound) -> list[HostObject]:
    """Get-CimInstance: root\\virtualization\\v2 (Hyper-V's KVP component) or root\\cimv2 (Win32_Process);
    every other namespace or class is refused by the handlers."""
    namespace = str(b.get("Namespace") or "root\\cimv2").replace("/", "\\").lower()
    if namespace == VIRTUALIZATION_NAMESPACE.lower():
        return _kvp_cim_instances(ctx, b)
    return _process_cim_instances(ctx, b)


# --- host-mounted disks: the first-boot configuration disk (issue 14) --------------------------------

STORAGE_NS = "Microsoft.Management.Infrastructure.CimInstance#ROOT/Microsoft/Windows/Storage/"
MSFT_DISK = STORAGE_NS + "MSFT_Disk"
MSFT_PARTITION = STORAGE_NS + "MSFT_Partition"
MSFT_VOLUME = STORAGE_NS + "MSFT_Volume"
_CIM = ("Microsoft.Management.Infrastructure.CimInstance", "System.Object")
FILE_SYSTEMS = ("FAT", "FAT32", "exFAT", "NTFS", "ReFS")
ENCODINGS = ("Unknown", "String", "Unicode", "Byte", "BigEndianUnicode", "UTF8", "UTF7", "UTF32", "Ascii",
             "Default", "Oem", "BigEndianUTF32")


def _disk_object(model: HostModel, mount: Mount) -> HostObject:
    vhd = model.files[mount.key].vhd
    assert vhd is not None
    return HostObject((MSFT_DISK, *_CIM), {
        "Number": mount.disk_number, "DiskNumber": mount.disk_number, "Location": model.files[mount.key].path,
        "PartitionStyle": vhd.partition_style or "RAW", "Size": vhd.size, "BusType": "File Backed Virtual",
        "OperationalStatus": "Online", "FriendlyName": "Msft Virtual Disk",
    })


def _partition_object(model: HostModel, mount: Mount) -> HostObject:
    vhd = model.files[mount.key].vhd
    assert vhd is not None
    return HostObject((MSFT_PARTITION, *_CIM), {
        "DiskNumber": mount.disk_number, "PartitionNumber": 1, "DriveLetter": mount.letter or "\0",
        "Size": vhd.size - 1024 * 1024, "Type": "FAT32 XINT13" if vhd.volume else "Unknown",
        "AccessPaths": [f"{mount.letter}:\\"] if mount.letter else [],
    })


def mount_vhd(ctx: Context, b: Bound) -> list[HostObject]:
    out = []
    for path in b["Path"]:
        mount = ctx.model.mount_vhd(path, no_drive_letter=bool(b.get("NoDriveLetter")))
        if b.get("Passthru"):
            out.append(vhd_object(ctx.model, ctx.model.files[mount.key]))
    return out


_PARTITION_TYPES = {"Basic": "Basic", "System": "System", "Reserved": "Reserved", "Recovery": "Recovery", "IFS": "IFS"}


def get_partition(ctx: Context, b: Bound) -> list[HostObject]:
    """Get-Partition -DiskNumber (bound by property name from Mount-VHD -Passthru's DiskNumber): a
    mounted disk's partitions. An OS image: one per partition, with its drive letter if it got one."""
    number = int(b["DiskNumber"])
    mount = ctx.model.mount_of(number)
    node = ctx.model.files[mount.key]
    volumes = ctx.model.os_view(node)
    if volumes is None:
        assert node.vhd is not None
        return [_partition_object(ctx.model, mount)] if node.vhd.partition else []
    letters = {index: letter for letter, index in mount.letters.items()}
    return [HostObject((MSFT_PARTITION, *_CIM), {
        "DiskNumber": number, "PartitionNumber": index + 1, "DriveLetter": letters.get(index, "\0"),
        "Type": _PARTITION_TYPES.get(volume.partition_type, "Unknown"),
        "AccessPaths": [f"{letters[index]}:\\"] if index in letters else [],
    }) for index, volume in enumerate(volumes)]


def dismount_vhd(ctx: Context, b: Bound) -> list[HostObject]:
    for path in b["Path"]:
        ctx.model.dismount_vhd(path)
    return []


def _disk_number(b: Bound, name: str) -> int:
    if "InputObject" in b:
        return int(b["InputObject"]["Number"])
    return int(b[name])


def initialize_disk(ctx: Context, b: Bound) -> list[HostObject]:
    mount = ctx.model.initialize_disk(_disk_number(b, "Number"), str(b.get("PartitionStyle") or "GPT"))
    return [_disk_object(ctx.model, mount)] if b.get("PassThru") else []


def new_partition(ctx: Context, b: Bound) -> list[HostObject]:
    if not b.get("UseMaximumSize"):
        raise ModelError("Only -UseMaximumSize is modelled.", category="NotImplemented", reason="NotImplemented")
    mount = ctx.model.new_partition(_disk_number(b, "DiskNumber"), assign_letter=bool(b.get("AssignDriveLetter")))
    return [_partition_object(ctx.model, mount)]


def format_volume(ctx: Context, b: Bound) -> list[HostObject]:
    partition: HostObject = b["Partition"]
    mount, volume = ctx.model.format_volume(int(partition["DiskNumber"]), str(b.get("FileSystem") or "NTFS"),
                                            str(b.get("NewFileSystemLabel") or ""))
    vhd = ctx.model.files[mount.key].vhd
    assert vhd is not None
    return [HostObject((MSFT_VOLUME, *_CIM), {
        "DriveLetter": mount.letter, "FileSystemLabel": volume.label, "FileSystem": volume.file_system,
        "FileSystemType": volume.file_system, "Size": vhd.size - 1024 * 1024,
        "SizeRemaining": vhd.size - 2 * 1024 * 1024,
        "HealthStatus": "Healthy", "DriveType": "Fixed",
    })]


def set_content(ctx: Context, b: Bound) -> list[HostObject]:
    value = b.get("Value")
    items = list(value) if isinstance(value, (tuple, list)) else [value]
    byte_encoding = str(b.get("Encoding") or "").lower() == "byte"
    data: bytes | str = b"".join(i for i in items if isinstance(i, bytes)) if any(isinstance(i, bytes) for i in items) \
        else "\r\n".join(str(i) for i in items if i is not None) + "\r\n"
    for path in _paths(b):
        ctx.model.set_content(path, data, byte_encoding=byte_encoding)
    return []


def rename_item(ctx: Context, b: Bound) -> list[HostObject]:
    ctx.model.rename_item(str(b.get("LiteralPath") or b.get("Path")), str(b["NewName"]))
    return []


def add_vm_hard_disk_drive(ctx: Context, b: Bound) -> list[HostObject]:
    out = []
    for vm in _vms_from(ctx, b, "VMName"):
        drive = ctx.model.add_hard_disk_drive(vm, str(b["Path"]), str(b.get("ControllerType") or "SCSI"),
                                              int(b.get("ControllerNumber", 0)), int(b.get("ControllerLocation", 0)))
        if b.get("Passthru"):
            out.append(drive_object(ctx.model, vm, drive))
    return out


def remove_vm_hard_disk_drive(ctx: Context, b: Bound) -> list[HostObject]:
    obj: HostObject = b["VMHardDiskDrive"]
    vm = ctx.model.vm(str(obj["VMId"]))
    wanted = str(obj["Id"]).lower()
    drive = next((d for d in vm.drives if f"microsoft:{vm.id}\\{d.id}".lower() == wanted), None)
    if drive is None:
        raise ModelError(f"Hyper-V was unable to find the drive '{obj['Id']}'.", category="ObjectNotFound",
                         reason="ObjectNotFound", target=str(obj["Id"]))
    ctx.model.remove_hard_disk_drive(vm, drive)
    return []


# --- registry ----------------------------------------------------------------------------------

HYPERV = "Hyper-V"
MGMT = "Microsoft.PowerShell.Management"
CORE = "Microsoft.PowerShell.Core"
_HV = "Microsoft.HyperV.PowerShell.Commands."
_VHD = "Microsoft.Vhd.PowerShell.Cmdlets."
_PS = "Microsoft.PowerShell.Commands."

_VM_INPUT = (Param("VM", "vm", pipeline_type="Microsoft.HyperV.PowerShell.VirtualMachine"),
             Param("Name", "string[]", aliases=("VMName",)))
_VM_ONE_OF = ("VM", "Name")
_VM_EXCL = (("VM", "Name"),)
_LIT = (Param("LiteralPath", "string[]", path=True, aliases=("PSPath", "LP")),
        Param("Path", "string[]", path=True, wildcards=True))
_PATH_ONE_OF = ("LiteralPath", "Path")
_PATH_EXCL = (("LiteralPath", "Path"),)
_CONTROLLER_TYPE = Param("ControllerType", "enum", enum_type="Microsoft.HyperV.PowerShell.ControllerType",
                         choices=("IDE", "SCSI"))
STORAGE = "Storage"


def _cmdlets() -> dict[str, Cmdlet]:
    specs = [
        Cmdlet("Get-VM", HYPERV, _HV + "GetVM",
               (Param("Id", "guid", aliases=("VMId",)), Param("Name", "string[]", aliases=("VMName",))),
               get_vm, exclusive=(("Id", "Name"),)),
        Cmdlet("Get-VMHardDiskDrive", HYPERV, _HV + "GetVMHardDiskDrive",
               (_VM_INPUT[0], Param("VMName", "string[]"), _CONTROLLER_TYPE, Param("ControllerNumber", "int32"),
                Param("ControllerLocation", "int32")), get_vm_hard_disk_drive,
               exclusive=(("VM", "VMName"),), one_of=("VM", "VMName")),
        Cmdlet("Get-VMSnapshot", HYPERV, _HV + "GetVMSnapshot",
               (_VM_INPUT[0], Param("VMName", "string[]"), Param("Name", "string")), get_vm_snapshot,
               exclusive=(("VM", "VMName"),), one_of=("VM", "VMName")),
        Cmdlet("Get-VHD", HYPERV, _VHD + "GetVHD",
               (Param("Path", "string[]", mandatory=True, by_property=True, path=True, aliases=("FullName",)),),
               get_vhd),
        Cmdlet("New-VHD", HYPERV, _VHD + "NewVHD",
               (Param("Path", "string[]", mandatory=True, path=True), Param("ParentPath", "string", path=True),
                Param("Differencing", "switch"), Param("SizeBytes", "uint64"), Param("Dynamic", "switch")),
               new_vhd, exclusive=(("ParentPath", "SizeBytes"), ("Differencing", "Dynamic"))),
        Cmdlet("Set-VHD", HYPERV, _VHD + "SetVHD",
               (Param("Path", "string", mandatory=True, by_property=True, path=True, aliases=("FullName",)),
                Param("ParentPath", "string", mandatory=True, path=True), Param("LeafPath", "string", path=True),
                Param("Passthru", "switch")),
               set_vhd),
        Cmdlet("New-VM", HYPERV, _HV + "NewVM",
               (Param("Name", "string", aliases=("VMName",)), Param("Path", "string", path=True),
                Param("VHDPath", "string", path=True), Param("MemoryStartupBytes", "int64"),
                Param("Generation", "int16"), Param("SwitchName", "string")),
               new_vm),
        Cmdlet("Set-VM", HYPERV, _HV + "SetVM",
               (*_VM_INPUT, Param("Notes", "string", allow_empty=True), Param("ProcessorCount", "int64"),
                Param("CheckpointType", "enum", enum_type="Microsoft.HyperV.PowerShell.CheckpointType",
                      choices=CHECKPOINT_TYPES), Param("Passthru", "switch")),
               set_vm, exclusive=_VM_EXCL, one_of=_VM_ONE_OF),
        Cmdlet("Checkpoint-VM", HYPERV, _HV + "CheckpointVM",
               (*_VM_INPUT, Param("SnapshotName", "string", aliases=("CheckpointName",)),
                Param("Passthru", "switch")),
               checkpoint_vm, exclusive=_VM_EXCL, one_of=_VM_ONE_OF),
        Cmdlet("Start-VM", HYPERV, _HV + "StartVM", (*_VM_INPUT, Param("Passthru", "switch")), start_vm,
               exclusive=_VM_EXCL, one_of=_VM_ONE_OF),
        Cmdlet("Stop-VM", HYPERV, _HV + "StopVM",
               (*_VM_INPUT, Param("Force", "switch"), Param("TurnOff", "switch"), Param("Passthru", "switch"),
                Param("AsJob", "switch")),
               stop_vm, exclusive=_VM_EXCL, one_of=_VM_ONE_OF),
        Cmdlet("Resume-VM", HYPERV, _HV + "ResumeVM", (*_VM_INPUT, Param("Passthru", "switch")), resume_vm,
               exclusive=_VM_EXCL, one_of=_VM_ONE_OF),
        Cmdlet("Set-VMFirmware", HYPERV, _HV + "SetVMFirmware",
               (*_VM_INPUT, Param("EnableSecureBoot", "enum", enum_type="Microsoft.HyperV.PowerShell.OnOffState",
                                  choices=("On", "Off")),
                Param("SecureBootTemplate", "string"), Param("Passthru", "switch")),
               set_vm_firmware, exclusive=_VM_EXCL, one_of=_VM_ONE_OF),
        Cmdlet("Remove-VMSnapshot", HYPERV, _HV + "RemoveVMSnapshot",
               (Param("VMSnapshot", "snapshot", pipeline_type="Microsoft.HyperV.PowerShell.VMSnapshot"),
                _VM_INPUT[0], Param("VMName", "string[]"), Param("Name", "string[]"),
                Param("Passthru", "switch")),
               remove_vm_snapshot, exclusive=(("VMSnapshot", "VM", "VMName"),),
               one_of=("VMSnapshot", "VM", "VMName")),
        Cmdlet("Remove-VM", HYPERV, _HV + "RemoveVM", (*_VM_INPUT, Param("Force", "switch")), remove_vm,
               exclusive=_VM_EXCL, one_of=_VM_ONE_OF),
        Cmdlet("Test-Path", MGMT, _PS + "TestPathCommand", _LIT, test_path, exclusive=_PATH_EXCL,
               one_of=_PATH_ONE_OF),
        Cmdlet("Get-Item", MGMT, _PS + "GetItemCommand", (*_LIT, Param("Force", "switch")), get_item,
               exclusive=_PATH_EXCL, one_of=_PATH_ONE_OF),
        Cmdlet("Get-ChildItem", MGMT, _PS + "GetChildItemCommand", (*_LIT, Param("Force", "switch")),
               get_child_item, exclusive=_PATH_EXCL, one_of=_PATH_ONE_OF),
        Cmdlet("Get-Content", MGMT, _PS + "GetContentCommand", (*_LIT, Param("Raw", "switch")), get_content,
               exclusive=_PATH_EXCL, one_of=_PATH_ONE_OF),
        Cmdlet("New-Item", MGMT, _PS + "NewItemCommand",
               (Param("Path", "string[]", mandatory=True, path=True), Param("ItemType", "string", aliases=("Type",)),
                Param("Force", "switch"), Param("Value", "string", allow_empty=True)),
               new_item),
        Cmdlet("Remove-Item", MGMT, _PS + "RemoveItemCommand",
               (*_LIT, Param("Force", "switch"), Param("Recurse", "switch")), remove_item,
               exclusive=_PATH_EXCL, one_of=_PATH_ONE_OF),
        Cmdlet("Set-VMMemory", HYPERV, _HV + "SetVMMemory",
               (_VM_INPUT[0], Param("VMName", "string[]"), Param("StartupBytes", "int64"), Param("Passthru", "switch"),
                Param("DynamicMemoryEnabled", "bool"), Param("MinimumBytes", "int64"), Param("MaximumBytes", "int64"),
                Param("Buffer", "int32")),
               set_vm_memory, exclusive=(("VM", "VMName"),), one_of=("VM", "VMName")),
        Cmdlet("Get-VMIntegrationService", HYPERV, _HV + "GetVMIntegrationService",
               (_VM_INPUT[0], Param("VMName", "string[]"), Param("Name", "string[]")), get_vm_integration_service,
               exclusive=(("VM", "VMName"),), one_of=("VM", "VMName")),
        Cmdlet("Get-VMNetworkAdapter", HYPERV, _HV + "GetVMNetworkAdapter",
               (_VM_INPUT[0], Param("VMName", "string[]"), Param("Name", "string")), get_vm_network_adapter,
               exclusive=(("VM", "VMName"),), one_of=("VM", "VMName")),
        Cmdlet("Get-VMHost", HYPERV, _HV + "GetVMHost", (Param("ComputerName", "string[]"),), get_vm_host),
        Cmdlet("Get-Module", CORE, _PS + "GetModuleCommand",
               (Param("Name", "string[]"), Param("ListAvailable", "switch"), Param("All", "switch")), get_module),
        Cmdlet("Get-PSDrive", MGMT, _PS + "GetPSDriveCommand",
               (Param("Name", "string[]"), Param("PSProvider", "string[]")), get_psdrive),
        Cmdlet("Get-CimInstance", "CimCmdlets", "Microsoft.Management.Infrastructure.CimCmdlets.GetCimInstanceCommand",
               (Param("ClassName", "string", mandatory=True), Param("Filter", "string"),
                Param("Namespace", "string")), get_cim_instance),
        # issue 14: the first-boot configuration disk
        Cmdlet("Mount-VHD", HYPERV, _VHD + "MountVHD",
               (Param("Path", "string[]", mandatory=True, by_property=True, path=True, aliases=("FullName",)),
                Param("Passthru", "switch"), Param("NoDriveLetter", "switch")), mount_vhd),
        Cmdlet("Get-Partition", STORAGE, "Microsoft.Management.Infrastructure.CimCmdlets.GetPartition",
               (Param("DiskNumber", "int32", mandatory=True, by_property=True),), get_partition),
        Cmdlet("Dismount-VHD", HYPERV, _VHD + "DismountVHD",
               (Param("Path", "string[]", mandatory=True, by_property=True, path=True, aliases=("FullName",)),
                Param("Passthru", "switch")), dismount_vhd),
        Cmdlet("Initialize-Disk", STORAGE, "Microsoft.Management.Infrastructure.CimCmdlets.InitializeDisk",
               (Param("InputObject", "cim", pipeline_type=MSFT_DISK),
                Param("Number", "int32", by_property=True),
                Param("PartitionStyle", "enum", enum_type="Microsoft.PowerShell.Cmdletization.GeneratedTypes.Disk."
                      "PartitionStyle", choices=("MBR", "GPT")), Param("PassThru", "switch"),
                Param("Confirm", "switch")),
               initialize_disk, exclusive=(("InputObject", "Number"),), one_of=("InputObject", "Number")),
        Cmdlet("New-Partition", STORAGE, "Microsoft.Management.Infrastructure.CimCmdlets.NewPartition",
               (Param("InputObject", "cim", pipeline_type=MSFT_DISK),
                Param("DiskNumber", "int32", by_property=True, aliases=("Number",)),
                Param("UseMaximumSize", "switch"), Param("AssignDriveLetter", "switch")),
               new_partition, exclusive=(("InputObject", "DiskNumber"),), one_of=("InputObject", "DiskNumber")),
        Cmdlet("Format-Volume", STORAGE, "Microsoft.Management.Infrastructure.CimCmdlets.FormatVolume",
               (Param("Partition", "cim", mandatory=True, pipeline_type=MSFT_PARTITION),
                Param("FileSystem", "enum", enum_type="Microsoft.PowerShell.Cmdletization.GeneratedTypes.Volume."
                      "FileSystemType", choices=FILE_SYSTEMS), Param("NewFileSystemLabel", "string"),
                Param("Force", "switch"), Param("Confirm", "switch")), format_volume),
        Cmdlet("Set-Content", MGMT, _PS + "SetContentCommand",
               (*_LIT, Param("Value", "object[]", allow_empty=True),
                Param("Encoding", "enum", enum_type="Microsoft.PowerShell.Commands.FileSystemCmdletProviderEncoding",
                      choices=ENCODINGS), Param("NoNewline", "switch"), Param("Force", "switch")),
               set_content, exclusive=_PATH_EXCL, one_of=_PATH_ONE_OF),
        Cmdlet("Rename-Item", MGMT, _PS + "RenameItemCommand",
               (Param("LiteralPath", "string", path=True, aliases=("PSPath", "LP")),
                Param("Path", "string", path=True, wildcards=True), Param("NewName", "string", mandatory=True),
                Param("Force", "switch")),
               rename_item, exclusive=_PATH_EXCL, one_of=_PATH_ONE_OF),
        Cmdlet("Add-VMHardDiskDrive", HYPERV, _HV + "AddVMHardDiskDrive",
               (_VM_INPUT[0], Param("VMName", "string[]"), Param("Path", "string", path=True), _CONTROLLER_TYPE,
                Param("ControllerNumber", "int32"), Param("ControllerLocation", "int32"), Param("Passthru", "switch")),
               add_vm_hard_disk_drive, exclusive=(("VM", "VMName"),), one_of=("VM", "VMName")),
        Cmdlet("Remove-VMHardDiskDrive", HYPERV, _HV + "RemoveVMHardDiskDrive",
               (Param("VMHardDiskDrive", "drive", mandatory=True,
                      pipeline_type="Microsoft.HyperV.PowerShell.HardDiskDrive"), Param("Passthru", "switch")),
               remove_vm_hard_disk_drive),
        # issue 14: network adapters as a list
        Cmdlet("Add-VMNetworkAdapter", HYPERV, _HV + "AddVMNetworkAdapter",
               (_VM_INPUT[0], Param("VMName", "string[]"), Param("Name", "string"), Param("SwitchName", "string"),
                Param("StaticMacAddress", "string"), Param("Passthru", "switch")),
               add_vm_network_adapter, exclusive=(("VM", "VMName"),), one_of=("VM", "VMName")),
        Cmdlet("Remove-VMNetworkAdapter", HYPERV, _HV + "RemoveVMNetworkAdapter",
               (Param("VMNetworkAdapter", "adapter", mandatory=True,
                      pipeline_type="Microsoft.HyperV.PowerShell.VMNetworkAdapter"), Param("Passthru", "switch")),
               remove_vm_network_adapter),
        Cmdlet("Set-VMNetworkAdapterVlan", HYPERV, _HV + "SetVMNetworkAdapterVlan",
               (Param("VMNetworkAdapter", "adapter", mandatory=True,
                      pipeline_type="Microsoft.HyperV.PowerShell.VMNetworkAdapter"), Param("Access", "switch"),
                Param("Untagged", "switch"), Param("VlanId", "int32"), Param("Passthru", "switch")),
               set_vm_network_adapter_vlan),
        Cmdlet("Stop-Process", MGMT, _PS + "StopProcessCommand",
               (Param("Id", "int32[]", mandatory=True), Param("Force", "switch"), Param("PassThru", "switch")),
               stop_process),
    ]
    return {c.name.lower(): c for c in specs}


CMDLETS: dict[str, Cmdlet] = _cmdlets()

SCRIPTS: dict[str, Cmdlet] = {
    "StartBackgroundCopy": Cmdlet(
        "StartBackgroundCopy", "", "StartBackgroundCopy",
        tuple(Param(n, "string", mandatory=True) for n in ("Source", "Destination", "PartialPath", "StatusPath",
                                                           "Worker")),
        start_background_copy),
    "StartBackgroundCopyBarePowershell": Cmdlet(
        "StartBackgroundCopyBarePowershell", "", "StartBackgroundCopy",
        tuple(Param(n, "string", mandatory=True) for n in ("Source", "Destination", "PartialPath", "StatusPath",
                                                           "Worker")),
        start_background_copy_bare_powershell),
}


def not_recognized(name: str) -> CmdletError:
    return CmdletError(
        f"The term '{name}' is not recognized as the name of a cmdlet, function, script file, or operable program. "
        "Check the spelling of the name, or if a path was included, verify that the path is correct and try again.",
        category="ObjectNotFound", fq_error_id="CommandNotFoundException", target=name,
        exception_type="System.Management.Automation.CommandNotFoundException")


def resolve(name: str) -> Cmdlet:
    """A cmdlet by `Module\\Name` or `Name` (case-insensitive); a wrong module is not found."""
    module, _, short = name.rpartition("\\")
    spec = CMDLETS.get(short.strip().lower())
    if spec is None or (module and module.lower() != spec.module.lower()):
        raise not_recognized(name)
    return spec


def unknown_script(text: str) -> CmdletError:
    first = text.strip().splitlines()[0][:80] if text.strip() else ""
    return CmdletError(
        f"At line:1 char:1\n+ {first}\nThe simulated host runs only the operator's fixed scripts "
        "(hyperv_operator.hyperv.scripts); this script text is not one of them.",
        category="ParserError", fq_error_id="ScriptNotRecognized",
        exception_type="System.Management.Automation.ParseException")
