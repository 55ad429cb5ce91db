"""The JEA (Just Enough Administration) endpoint the operator can work through.

A JEA endpoint is a session configuration with `SessionType = 'RestrictedRemoteServer'`: the
session runs in NoLanguage mode, so a pipeline carrying script text is refused (ScriptsNotAllowed),
and only the commands its role capabilities make visible exist (anything else is "not recognized").
No provider is visible unless `VisibleProviders` lists it. Sources:
https://learn.microsoft.com/powershell/scripting/security/remoting/jea/role-capabilities and
https://learn.microsoft.com/powershell/scripting/security/remoting/jea/session-configurations.

This module is the single source of the role capability (`HyperVOperator.psrc`) and session
configuration (`HyperVOperator.pssc`) shipped in `manifests/jea/`; a unit test checks the shipped
files are exactly `role_capability_text()` / `session_configuration_text()`. Regenerate them with
`python -m hyperv_operator.hyperv.jea manifests/jea` after changing `cmdlets.py` or `scripts.py`.

On such an endpoint the operator (see `WinRMSettings.restricted_endpoint`):
- sends cmdlet names unqualified: JEA exposes a cmdlet with restricted parameters through a proxy
  function, and a module-qualified name would name the hidden cmdlet behind it;
- calls each fixed script as the role's function of the same body (`FUNCTIONS`) with the same typed
  parameters, minus the ones the function embeds (the copy worker's text is never a parameter of a
  privileged function: that would let any role member run arbitrary code as the endpoint's account).
"""

from __future__ import annotations

import base64
import sys
from dataclasses import dataclass
from pathlib import Path

from hyperv_operator.hyperv import scripts
from hyperv_operator.hyperv.cmdlets import ALL_CMDLETS, CIM, HYPERV, MGMT, SECURE_BOOT_TEMPLATES, STORAGE
from hyperv_operator.hyperv.probe import CORE, PROBE_CMDLETS

ROLE_NAME = "HyperVOperator"
"""Role capability name (file HyperVOperator.psrc in a module's RoleCapabilities folder)."""
CONFIGURATION_NAME = "HyperVOperator"
"""The name the pssc is registered under; HyperVHost.spec.configurationName."""

FULL_LANGUAGE_ENDPOINTS = frozenset(
    {
        "microsoft.powershell",
        "microsoft.powershell32",
        "microsoft.powershell.workflow",
        "microsoft.windows.servermanagerworkflows",
    }
)
"""Windows' built-in full-language endpoints; any other configuration name is treated as restricted."""


@dataclass(frozen=True)
class VisibleCmdlet:
    name: str
    """Module-qualified (`Hyper-V\\Get-VM`), as the role capability lists it."""
    parameters: tuple[str, ...]
    """Every parameter the operator binds, by name or from the pipeline (JEA's proxy exposes only
    these; the common parameters such as ErrorAction are always allowed)."""
    validate_set: tuple[tuple[str, tuple[str, ...]], ...] = ()


# Pipeline-bound parameters are listed too: `Get-VM -Id x | Start-VM` binds Start-VM's -VM from the
# pipeline, and a proxy without -VM could not bind it.
VISIBLE_CMDLETS: tuple[VisibleCmdlet, ...] = (
    VisibleCmdlet(HYPERV + "Get-VM", ("Id",)),
    VisibleCmdlet(HYPERV + "Get-VMHardDiskDrive",
                  ("VM", "VMName", "ControllerType", "ControllerNumber", "ControllerLocation"),
                  (("ControllerType", ("SCSI",)),)),
    VisibleCmdlet(HYPERV + "Get-VMSnapshot", ("VM", "Name")),
    VisibleCmdlet(HYPERV + "Get-VHD", ("Path",)),
    VisibleCmdlet(HYPERV + "New-VHD", ("Path", "ParentPath", "Differencing", "SizeBytes", "Dynamic")),
    VisibleCmdlet(HYPERV + "New-VM", ("Name", "Path", "VHDPath", "MemoryStartupBytes", "Generation", "SwitchName")),
    VisibleCmdlet(
        HYPERV + "Set-VM",
        ("VM", "Notes", "ProcessorCount", "CheckpointType", "Passthru"),
        (("CheckpointType", ("Disabled", "Production", "ProductionOnly", "Standard")),),
    ),
    VisibleCmdlet(HYPERV + "Checkpoint-VM", ("VM", "SnapshotName", "Passthru")),
    VisibleCmdlet(HYPERV + "Start-VM", ("VM", "Passthru")),
    VisibleCmdlet(HYPERV + "Stop-VM", ("VM", "Force", "TurnOff", "AsJob")),
    VisibleCmdlet(HYPERV + "Resume-VM", ("VM",)),
    VisibleCmdlet(
        HYPERV + "Set-VMFirmware",
        ("VM", "EnableSecureBoot", "SecureBootTemplate"),
        (("EnableSecureBoot", ("On", "Off")), ("SecureBootTemplate", SECURE_BOOT_TEMPLATES)),
    ),
    VisibleCmdlet(HYPERV + "Set-VHD", ("Path", "ParentPath", "LeafPath", "Passthru")),
    VisibleCmdlet(HYPERV + "Remove-VMSnapshot", ("VMSnapshot",)),
    VisibleCmdlet(HYPERV + "Remove-VM", ("VM", "Force")),
    VisibleCmdlet(HYPERV + "Get-VMHost", ()),
    VisibleCmdlet(MGMT + "Test-Path", ("LiteralPath",)),
    VisibleCmdlet(MGMT + "Get-Item", ("LiteralPath",)),
    VisibleCmdlet(MGMT + "Get-ChildItem", ("LiteralPath",)),
    VisibleCmdlet(MGMT + "Get-Content", ("LiteralPath", "Raw")),
    VisibleCmdlet(MGMT + "New-Item", ("ItemType", "Path", "Force"), (("ItemType", ("Directory",)),)),
    VisibleCmdlet(MGMT + "Remove-Item", ("LiteralPath", "Force")),
    VisibleCmdlet(MGMT + "Stop-Process", ("Id", "Force")),
    VisibleCmdlet(MGMT + "Get-PSDrive", ("Name", "PSProvider"), (("PSProvider", ("FileSystem",)),)),
    VisibleCmdlet(CORE + "Get-Module", ("Name",), (("Name", ("Hyper-V",)),)),
    # The guest (issue 14): read-only, each with its one argument pinned.
    VisibleCmdlet(HYPERV + "Get-VMNetworkAdapter", ("VM", "Name")),
    # Network adapters as a list (issue 14): added, removed and given an access VLAN while the VM is off.
    VisibleCmdlet(HYPERV + "Add-VMNetworkAdapter", ("VM", "Name", "SwitchName", "StaticMacAddress")),
    VisibleCmdlet(HYPERV + "Remove-VMNetworkAdapter", ("VMNetworkAdapter",)),
    VisibleCmdlet(HYPERV + "Set-VMNetworkAdapterVlan", ("VMNetworkAdapter", "Access", "VlanId")),
    VisibleCmdlet(HYPERV + "Set-VMMemory", ("VM", "StartupBytes", "DynamicMemoryEnabled", "MinimumBytes",
                                            "MaximumBytes", "Buffer")),
    # The first-boot configuration disk (issue 14): built, written, attached and detached by the
    # operator; file systems and partition style pinned to what it uses.
    VisibleCmdlet(HYPERV + "Mount-VHD", ("Path", "Passthru")),
    VisibleCmdlet(HYPERV + "Dismount-VHD", ("Path",)),
    # Pipeline-bound: Initialize-Disk's -Number (by property name from Mount-VHD's VirtualHardDisk),
    # New-Partition's -InputObject (MSFT_Disk), Format-Volume's -Partition (MSFT_Partition).
    VisibleCmdlet(STORAGE + "Initialize-Disk", ("Number", "InputObject", "PartitionStyle", "PassThru"),
                  (("PartitionStyle", ("MBR",)),)),
    VisibleCmdlet(STORAGE + "New-Partition", ("InputObject", "UseMaximumSize", "AssignDriveLetter")),
    VisibleCmdlet(STORAGE + "Format-Volume", ("Partition", "FileSystem", "NewFileSystemLabel", "Force", "Confirm"),
                  (("FileSystem", ("FAT32",)),)),
    # unattend.xml on a Windows VM's own disk (issue 14, bootstrap format Unattend): its partitions,
    # read by -DiskNumber (by property name from Mount-VHD -Passthru).
    VisibleCmdlet(STORAGE + "Get-Partition", ("DiskNumber",)),
    VisibleCmdlet(MGMT + "Set-Content", ("LiteralPath", "Value", "Encoding"), (("Encoding", ("Byte",)),)),
    VisibleCmdlet(MGMT + "Rename-Item", ("LiteralPath", "NewName")),
    VisibleCmdlet(HYPERV + "Add-VMHardDiskDrive", ("VM", "Path", "ControllerType", "ControllerNumber",
                                                   "ControllerLocation"), (("ControllerType", ("SCSI",)),)),
    VisibleCmdlet(HYPERV + "Remove-VMHardDiskDrive", ("VMHardDiskDrive",)),
    # The copy worker's process (Win32_Process, filtered by an int PID) and the guest's KVP component.
    VisibleCmdlet(
        CIM + "Get-CimInstance",
        ("Namespace", "ClassName", "Filter"),
        (("Namespace", ("root\\virtualization\\v2",)), ("ClassName", ("Win32_Process", "Msvm_KvpExchangeComponent"))),
    ),
)


@dataclass(frozen=True)
class JeaFunction:
    name: str
    script: str
    """The fixed script (scripts.py) whose body the function runs."""
    embedded: tuple[tuple[str, str], ...]
    """Script parameters the function defines itself (name, constant text) instead of taking them."""


FUNCTIONS: tuple[JeaFunction, ...] = (
    JeaFunction("Start-HvopBackgroundCopy", scripts.START_BACKGROUND_COPY, (("Worker", scripts.COPY_WORKER),)),
)

ROLE_COMMANDS: frozenset[str] = frozenset(c.name for c in VISIBLE_CMDLETS)
"""Must equal `OPERATOR_COMMANDS` (a unit test checks it, and the shipped .psrc)."""
OPERATOR_COMMANDS: frozenset[str] = ALL_CMDLETS | PROBE_CMDLETS


def function_for_script(text: str) -> JeaFunction | None:
    for function in FUNCTIONS:
        if function.script == text:
            return function
    return None


def function_named(name: str) -> JeaFunction | None:
    for function in FUNCTIONS:
        if function.name.lower() == name.lower():
            return function
    return None


def _split_param_block(text: str) -> tuple[str, list[str], str]:
    """(text before `param(`, the parameter declarations, text after the closing parenthesis)."""
    start = text.index("param(")
    depth = 0
    entries: list[str] = []
    current = ""
    for index in range(start + len("param("), len(text)):
        char = text[index]
        if char in "([{":
            depth += 1
        elif char in ")]}":
            if depth == 0:
                entries.append(current)
                return text[:start], [e.strip() for e in entries if e.strip()], text[index + 1 :]
            depth -= 1
        if char == "," and depth == 0:
            entries.append(current)
            current = ""
        else:
            current += char
    raise ValueError("unterminated param() block")


def _embedded(value: str) -> str:
    """A PowerShell expression for `value` that no text inside it can end early: UTF-16 base64 (the
    copy worker holds its own here-string, so it cannot be a here-string itself)."""
    encoded = base64.b64encode(value.strip("\n").encode("utf-16-le")).decode("ascii")
    return f"[Text.Encoding]::Unicode.GetString([Convert]::FromBase64String('{encoded}'))"


def function_body(function: JeaFunction) -> str:
    """The script with its embedded parameters turned into constants (same behaviour otherwise)."""
    before, entries, after = _split_param_block(function.script)
    embedded = {name.lower() for name, _ in function.embedded}
    kept = [e for e in entries if e.rsplit("$", 1)[-1].strip().lower() not in embedded]
    if len(kept) != len(entries) - len(embedded):
        raise ValueError(f"{function.name}: an embedded parameter is not declared by the script")
    constants = "".join(f"\n${name} = {_embedded(value)}" for name, value in function.embedded)
    params = ",\n".join("    " + e for e in kept)
    head = before.strip() + "\n" if before.strip() else ""
    return f"{head}param(\n{params}\n){constants}{after.rstrip()}\n"


def _quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _cmdlet_entry(cmdlet: VisibleCmdlet) -> str:
    if not cmdlet.parameters:
        return f"        @{{ Name = {_quote(cmdlet.name)} }}"
    sets = dict(cmdlet.validate_set)
    params = []
    for name in cmdlet.parameters:
        if name in sets:
            values = ", ".join(_quote(v) for v in sets[name])
            params.append(f"@{{ Name = {_quote(name)}; ValidateSet = {values} }}")
        else:
            params.append(f"@{{ Name = {_quote(name)} }}")
    return f"        @{{ Name = {_quote(cmdlet.name)}; Parameters = {', '.join(params)} }}"


def role_capability_text() -> str:
    cmdlets = "\n".join(_cmdlet_entry(c) for c in VISIBLE_CMDLETS)
    functions = "\n".join(
        f"        @{{\n            Name = {_quote(f.name)}\n            ScriptBlock = {{\n"
        + function_body(f)
        + "            }\n        }"
        for f in FUNCTIONS
    )
    visible_functions = ", ".join(_quote(f.name) for f in FUNCTIONS)
    return f"""# Role capability for the hyperv-operator (GENERATED by hyperv_operator.hyperv.jea: do not edit).
# Exactly the commands the operator sends, each restricted to the parameters it binds.
@{{
    GUID = '6f1d2c7e-4a7b-4f43-9d2e-5b8c1f0a9e31'
    Description = 'hyperv-operator: provision Hyper-V VMs from base VHDX files'
    ModulesToImport = 'Hyper-V', 'Microsoft.PowerShell.Management', 'Storage'
    # Test-Path, Get-Item, Get-ChildItem, Get-Content, New-Item, Remove-Item and Get-PSDrive need it.
    VisibleProviders = 'FileSystem'
    VisibleCmdlets = @(
{cmdlets}
    )
    VisibleFunctions = {visible_functions}
    # A NoLanguage session refuses script text: the fixed scripts run as these functions.
    FunctionDefinitions = @(
{functions}
    )
}}
"""


def session_configuration_text() -> str:
    return f"""# Session configuration for the hyperv-operator (GENERATED by hyperv_operator.hyperv.jea: do not edit).
# Register on the Hyper-V host (see docs/jea.md):
#   Register-PSSessionConfiguration -Name {CONFIGURATION_NAME} -Path .\\{CONFIGURATION_NAME}.pssc
@{{
    SchemaVersion = '2.0.0.0'
    GUID = '0b4f7c55-3e2a-4d8b-a1f6-7c9e2d4b6a10'
    Description = 'hyperv-operator JEA endpoint'
    # NoLanguage, only the role's commands visible.
    SessionType = 'RestrictedRemoteServer'
    # A temporary local administrator per session; replace with GroupManagedServiceAccount for
    # shares on other machines (a virtual account authenticates as the computer on the network).
    RunAsVirtualAccount = $true
    TranscriptDirectory = 'C:\\ProgramData\\JEAConfiguration\\Transcripts'
    RoleDefinitions = @{{
        # Replace with the group (or account) the operator authenticates as.
        'CONTOSO\\hyperv-operator' = @{{ RoleCapabilities = '{ROLE_NAME}' }}
    }}
}}
"""


def write_files(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in ((f"{ROLE_NAME}.psrc", role_capability_text()),
                       (f"{CONFIGURATION_NAME}.pssc", session_configuration_text())):
        path = folder / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":  # pragma: no cover - regeneration helper
    for written in write_files(Path(sys.argv[1] if len(sys.argv) > 1 else "manifests/jea")):
        print(written)
