"""Every host command the operator sends, as typed builders.

This module is the contract between the operator and a Hyper-V host (real or simulated): the
simulator implements exactly these cmdlets, parameters and parameter types. Cmdlets are
module-qualified so a host with VMware PowerCLI loaded cannot shadow them.
VMs are always addressed by Id (`Get-VM -Id <guid> | <cmdlet>`), never by name: names are not unique.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from hyperv_operator.hyperv.commands import SWITCH, Int64, Statement, UInt64, cmd, pipe

HYPERV = "Hyper-V\\"
MGMT = "Microsoft.PowerShell.Management\\"
UTILITY = "Microsoft.PowerShell.Utility\\"
CIM = "CimCmdlets\\"
STORAGE = "Storage\\"

# --- observe -----------------------------------------------------------------------------------


def get_vm_by_id(vm_id: str) -> Statement:
    """Output: one Microsoft.HyperV.PowerShell.VirtualMachine (Name, Id, State, Status, Notes, Path,
    Uptime, CheckpointType, Generation, MemoryStartup, ProcessorCount). Absent: InvalidArgument,
    `InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM` (not ObjectNotFound; errors.is_not_found)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id))


def get_all_vms() -> Statement:
    """Output: every VM on the host (used to adopt a VM by the uid tag in its Notes)."""
    return pipe(cmd(HYPERV + "Get-VM"))


def get_vm_hard_disk_drives(vm_id: str) -> Statement:
    """Output: Microsoft.HyperV.PowerShell.HardDiskDrive objects (Path, VMId, VMName,
    ControllerType, ControllerNumber, ControllerLocation)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Get-VMHardDiskDrive"))


def get_vm_snapshots(vm_id: str) -> Statement:
    """Output: Microsoft.HyperV.PowerShell.VMSnapshot objects (Id, Name, VMId, VMName, Path)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Get-VMSnapshot"))


def get_vhd(path: str) -> Statement:
    """Output: Microsoft.Vhd.PowerShell.VirtualHardDisk (Path, VhdFormat, VhdType, ParentPath,
    FileSize, Size, MinimumSize, BlockSize, Attached, DiskIdentifier); ObjectNotFound if absent; "in use"
    on shared storage while another host has the disk open (engine reads the base by file then)."""
    return pipe(cmd(HYPERV + "Get-VHD", Path=path))


def test_path(path: str) -> Statement:
    """Output: one bool."""
    return pipe(cmd(MGMT + "Test-Path", LiteralPath=path))


def test_paths(paths: Sequence[str]) -> Statement:
    """Output: one bool per path, in the order given (`-LiteralPath` is a String[]; TestPathCommand's
    ProcessRecord writes one result per element). One statement instead of one per path: each
    statement costs the client a serialized Command and the host a pipeline step."""
    if not paths:
        raise ValueError("test_paths needs at least one path (an empty array is an error on the host)")
    return pipe(cmd(MGMT + "Test-Path", LiteralPath=tuple(paths)))


def get_item(path: str) -> Statement:
    """Output: System.IO.FileInfo / DirectoryInfo (FullName, Name, Length, IsReadOnly, Attributes,
    LastWriteTimeUtc); ObjectNotFound (PathNotFound) if absent."""
    return pipe(cmd(MGMT + "Get-Item", LiteralPath=path))


def get_child_items(folder: str) -> Statement:
    """Output: the files and folders inside `folder` (not recursive)."""
    return pipe(cmd(MGMT + "Get-ChildItem", LiteralPath=folder))


def read_text_file(path: str) -> Statement:
    """Output: one string, the whole file (used for the background copy's status file)."""
    return pipe(cmd(MGMT + "Get-Content", LiteralPath=path, Raw=SWITCH))


def get_process(process_id: int) -> Statement:
    """Output: the Win32_Process CIM instance (ProcessId, Name, CommandLine, CreationDate) of one
    process, or nothing if no process has that id. The WQL filter is built from an int only (no user
    text): Get-CimInstance has no typed -ProcessId parameter, and Get-Process in Windows PowerShell 5.1
    does not show a command line, which identifies our copy worker."""
    return pipe(cmd(CIM + "Get-CimInstance", ClassName="Win32_Process", Filter=f"ProcessId = {int(process_id)}"))


# --- observe the guest (issue 14) --------------------------------------------------------------

VIRTUALIZATION_NAMESPACE = "root\\virtualization\\v2"


def get_vm_network_adapters(vm_id: str) -> Statement:
    """Output: Microsoft.HyperV.PowerShell.VMNetworkAdapter objects (Name, MacAddress, SwitchName,
    IPAddresses: what the guest reports through integration services, empty until it does)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Get-VMNetworkAdapter"))


def get_kvp_component(vm_id: str) -> Statement:
    """Output: the VM's Msvm_KvpExchangeComponent CIM instance (SystemName = the VM's Id,
    GuestIntrinsicExchangeItems = CIM-XML Msvm_KvpExchangeDataItem instances: FullyQualifiedDomainName,
    OSName, NetworkAddressIPv4, ...), or nothing. Filtered on the host by `SystemName`, so the answer
    does not grow with the host's VMs. The WQL text is built from a parsed GUID only (ValueError
    otherwise): no user text reaches the query, as with `get_process`'s int."""
    guid = str(uuid.UUID(vm_id)).upper()
    return pipe(cmd(CIM + "Get-CimInstance", Namespace=VIRTUALIZATION_NAMESPACE,
                    ClassName="Msvm_KvpExchangeComponent", Filter=f"SystemName = '{guid}'"))


# --- the first-boot configuration disk (issue 14, provisioning/bootstrap.py) -------------------


CONFIG_FILE_SYSTEM = "FAT32"
"""The configuration disk's file system: cloud-init's NoCloud and cloudbase-init read vfat (and iso9660,
which no cmdlet writes)."""


def new_config_volume(path: str, size_bytes: int, label: str) -> Statement:
    """`New-VHD -Dynamic | Mount-VHD -Passthru | Initialize-Disk -Passthru | New-Partition
    -AssignDriveLetter -UseMaximumSize | Format-Volume`: the idiom of the New-VHD documentation
    (Example 5). Output: the MSFT_Volume (DriveLetter, FileSystemLabel, FileSystem). The disk stays
    mounted on the host for the file writes that follow (`write_file`, by the volume's letter)."""
    return pipe(
        cmd(HYPERV + "New-VHD", Path=path, SizeBytes=UInt64(size_bytes), Dynamic=SWITCH),
        cmd(HYPERV + "Mount-VHD", Passthru=SWITCH),
        cmd(STORAGE + "Initialize-Disk", PartitionStyle="MBR", PassThru=SWITCH),
        cmd(STORAGE + "New-Partition", UseMaximumSize=SWITCH, AssignDriveLetter=SWITCH),
        cmd(STORAGE + "Format-Volume", FileSystem=CONFIG_FILE_SYSTEM, NewFileSystemLabel=label, Force=SWITCH,
            Confirm=False),
    )


def write_file(path: str, content: bytes) -> Statement:
    """No output. The content travels as a typed byte[] (`-Encoding Byte`: Windows PowerShell 5.1
    writes the bytes as they are, no BOM, no newline added); it is never shown (commands._show)."""
    return pipe(cmd(MGMT + "Set-Content", LiteralPath=path, Value=content, Encoding="Byte"))


def mount_os_disk(path: str) -> Statement:
    """`Mount-VHD -Passthru | Get-Partition`: mount a VM's own disk on the host (Windows gives its
    basic data partitions drive letters) and list its partitions (MSFT_Partition: PartitionNumber,
    Type - Basic, System, Reserved, Recovery - and DriveLetter). Get-Partition's -DiskNumber binds by
    property name from the VirtualHardDisk's DiskNumber. The disk stays mounted for the write that
    follows (`write_file` by the Windows volume's letter, then `dismount_vhd`)."""
    return pipe(cmd(HYPERV + "Mount-VHD", Path=path, Passthru=SWITCH), cmd(STORAGE + "Get-Partition"))


def dismount_vhd(path: str) -> Statement:
    """No output. Fails if the disk is not mounted on the host."""
    return pipe(cmd(HYPERV + "Dismount-VHD", Path=path))


def rename_item(path: str, new_name: str) -> Statement:
    """No output. `new_name` is a file name in the same folder (Rename-Item does not move)."""
    return pipe(cmd(MGMT + "Rename-Item", LiteralPath=path, NewName=new_name))


def add_vm_scsi_disk(vm_id: str, path: str, controller_number: int, location: int) -> Statement:
    """No output. Attach `path` to the VM's SCSI controller at a fixed location (the operator picks
    it, so it can name the same drive when it detaches it)."""
    return pipe(
        cmd(HYPERV + "Get-VM", Id=vm_id),
        cmd(HYPERV + "Add-VMHardDiskDrive", Path=path, ControllerType="SCSI", ControllerNumber=controller_number,
            ControllerLocation=location),
    )


def remove_vm_scsi_disk(vm_id: str, controller_number: int, location: int) -> Statement:
    """No output. Detach the drive at that SCSI location (hot-remove works on a running VM for SCSI;
    the file stays)."""
    return pipe(
        cmd(HYPERV + "Get-VM", Id=vm_id),
        cmd(HYPERV + "Get-VMHardDiskDrive", ControllerType="SCSI", ControllerNumber=controller_number,
            ControllerLocation=location),
        cmd(HYPERV + "Remove-VMHardDiskDrive"),
    )


# --- network adapters (issue 14, provisioning/network.py) -----------------------------------------


def add_vm_network_adapter(vm_id: str, name: str, switch_name: str, static_mac: str | None) -> Statement:
    """No output. A synthetic adapter named `name` on `switch_name`; `static_mac` is 12 hex digits
    (None: Hyper-V assigns a dynamic MAC from its pool)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id),
                cmd(HYPERV + "Add-VMNetworkAdapter", Name=name, SwitchName=switch_name, StaticMacAddress=static_mac))


def remove_vm_network_adapter(vm_id: str, name: str) -> Statement:
    """No output. Removes the VM's adapters with that name."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Get-VMNetworkAdapter", Name=name),
                cmd(HYPERV + "Remove-VMNetworkAdapter"))


def set_vm_network_adapter_vlan(vm_id: str, name: str, vlan_id: int) -> Statement:
    """No output. Access mode with `vlan_id` (1-4094) on the VM's adapter(s) with that name."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Get-VMNetworkAdapter", Name=name),
                cmd(HYPERV + "Set-VMNetworkAdapterVlan", Access=SWITCH, VlanId=vlan_id))


# --- act ---------------------------------------------------------------------------------------


def new_directory(path: str) -> Statement:
    """Create a folder (and its parents); succeeds if it exists."""
    return pipe(cmd(MGMT + "New-Item", ItemType="Directory", Path=path, Force=SWITCH))


def new_differencing_vhd(path: str, parent_path: str) -> Statement:
    """Output: the new VirtualHardDisk. Fails if `path` exists or the parent is an .avhdx."""
    return pipe(cmd(HYPERV + "New-VHD", Path=path, ParentPath=parent_path, Differencing=SWITCH))


def new_dynamic_vhd(path: str, size_bytes: int) -> Statement:
    """Output: the new (empty) dynamic VirtualHardDisk. Used only by `conformance` for its scratch base."""
    return pipe(cmd(HYPERV + "New-VHD", Path=path, SizeBytes=UInt64(size_bytes), Dynamic=SWITCH))


def new_vm(
    name: str,
    folder: str,
    vhd_path: str,
    memory_bytes: int,
    generation: int,
    switch_name: str | None,
) -> Statement:
    """Output: the new VirtualMachine (state Off). The VM's files go under `folder`\\`name`."""
    return pipe(
        cmd(
            HYPERV + "New-VM",
            Name=name,
            Path=folder,
            VHDPath=vhd_path,
            MemoryStartupBytes=Int64(memory_bytes),
            Generation=generation,
            SwitchName=switch_name,
        )
    )


def set_vm(
    vm_id: str,
    *,
    notes: str | None = None,
    processor_count: int | None = None,
    checkpoint_type: str | None = None,
) -> Statement:
    """No output. `checkpoint_type` is one of Disabled, Production, ProductionOnly, Standard."""
    return pipe(
        cmd(HYPERV + "Get-VM", Id=vm_id),
        cmd(HYPERV + "Set-VM", Notes=notes, ProcessorCount=processor_count, CheckpointType=checkpoint_type),
    )


def new_configured_vm(
    name: str,
    folder: str,
    vhd_path: str,
    memory_bytes: int,
    generation: int,
    switch_name: str | None,
    *,
    notes: str,
    processor_count: int,
    checkpoint_type: str | None = None,
    start: bool = False,
    checkpoint: str | None = None,
) -> Statement:
    """`New-VM ... | Set-VM ... -Passthru [| Start-VM -Passthru | Checkpoint-VM -Passthru]`: one statement,
    output the VM as it is after the last command (with `checkpoint`: the VMSnapshot, which names the
    VM by VMId). The VM reaches each command through the pipeline, so no Id is needed up front, and a
    command runs only on what the one before it passed on: if the pipeline stops half-way the VM exists
    untagged (found by its folder), or tagged and Off without the checkpoint."""
    if start and checkpoint:
        raise ValueError("a VM is checkpointed before it starts, never in the same statement")
    created = new_vm(name, folder, vhd_path, memory_bytes, generation, switch_name).commands
    configure = cmd(HYPERV + "Set-VM", Notes=notes, ProcessorCount=processor_count, CheckpointType=checkpoint_type,
                    Passthru=SWITCH)
    then = ((cmd(HYPERV + "Start-VM", Passthru=SWITCH),) if start else
            (cmd(HYPERV + "Checkpoint-VM", SnapshotName=checkpoint, Passthru=SWITCH),) if checkpoint else ())
    return pipe(*created, configure, *then)


def get_vm_hard_disk_drives_by_name(vm_name: str) -> Statement:
    """Output: the drives of every VM of that name (names are not unique: pick by the drives' VMId)."""
    return pipe(cmd(HYPERV + "Get-VMHardDiskDrive", VMName=vm_name))


def start_vm_passthru(vm_id: str) -> Statement:
    """Start-VM that outputs the VM (state Running once Start-VM returns)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Start-VM", Passthru=SWITCH))


def set_vm_memory(vm_id: str, startup_bytes: int) -> Statement:
    """No output. Static memory: while the VM is off, or on a running VM (runtime memory resize,
    Windows Server 2016+ hosts; the guest must support hot-add, and hot-remove to shrink)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Set-VMMemory", StartupBytes=Int64(startup_bytes)))


def set_vm_dynamic_memory(vm_id: str, startup_bytes: int, minimum_bytes: int, maximum_bytes: int,
                          buffer: int) -> Statement:
    """No output. Dynamic Memory on (while the VM is off) with its range: minimum <= startup <= maximum,
    buffer 5-2000 percent (Set-VMMemory documentation)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id),
                cmd(HYPERV + "Set-VMMemory", DynamicMemoryEnabled=True, StartupBytes=Int64(startup_bytes),
                    MinimumBytes=Int64(minimum_bytes), MaximumBytes=Int64(maximum_bytes), Buffer=buffer))


def set_vm_static_memory(vm_id: str, startup_bytes: int) -> Statement:
    """No output. Dynamic Memory off (while the VM is off), static `startup_bytes`."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id),
                cmd(HYPERV + "Set-VMMemory", DynamicMemoryEnabled=False, StartupBytes=Int64(startup_bytes)))


def checkpoint_vm(vm_id: str, snapshot_name: str) -> Statement:
    """Output (with -Passthru): the VMSnapshot. Creates `<parent>_<GUID>.avhdx` next to each disk's
    parent file and moves the VM's drive onto it."""
    return pipe(
        cmd(HYPERV + "Get-VM", Id=vm_id),
        cmd(HYPERV + "Checkpoint-VM", SnapshotName=snapshot_name, Passthru=SWITCH),
    )


def start_vm(vm_id: str) -> Statement:
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Start-VM"))


def stop_vm(vm_id: str, *, turn_off: bool) -> Statement:
    """Graceful shutdown through the guest, or pull the plug (`-TurnOff`, immediate).

    The graceful form runs `-Force -AsJob`: a synchronous `Stop-VM -Force` blocks until the guest is
    off, up to five minutes, and holds this host's connection (every VM on the host would wait); it
    can also fail ("Failed to stop") when the guest has no shutdown integration service. As a job it
    returns at once; the planner observes the state and escalates to `-TurnOff` after its timeout,
    whatever became of the job (a job's failure is not read back: the state is what counts)."""
    graceful = cmd(HYPERV + "Stop-VM", Force=SWITCH, AsJob=SWITCH)
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Stop-VM", TurnOff=SWITCH) if turn_off else graceful)


def resume_vm(vm_id: str) -> Statement:
    """Resume a Paused VM (Start-VM does not apply to a paused VM)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Resume-VM"))


SECURE_BOOT_TEMPLATES = ("MicrosoftWindows", "MicrosoftUEFICertificateAuthority", "OpenSourceShieldedVM")
"""The templates Hyper-V ships (Get-VMHost | Get-VMSecureBootTemplate); Linux guests need
MicrosoftUEFICertificateAuthority."""


def set_vm_firmware(vm_id: str, *, secure_boot: bool, template: str | None) -> Statement:
    """Generation 2 only, while the VM is Off. `-EnableSecureBoot` is an OnOffState (On/Off)."""
    return pipe(
        cmd(HYPERV + "Get-VM", Id=vm_id),
        cmd(HYPERV + "Set-VMFirmware", EnableSecureBoot="On" if secure_boot else "Off",
            SecureBootTemplate=template if secure_boot else None),
    )


def reparent_vhd(path: str, new_parent_path: str) -> Statement:
    """Online re-parent: `-LeafPath` is required while the chain is attached to a running VM. Hyper-V
    checks the new parent's identity; `-IgnoreIdMismatch` is never used. Output: the VirtualHardDisk as
    it is now (`-Passthru`), whose ParentPath says whether the re-parent took."""
    return pipe(cmd(HYPERV + "Set-VHD", Path=path, ParentPath=new_parent_path, LeafPath=path, Passthru=SWITCH))


def remove_vm_snapshot(vm_id: str, snapshot_name: str) -> Statement:
    """Delete the checkpoint; Hyper-V merges its .avhdx into the parent while the VM runs."""
    return pipe(
        cmd(HYPERV + "Get-VM", Id=vm_id),
        cmd(HYPERV + "Get-VMSnapshot", Name=snapshot_name),
        cmd(HYPERV + "Remove-VMSnapshot"),
    )


def remove_vm(vm_id: str) -> Statement:
    """Remove the VM's configuration (its disks stay on disk)."""
    return pipe(cmd(HYPERV + "Get-VM", Id=vm_id), cmd(HYPERV + "Remove-VM", Force=SWITCH))


def remove_file(path: str) -> Statement:
    return pipe(cmd(MGMT + "Remove-Item", LiteralPath=path, Force=SWITCH))


def remove_empty_directory(path: str) -> Statement:
    """Fails (and removes nothing) if the folder is not empty: no -Recurse, ever."""
    return pipe(cmd(MGMT + "Remove-Item", LiteralPath=path))


def stop_process(process_id: int) -> Statement:
    return pipe(cmd(MGMT + "Stop-Process", Id=process_id, Force=SWITCH))


ALL_CMDLETS: frozenset[str] = frozenset(
    {
        HYPERV + "Get-VM",
        HYPERV + "Get-VMHardDiskDrive",
        HYPERV + "Get-VMSnapshot",
        HYPERV + "Get-VHD",
        HYPERV + "New-VHD",
        HYPERV + "New-VM",
        HYPERV + "Set-VM",
        HYPERV + "Checkpoint-VM",
        HYPERV + "Start-VM",
        HYPERV + "Stop-VM",
        HYPERV + "Resume-VM",
        HYPERV + "Set-VMFirmware",
        HYPERV + "Set-VMMemory",
        HYPERV + "Get-VMNetworkAdapter",
        CIM + "Get-CimInstance",
        HYPERV + "Set-VHD",
        HYPERV + "Remove-VMSnapshot",
        HYPERV + "Remove-VM",
        MGMT + "Test-Path",
        MGMT + "Get-Item",
        MGMT + "Get-ChildItem",
        MGMT + "Get-Content",
        MGMT + "New-Item",
        MGMT + "Remove-Item",
        MGMT + "Stop-Process",
        CIM + "Get-CimInstance",
        # issue 14: the first-boot configuration disk
        HYPERV + "Mount-VHD",
        HYPERV + "Dismount-VHD",
        STORAGE + "Initialize-Disk",
        STORAGE + "New-Partition",
        STORAGE + "Format-Volume",
        STORAGE + "Get-Partition",
        MGMT + "Set-Content",
        MGMT + "Rename-Item",
        HYPERV + "Add-VMHardDiskDrive",
        HYPERV + "Remove-VMHardDiskDrive",
        # issue 14: network adapters as a list
        HYPERV + "Add-VMNetworkAdapter",
        HYPERV + "Remove-VMNetworkAdapter",
        HYPERV + "Set-VMNetworkAdapterVlan",
    }
)
"""The cmdlets above; `hyperv_operator.hyperv.scripts` holds the fixed scripts (background copy)."""


