"""The simulated Hyper-V host's state and semantics: files and folders, VHDX chains, VMs,
checkpoints, merges and background copies, all in memory, all driven by simulated time.

This module knows nothing about PowerShell parameter binding (see `simulator/cmdlets.py`) nor about
locking, faults or wall clocks (see `simulator/host.py`). Every operation raises `ModelError`
(message, category, reason); the cmdlet layer turns it into a `CmdletError` whose
FullyQualifiedErrorId is `<reason>,<cmdlet type>`.

Time is lazy: `advance(t)` brings the model to simulated second `t`, replaying in order the events
that fell due (graceful shutdowns finishing, merges finishing, copies finishing or failing) and the
continuous processes (guest writes growing the top disk, copies moving bytes). No threads.

Modelling choices. Where Microsoft's documentation leaves room, the STRICTER behaviour was chosen
(it catches more operator bugs); each is marked [strict].
- Paths are Windows paths compared case-insensitively (ntpath). Only absolute drive paths (C:\\x)
  and UNC paths (\\\\FS\\VMSHARE\\x) are accepted; a relative path fails with InvalidArgument
  because the simulated session has no current location [strict]. Roots: `C:\\` exists; a UNC
  share exists once `add_folder` created something under it. New-Item creates missing parent
  folders but never a root; New-VHD, New-VM, Checkpoint-VM and the copy need existing folders.
- Free space is one pool for the whole host (every volume and share).
- New-VM requires its -Path folder to exist [strict] (it creates `<Path>\\<Name>\\Virtual Machines`);
  startup memory must be at least 32 MB and a multiple of 2 MB.
- Start-VM validates the whole disk chain: every parent present, and every parent's DataWriteGuid
  equal to the one its child recorded (a modified base breaks its children) [strict]. The top disk
  is opened for write: the read-only attribute or a share ACL makes Start-VM fail (PermissionDenied);
  a disk being copied or written by another VM fails with "being used by another process".
- DataWriteGuid changes whenever a disk goes from closed to opened-for-write (becoming the top disk
  of a running VM, or a merge target); it is closed when the VM turns off.
- Stop-VM -Force (graceful, through the guest): State "Stopping" for the guest's shutdown time
  (`shutdown_seconds`, per VM overridable), then "Off". Without -AsJob the command BLOCKS the caller
  until then, up to STOP_FORCE_LIMIT (5 minutes, Stop-VM documentation: "the virtual machine has five
  minutes to save data and shut down"; kubev2v/forklift#8407: Stop-VM -Force is synchronous and holds
  the WinRM session); a guest that takes longer, or has no shutdown integration service, makes it fail
  with OperationFailed "Failed to stop." (NotSpecified, VirtualizationException; MattHodge/PackerTemplates#18)
  and the VM keeps running [strict: the documentation does not say the VM is turned off]. With -AsJob it
  returns a job at once and the same happens in the background (the job fails; the state shows it).
  -TurnOff is instant. Stop-VM on an Off VM and Start-VM on a Running VM do nothing (real cmdlets only
  warn). Start-VM while Stopping: ResourceBusy. Start-VM on a Saved VM restores it (Running).
- VM states (Microsoft.HyperV.PowerShell.VMState): Paused and Saved are set by `set_vm_state` (a user in
  Hyper-V Manager); Resume-VM resumes a Paused VM only. `lose_storage` puts a VM in its *Critical twin
  (RunningCritical, OffCritical): Start-VM, Stop-VM -Force, Checkpoint-VM and Remove-VMSnapshot then fail
  (InvalidOperation, "current state") [strict]; -TurnOff still works. `restore_storage` undoes it.
- Set-VMFirmware: generation 2 only (Set-VMFirmware documentation), while Off [strict]; templates are
  the ones Hyper-V ships (MicrosoftWindows default, MicrosoftUEFICertificateAuthority,
  OpenSourceShieldedVM). New-VM -Generation 2 refuses a .vhd disk (generation 2 boots VHDX only).
- Get-VHD of a disk another host holds open (`hold_elsewhere`, shared storage) fails "in use" (Get-VHD
  documentation: "Any other server trying to run the Get-VHD cmdlet will get an error that it is in
  use"); Get-Item, Test-Path, New-VHD -ParentPath and read-only copies of it work.
- Names (Naming Files, Paths, and Namespaces): control characters (0-31), < > " | ? * and a colon after
  the drive are refused in every path and VM name; so are path components ending in a space or a
  period and the reserved device names (CON, PRN, AUX, NUL, COM1-9, LPT1-9) [strict: Win32 refuses or
  silently strips them].
- Remove-VM requires State Off: otherwise InvalidOperation "The operation cannot be performed while
  the virtual machine is in its current state." (permanent; the real cmdlet with -Force would turn
  the VM off) [strict]; while one of its merges runs: ResourceBusy. It deletes the VM's and its
  checkpoints' configuration files; disks and folders stay.
- Set-VM -ProcessorCount on a running VM fails (InvalidOperation), as in Hyper-V; Notes and
  CheckpointType may change while running.
- The guest (issue 14; ledger section "Guest, resize and bootstrap"): New-VM gives the VM one network
  adapter "Network Adapter" (connected to -SwitchName, else to none) with a dynamic MAC in Hyper-V's
  range 00-15-5D. After Start-VM the guest boots for `guest_boot_seconds`; from then its heartbeat
  integration service answers (Get-VMIntegrationService Heartbeat PrimaryStatusDescription "OK", "No
  Contact" before; nothing while off) and its key-value pair exchange reports FullyQualifiedDomainName
  and OSName (Msvm_KvpExchangeComponent.GuestIntrinsicExchangeItems). After `guest_network_seconds`
  more (DHCP) an adapter on a switch reports an IPv4 address plus its fe80:: link-local address in
  Get-VMNetworkAdapter IPAddresses; an adapter on no switch reports only the link-local address. A
  guest without integration services (`set_guest(integration_services=False)`) reports none of it.
- Windows images (issue 14, `add_windows_base`): partitions (GPT: EFI system, MSR, Windows, recovery;
  MBR: System Reserved, Windows). Mount-VHD letters the basic data partitions; Get-Partition lists
  them; Set-Content writes into existing folders of a mounted volume, into the mounted file only (a
  differencing disk's parents are not written). At the first boot of a generalized image Windows
  Setup takes the first answer file of its implicit search (Panther, System32\\Sysprep, the system
  drive's root) and names the computer from its specialize-pass ComputerName (KVP hostname).
- Set-VMMemory -StartupBytes (>= 32 MB, a multiple of 2 MB) on an Off VM always applies. On a running VM
  ("runtime memory resize", Windows Server 2016+): refused with dynamic memory enabled, and while the
  guest cannot take part (not booted, no integration services); a Linux guest can grow but not shrink
  (hot-add only) [strict: a Windows guest may shrink only down to its free memory; the simulator lets it
  shrink to its demand of 512 MB]. -DynamicMemoryEnabled is not modelled.
- Checkpoint-VM: CheckpointType Disabled fails; on a running VM Production falls back to a Standard
  checkpoint and ProductionOnly fails (the simulated guest has no VSS integration). The new .avhdx is
  `<folder of the drive's current file>\\<its base name without a _GUID suffix>_<GUID>.avhdx`, 4 MiB;
  a folder whose ACL denies creating files (`protect_folder`) fails it with PermissionDenied.
  Fails with ResourceBusy while the VM is Stopping or merging [strict]. Checkpoint configuration
  files go to `<VM Path>\\Snapshots`.
- Remove-VMSnapshot merges each checkpoint .avhdx into its CURRENT parent. The parent is opened for
  write at once: if it is read-only or ACL-protected (still the base) the command fails immediately
  with PermissionDenied and changes nothing [strict]; the parent's identity is checked too. The
  checkpoint disappears from Get-VMSnapshot at once; Status reads "Merging disks" for
  (.avhdx FileSize / merge throughput) simulated seconds; guest writes keep landing in the .avhdx
  until the merge completes, and are merged too. With -VM/-VMName, -Name is required [strict].
- Set-VHD (re-parent): the new parent must exist, be a .vhdx with the same virtual size and the
  DataWriteGuid the child recorded; with the chain attached to a running VM (or merging) -LeafPath
  is required and must name the top of that chain [strict]; re-parenting while a merge runs on the
  chain fails with ResourceBusy.
- Remove-Item refuses (in use) any file in the disk chain of ANY registered VM, including Off VMs,
  whose disks Hyper-V itself would not hold open [strict]; also configuration files of registered
  VMs, files of a running merge, and a running copy's source and partial file. ACL-protected paths:
  access denied; read-only attribute: needs -Force; a non-empty folder without -Recurse fails with
  InvalidOperation "DirectoryNotEmpty" (real PowerShell would prompt; a remote session cannot) [strict].
- The background copy mirrors scripts.START_BACKGROUND_COPY / COPY_WORKER (recognised by their
  exact text). Win32_Process.Create starts the worker: a process (pid, command line with the
  worker's -EncodedCommand, creation time) listed by Get-CimInstance Win32_Process. A Create that
  returns non-zero (fault hook) leaves no status file. The starter writes the first status (processId,
  processCreatedAt) right after Create; the worker rewrites it on whole seconds (bytesCopied as of the
  last whole second; File.Replace, so a reader never finds it missing); a failure reports bytesCopied 0.
  A reader (Get-Content) holding the status file through a progress write makes that write fail: the
  current worker skips it; the old worker (Move-Item -Force: delete, then move; recognised by its
  text) aborts the copy, and a reader arriving between its delete and move finds no file. The
  coincidence is a knob (`status_read_collision`), not timing luck.
  The source is opened read-only with FileShare.Read: a source being written (top disk of a running
  VM) fails the copy, and while the copy runs the source cannot be opened for write. Stop-Process
  (or a host reboot) ends the worker: the status file stays as last written, the partial stays.
- PIDs are reused: a reboot restarts numbering, so a VM's worker process (vmwp.exe, one per running
  VM) can get the PID a copy worker had before [strict: Windows reuses PIDs, not necessarily so soon].
- Copy offload: a copy whose source and destination are on the same offload-capable root (a share or
  volume marked with `enable_copy_offload`: ODX storage, or SMB server-side copy) runs at the
  offload rate and moves no bytes through the host; any other copy moves every byte through it.
- Guest activity grows the first drive's top disk by guest_write_bytes_per_second, capped at its
  virtual size plus 4 MiB of metadata and at the free space (a real VM would pause; not modelled).
- Get-VHD ParentPath is None for a disk without parent (test it for falsiness: Windows may show "").
- Get-VM Uptime is a TimeSpan as an XML-Schema duration string ("PT1M45.5S", "PT0S" when off): that
  is what pypsrp hands the operator for a TimeSpan. Guids are str (VM Id lower-case like
  Guid.ToString(); DiskIdentifier upper-case like Get-VHD shows it). Datetimes are UTC, tz-aware.
- Output objects carry the real .NET type names, most specific first.
- Get-Content of a VHD or other binary file returns "" (not modelled).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import ntpath
import uuid
import xml.etree.ElementTree as ElementTree
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

MiB = 1024 * 1024
GiB = 1024 * MiB
NEW_DIFF_FILE_SIZE = 4 * MiB
DYNAMIC_BLOCK_SIZE = 32 * MiB
DIFF_BLOCK_SIZE = 2 * MiB
VHD_METADATA_BYTES = 4 * MiB
CONFIG_FILE_SIZE = 64 * 1024
DEFAULT_VIRTUAL_SIZE = 127 * GiB
MAX_PROCESSORS = 64
GUEST_MEMORY_DEMAND = 512 * 1024 * 1024  # what a running Windows guest will not give back
FIRST_PID = 4120

HYPERV_EXCEPTION = "Microsoft.HyperV.PowerShell.VirtualizationException"
IO_EXCEPTION = "System.IO.IOException"
UNAUTHORIZED = "System.UnauthorizedAccessException"
ITEM_NOT_FOUND = "System.Management.Automation.ItemNotFoundException"
ARGUMENT_EXCEPTION = "System.ArgumentException"

STATE_OFF = "Off"
STATE_RUNNING = "Running"
STATE_STOPPING = "Stopping"
STATE_PAUSED = "Paused"
STATE_SAVED = "Saved"
STOP_FORCE_LIMIT = 300.0  # Stop-VM -Force gives the guest five minutes
SECURE_BOOT_TEMPLATES = ("MicrosoftWindows", "MicrosoftUEFICertificateAuthority", "OpenSourceShieldedVM")
ACTIVE_STATES = frozenset({STATE_RUNNING, STATE_STOPPING})
STATUS_OK = "Operating normally"
STATUS_MERGING = "Merging disks"
LOCALIZED_STATUS = {STATUS_OK: "Normaler Betrieb", STATUS_MERGING: "Datenträger werden zusammengeführt"}
"""[strict: unsourced wording] A German host's Status texts: what matters is only that they are not
the English words, as on any host in another language."""
CHECKPOINT_TYPES = ("Disabled", "Production", "ProductionOnly", "Standard")

DISK_FULL_MESSAGE = "There is not enough space on the disk."


class ModelError(Exception):
    """A failed operation; `reason` becomes the first part of the FullyQualifiedErrorId."""

    def __init__(
        self,
        message: str,
        *,
        category: str,
        reason: str,
        target: str = "",
        exception_type: str = HYPERV_EXCEPTION,
        fq_error_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = category
        self.reason = reason
        self.target = target
        self.exception_type = exception_type
        self.fq_error_id = fq_error_id


# --- error shapes ------------------------------------------------------------------------------


def path_not_found(path: str) -> ModelError:
    return ModelError(f"Cannot find path '{path}' because it does not exist.", category="ObjectNotFound",
                      reason="PathNotFound", target=path, exception_type=ITEM_NOT_FOUND)


def directory_not_found(path: str) -> ModelError:
    return ModelError(f"Could not find a part of the path '{path}'.", category="ObjectNotFound",
                      reason="DirectoryNotFound", target=path, exception_type="System.IO.DirectoryNotFoundException")


def access_denied(path: str) -> ModelError:
    return ModelError(f"Access to the path '{path}' is denied.", category="PermissionDenied",
                      reason="UnauthorizedAccess", target=path, exception_type=UNAUTHORIZED)


def file_in_use(path: str, *, category: str = "ResourceBusy", reason: str = "ObjectInUse") -> ModelError:
    return ModelError(f"The process cannot access the file '{path}' because it is being used by another process.",
                      category=category, reason=reason, target=path, exception_type=IO_EXCEPTION)


def disk_full(path: str = "") -> ModelError:
    return ModelError(DISK_FULL_MESSAGE, category="WriteError", reason="IOException", target=path,
                      exception_type=IO_EXCEPTION)


def object_in_use(target: str = "") -> ModelError:
    return ModelError("The operation cannot be performed while the object is in use.", category="ResourceBusy",
                      reason="ObjectInUse", target=target)


def failed_to_stop(vm_name: str) -> ModelError:
    return ModelError("Failed to stop.", category="NotSpecified", reason="OperationFailed", target=vm_name)


def invalid_state(vm_name: str) -> ModelError:
    return ModelError(f"The operation cannot be performed while the virtual machine '{vm_name}' is in its current "
                      "state.", category="InvalidOperation", reason="InvalidState", target=vm_name)


# --- paths -------------------------------------------------------------------------------------

_ILLEGAL_CHARS = frozenset('<>"|?*:') | frozenset(chr(c) for c in range(32))
_RESERVED_NAMES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(1, 10)),
                             *(f"LPT{i}" for i in range(1, 10))})


def check_name(name: str, *, what: str = "path") -> None:
    """NTFS/Win32 naming rules for one path component or VM name."""
    if any(ch in _ILLEGAL_CHARS for ch in name):
        raise ModelError("Illegal characters in path." if what == "path" else
                         f"The {what} '{name!r}' contains characters that are not allowed.",
                         category="InvalidArgument",
                         reason="ArgumentException" if what == "path" else "InvalidParameter", target=name,
                         exception_type=ARGUMENT_EXCEPTION if what == "path" else HYPERV_EXCEPTION)
    stem = name.split(".", 1)[0].upper()
    if name and ((name[-1] in " ." and name not in (".", "..")) or stem in _RESERVED_NAMES):
        raise ModelError(f"The name '{name}' is not valid on Windows (reserved device name, or ending in a space "
                         "or a period).", category="InvalidArgument",
                         reason="ArgumentException" if what == "path" else "InvalidParameter", target=name,
                         exception_type=ARGUMENT_EXCEPTION if what == "path" else HYPERV_EXCEPTION)


def vhd_format(path: str) -> str:
    return "VHD" if path.lower().endswith(".vhd") else "VHDX"


def canonical_path(path: str) -> str:
    """Normalised absolute Windows path (drive letter upper-cased, no trailing separator except a
    drive root). Raises InvalidArgument for relative or illegal paths."""
    if not isinstance(path, str) or not path.strip():
        raise ModelError("The path is empty.", category="InvalidArgument", reason="ArgumentException",
                         exception_type=ARGUMENT_EXCEPTION)
    normalized = ntpath.normpath(path.replace("/", "\\"))
    drive, rest = ntpath.splitdrive(normalized)
    if drive.startswith("\\\\"):
        parts = drive[2:].split("\\")
        if len(parts) != 2 or not all(parts):
            raise _not_absolute(path)
        result = drive + rest.rstrip("\\")
    elif len(drive) == 2 and drive[1] == ":" and drive[0].isalpha() and rest.startswith("\\"):
        rest = rest.rstrip("\\")
        result = drive.upper() + (rest or "\\")
    else:
        raise _not_absolute(path)
    if any(ch in _ILLEGAL_CHARS for ch in rest):
        raise ModelError("Illegal characters in path.", category="InvalidArgument", reason="ArgumentException",
                         target=path, exception_type=ARGUMENT_EXCEPTION)
    for part in rest.split("\\"):
        if part:
            check_name(part)
    return result


def _not_absolute(path: str) -> ModelError:
    return ModelError(f"The path '{path}' is not an absolute drive or UNC path (the simulated session has no current "
                      "location).", category="InvalidArgument", reason="ArgumentException", target=path,
                      exception_type=ARGUMENT_EXCEPTION)


def path_key(path: str) -> str:
    return canonical_path(path).lower()


def parent_path(canonical: str) -> str | None:
    _drive, rest = ntpath.splitdrive(canonical)
    if rest in ("", "\\"):
        return None
    return canonical_path(ntpath.dirname(canonical))


def root_of(canonical: str) -> str:
    drive, _ = ntpath.splitdrive(canonical)
    return drive if drive.startswith("\\\\") else drive + "\\"


def leaf_name(canonical: str) -> str:
    name = ntpath.basename(canonical)
    return name or canonical


def new_guid() -> str:
    return str(uuid.uuid4())


def iso_o(moment: datetime) -> str:
    """.NET `DateTime.ToUniversalTime().ToString('o')`: 7 fractional digits and a Z."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond:06d}0Z"


def xs_duration(seconds: float) -> str:
    """A TimeSpan as XML Schema duration (what a TimeSpan property is on the PSRP wire): "PT1M45.5S"."""
    total = max(0.0, seconds)
    days, rem = divmod(total, 86400)
    hours, rem = divmod(rem, 3600)
    minutes, secs = divmod(rem, 60)
    out = "P" + (f"{int(days)}D" if days else "") + "T"
    if hours:
        out += f"{int(hours)}H"
    if minutes:
        out += f"{int(minutes)}M"
    if secs or out.endswith("T"):
        text = f"{secs:.7f}".rstrip("0").rstrip(".")
        out += f"{text}S"
    if out.endswith("T"):
        out = out[:-1]
    return out


# --- state -------------------------------------------------------------------------------------


@dataclass
class Volume:
    """A formatted partition inside a VHD (issue 14: the first-boot configuration disk, and the
    partitions of an OS image). Files are keyed by their path from the volume's root
    (`Windows\\Panther\\unattend.xml`); names compare case-insensitively (FAT and NTFS). `folders`
    are the folders below the root (lower case); a file can only be written into one that exists."""

    file_system: str
    label: str
    files: dict[str, bytes] = field(default_factory=dict)
    partition_type: str = "Basic"  # Get-Partition Type: GPT Basic | System | Reserved | Recovery; MBR IFS
    folders: set[str] = field(default_factory=set)
    generalized: bool = False  # a Windows installation sysprepped with /generalize (specialize pass next boot)

    def read(self, name: str) -> bytes | None:
        return next((v for k, v in self.files.items() if k.lower() == name.lower()), None)

    def copy(self) -> Volume:
        return Volume(self.file_system, self.label, dict(self.files), self.partition_type, set(self.folders),
                      self.generalized)


@dataclass
class Vhd:
    vhd_type: str  # "Dynamic" | "Differencing"
    size: int
    block_size: int
    disk_identifier: str
    data_write_guid: str
    parent_path: str | None = None
    parent_write_guid: str | None = None
    blocks: dict[int, bytes] = field(default_factory=dict)
    write_open: bool = False
    partition_style: str | None = None  # None: RAW (never initialized)
    partition: bool = False  # one partition (the only layout modelled)
    volume: Volume | None = None
    os_volumes: list[Volume] | None = None  # an OS image's partitions, in order (partition number - 1)
    overlay: dict[int, dict[str, bytes]] = field(default_factory=dict)  # files written into THIS disk, per partition

    def clone(self) -> Vhd:
        return Vhd(self.vhd_type, self.size, self.block_size, self.disk_identifier, self.data_write_guid,
                   self.parent_path, self.parent_write_guid, dict(self.blocks), False, self.partition_style,
                   self.partition, None if self.volume is None else self.volume.copy(),
                   None if self.os_volumes is None else [v.copy() for v in self.os_volumes],
                   {i: dict(f) for i, f in self.overlay.items()})


@dataclass
class Mount:
    """A VHD mounted on the host (Mount-VHD): its disk number and, once partitioned, its drive letter."""

    key: str
    disk_number: int
    letter: str | None = None
    letters: dict[str, int] = field(default_factory=dict)  # an OS image's drive letters -> partition index


@dataclass
class FileNode:
    path: str
    created: float
    modified: float
    length: float = 0.0
    read_only: bool = False
    acl_protected: bool = False
    text: str | None = None
    vhd: Vhd | None = None

    @property
    def key(self) -> str:
        return self.path.lower()

    @property
    def size(self) -> int:
        return int(self.length)


@dataclass
class Folder:
    path: str
    created: float


@dataclass
class Drive:
    id: str
    path: str
    controller_type: str
    controller_number: int
    controller_location: int


@dataclass
class Snapshot:
    id: str
    name: str
    vm_id: str
    checkpoint_type: str
    created: float
    parent_snapshot_id: str | None
    disks: list[tuple[int, str, str]]  # (drive index, captured file path, .avhdx path)
    config_files: list[str] = field(default_factory=list)


@dataclass
class NetAdapter:
    id: str
    name: str
    mac: str
    switch_name: str | None
    ipv4: str
    ipv6_link_local: str
    static_mac: bool = False
    vlan_id: int | None = None  # access VLAN (None: untagged)


@dataclass
class VM:
    id: str
    name: str
    path: str
    generation: int
    memory_startup: int
    processor_count: int
    switch_name: str | None
    created: float
    drives: list[Drive] = field(default_factory=list)
    snapshots: list[Snapshot] = field(default_factory=list)
    config_files: list[str] = field(default_factory=list)
    notes: str = ""
    checkpoint_type: str = "Production"
    state: str = STATE_OFF
    started_at: float | None = None
    stop_at: float | None = None
    growth_t: float = 0.0
    current_snapshot_id: str | None = None
    shutdown_service: bool = True  # the guest's shutdown integration service answers
    shutdown_seconds: float | None = None  # the guest's own shutdown time (None: the host default)
    stop_fails: bool = False  # the running graceful stop gives up at stop_at (the VM stays Running)
    secure_boot: bool = True
    secure_boot_template: str = "MicrosoftWindows"
    critical: bool = False  # lost its storage: State shows the *Critical twin
    adapters: list[NetAdapter] = field(default_factory=list)
    integration_services: bool = True  # the guest runs Hyper-V integration services (heartbeat, KVP)
    boot_seconds: float | None = None  # the guest's boot time (None: the host default)
    dhcp: bool = True  # the guest gets an address on a switch
    guest_hostname: str = "localhost"  # the base image's hostname until something configures it
    guest_os: str = "Ubuntu 22.04.4 LTS"
    dynamic_memory: bool = False
    memory_minimum: int = 512 * MiB  # Get-VM MemoryMinimum / MemoryMaximum of a new VM (Dynamic Memory off)
    memory_maximum: int = 1024 * 1024 * MiB
    memory_buffer: int = 20
    guest_agent: str | None = "cloud-init"  # cloud-init | cloudbase-init | None: what reads a cidata volume
    instance_id: str | None = None  # the meta-data instance-id the guest agent last applied
    first_boot_files: dict[str, bytes] = field(default_factory=dict)  # what the agent read at first boot
    specialized: bool = False  # Windows Setup ran the specialize pass on this VM's generalized image
    answer_file: str | None = None  # where Windows Setup found the answer file it applied (None: none)


@dataclass
class MergeJob:
    vm_id: str
    child_key: str
    parent_key: str
    started: float
    done_at: float


@dataclass
class Process:
    """A Windows process as Win32_Process shows it."""

    pid: int
    name: str
    command_line: str
    created: float


@dataclass
class CopyJob:
    pid: int
    source: str
    destination: str
    partial: str
    status_path: str
    started: float
    total: int
    rate: float
    payload: FileNode
    state: str = "Running"  # Running | Completed | Failed | Stopped
    copied: float = 0.0
    fail_at_bytes: int | None = None
    error: str | None = None
    finished: float | None = None
    offloaded: bool = False
    worker: str = "current"  # current: File.Replace, skips a failed progress write | move-item: the old worker
    collide_n: int | None = None  # the progress write (whole second n) a reader holds the status file through
    stale_n: int | None = None  # a progress write that failed and was skipped (current worker)
    gap_at: float | None = None  # move-item worker: the instant between its delete and its move

    @property
    def host_bytes(self) -> int:
        """Bytes that went through the host's memory and network (none when offloaded)."""
        return 0 if self.offloaded else int(self.copied)

    @property
    def end_time(self) -> float:
        goal = self.total if self.fail_at_bytes is None else self.fail_at_bytes
        return self.started + (goal / self.rate if self.rate > 0 else math.inf)


def _chain_mismatch(child: str, parent: str) -> ModelError:
    return ModelError(
        f"The chain of virtual hard disks is corrupted. There is a mismatch in the identifiers of the parent virtual "
        f"hard disk '{parent}' and differencing disk '{child}'. (0xC03A000E)",
        category="InvalidData", reason="IdentifierMismatch", target=child)


class HostModel:
    """All state of one simulated host. Not thread-safe: `SimulatedHost` serialises access."""

    def __init__(
        self,
        *,
        epoch: datetime,
        copy_bytes_per_second: float,
        merge_bytes_per_second: float,
        guest_write_bytes_per_second: float,
        host_name: str,
        free_bytes: int,
        shutdown_seconds: float = 5.0,
        logical_processors: int = 16,
        memory_capacity: int = 128 * 2**30,
    ) -> None:
        self.epoch = epoch
        self.logical_processors = logical_processors
        self.memory_capacity = memory_capacity
        """Host facts reported by Get-VMHost; VMs are not checked against them."""
        self.virtual_machine_path = "C:\\ProgramData\\Microsoft\\Windows\\Hyper-V"
        self.virtual_hard_disk_path = "C:\\ProgramData\\Microsoft\\Windows\\Virtual Hard Disks"
        self.copy_rate = copy_bytes_per_second
        self.merge_rate = merge_bytes_per_second
        self.guest_rate = guest_write_bytes_per_second
        self.host_name = host_name
        self.capacity = free_bytes
        self.shutdown_seconds = shutdown_seconds
        self.now = 0.0
        self.roots: dict[str, str] = {}
        self.folders: dict[str, Folder] = {}
        self.files: dict[str, FileNode] = {}
        self.vms: dict[str, VM] = {}
        self.switches: dict[str, str] = {}
        self.copies: dict[int, CopyJob] = {}
        self.processes: dict[int, Process] = {}
        self.offload_roots: set[str] = set()
        self.offload_rate = copy_bytes_per_second
        self.vm_workers: dict[str, int] = {}  # VM id -> pid of its vmwp.exe
        self.merges: list[MergeJob] = []
        self.held_elsewhere: dict[str, str] = {}  # file key -> other host holding it open (shared storage)
        self.job_ids = 0
        self.read_only_folders: set[str] = set()  # folder keys whose ACL denies creating files
        self.hyperv_module = True  # False: a host without the Hyper-V PowerShell module (CommandNotFound)
        self.ui_culture = "en-US"  # the host's display language: integration services are named in it
        self.guest_boot_seconds = 20.0  # from Start-VM until the guest's integration services answer
        self.guest_network_seconds = 10.0  # after boot, until DHCP gave the guest its address
        self._next_mac = 0
        self.mounts: dict[str, Mount] = {}  # file key -> host mount (Mount-VHD)
        self._next_disk_number = 1  # disk 0 is the host's system disk
        self.status_read_collision: str | None = None  # "read-first" | "write-first": see observe_status_read
        self._next_pid = FIRST_PID
        self.add_root("C:\\")
        self.add_switch("Default Switch")

    # --- time ----------------------------------------------------------------------------------

    def date(self, t: float | None = None) -> datetime:
        return self.epoch + timedelta(seconds=self.now if t is None else t)

    def advance(self, t: float) -> None:
        """Bring the model to simulated time `t`, applying due events in chronological order."""
        t = max(t, self.now)
        while True:
            event = self._next_event(t)
            if event is None:
                break
            when, apply = event
            self._flow(when)
            self.now = when
            apply(when)
        self._flow(t)
        self.now = t

    def _next_event(self, limit: float) -> tuple[float, Callable[[float], None]] | None:
        best: tuple[float, Callable[[float], None]] | None = None

        def offer(when: float, apply: Callable[[float], None]) -> None:
            nonlocal best
            if when <= limit and (best is None or when < best[0]):
                best = (when, apply)

        for vm in self.vms.values():
            if vm.state == STATE_STOPPING and vm.stop_at is not None:
                offer(vm.stop_at, functools.partial(self._finish_stop_at, vm))
        for job in self.merges:
            offer(job.done_at, functools.partial(self._finish_merge, job))
        for copy in self.copies.values():
            if copy.state == "Running":
                offer(copy.end_time, functools.partial(self._finish_copy, copy))
                if copy.collide_n is not None:
                    offer(copy.started + copy.collide_n, functools.partial(self._status_write_collides, copy))
        return best

    def _flow(self, t: float) -> None:
        """Continuous processes up to `t`: guest writes growing top disks, copies moving bytes."""
        for vm in self.vms.values():
            if vm.state in ACTIVE_STATES and vm.drives:
                top = self.files.get(path_key(vm.drives[0].path))
                grow = (t - vm.growth_t) * self.guest_rate
                if top is not None and top.vhd is not None and grow > 0:
                    room = min(top.vhd.size + VHD_METADATA_BYTES - top.length, self.free_bytes_float())
                    add = max(0.0, min(grow, room))
                    if add > 0:
                        top.length += add
                        top.modified = t
            vm.growth_t = t
        for job in self.copies.values():
            if job.state != "Running":
                continue
            target = min(float(job.total), max(0.0, (t - job.started) * job.rate))
            if job.fail_at_bytes is not None:
                target = min(target, float(job.fail_at_bytes))
            delta = target - job.copied
            partial = self.files.get(path_key(job.partial))
            if delta > 0:
                free = self.free_bytes_float()
                if delta > free:
                    job.copied += max(0.0, free)
                    if partial is not None:
                        partial.length = job.copied
                    self._fail_copy(job, t, DISK_FULL_MESSAGE)
                    continue
                job.copied = target
                if partial is not None:
                    partial.length = job.copied
                    partial.modified = t
            self._write_status(job, t)

    # --- filesystem ----------------------------------------------------------------------------

    def add_root(self, path: str) -> None:
        canon = canonical_path(path)
        root = root_of(canon)
        self.roots.setdefault(root.lower(), root)

    def add_switch(self, name: str) -> None:
        self.switches[name.lower()] = name

    def used_bytes_float(self) -> float:
        return sum(node.length for node in self.files.values())

    def free_bytes_float(self) -> float:
        return self.capacity - self.used_bytes_float()

    def free_bytes(self) -> int:
        return int(self.free_bytes_float())

    def used_bytes(self) -> int:
        return int(self.used_bytes_float())

    def drive_letters(self) -> list[str]:
        """The drive-letter roots (`C:\\`), in order; UNC shares are not PowerShell drives."""
        return sorted(r for r in self.roots.values() if not r.startswith("\\\\"))

    def is_dir(self, canon: str) -> bool:
        key = canon.lower()
        return key in self.folders or key in self.roots

    def exists(self, canon: str) -> bool:
        drive, rest = ntpath.splitdrive(canon)
        if len(drive) == 2 and drive[1] == ":" and self.mounts:  # a volume of a disk mounted on the host
            mounted = self.mounted_os_volume(drive[0])
            if mounted is not None:
                name = rest.strip("\\").lower()
                volume = mounted[2]
                return not name or name in volume.folders or any(k.lower() == name for k in volume.files)
        return self.is_dir(canon) or canon.lower() in self.files

    def file(self, path: str) -> FileNode:
        canon = canonical_path(path)
        node = self.files.get(canon.lower())
        if node is None:
            raise path_not_found(path)
        return node

    def require_folder_of(self, canon: str) -> None:
        parent = parent_path(canon)
        if parent is None or not self.is_dir(parent):
            raise directory_not_found(canon)

    def ensure_folder(self, path: str, *, create_root: bool = False) -> Folder | str:
        """Create the folder and missing parents (New-Item -ItemType Directory). Returns the folder
        (or the root path for a root)."""
        canon = canonical_path(path)
        if canon.lower() in self.files:
            raise ModelError(f"An item with the specified name {canon} already exists.", category="ResourceExists",
                             reason="DirectoryExist", target=canon, exception_type=IO_EXCEPTION)
        root = root_of(canon)
        if root.lower() not in self.roots:
            if not create_root:
                raise ModelError(f"The network path was not found. : '{root}'", category="ObjectNotFound",
                                 reason="DriveNotFound", target=canon, exception_type=IO_EXCEPTION)
            self.roots[root.lower()] = root
        chain: list[str] = []
        cur: str | None = canon
        while cur is not None and cur.lower() not in self.roots:
            chain.append(cur)
            cur = parent_path(cur)
        for folder in reversed(chain):
            if folder.lower() in self.files:
                raise ModelError(f"An item with the specified name {folder} already exists.",
                                 category="ResourceExists", reason="DirectoryExist", target=folder,
                                 exception_type=IO_EXCEPTION)
            self.folders.setdefault(folder.lower(), Folder(folder, self.now))
        return self.folders[canon.lower()] if canon.lower() in self.folders else self.roots[canon.lower()]

    def children(self, canon: str) -> tuple[list[Folder], list[FileNode]]:
        key = canon.lower()
        folders = [f for k, f in self.folders.items() if (p := parent_path(f.path)) is not None and p.lower() == key]
        files = [n for n in self.files.values() if (p := parent_path(n.path)) is not None and p.lower() == key]
        folders.sort(key=lambda f: f.path.lower())
        files.sort(key=lambda n: n.path.lower())
        return folders, files

    def add_file(self, node: FileNode) -> FileNode:
        if node.length > self.free_bytes_float():
            raise disk_full(node.path)
        self.files[node.key] = node
        return node

    def _vm_chain_keys(self, vm: VM) -> set[str]:
        keys: set[str] = set()
        for drive in vm.drives:
            top = self.files.get(path_key(drive.path))
            if top is None:
                keys.add(path_key(drive.path))
                continue
            chain, _ = self.chain(top)
            keys.update(n.key for n in chain)
        return keys

    def _merge_keys(self) -> set[str]:
        return {k for m in self.merges for k in (m.child_key, m.parent_key)}

    def _copy_locks(self) -> tuple[set[str], set[str]]:
        running = [c for c in self.copies.values() if c.state == "Running"]
        return {path_key(c.source) for c in running}, {path_key(c.partial) for c in running}

    def attached_keys(self) -> set[str]:
        """Files a running VM or a merge holds open (Get-VHD Attached)."""
        keys = self._merge_keys() | set(self.mounts)
        for vm in self.vms.values():
            if vm.state in ACTIVE_STATES:
                keys |= self._vm_chain_keys(vm)
        return keys

    def in_use_by(self, key: str) -> str | None:
        """Why a file cannot be deleted, or None."""
        for vm in self.vms.values():
            if key in self._vm_chain_keys(vm):
                return f"disk of VM {vm.name}"
            if key in {c.lower() for c in vm.config_files} or any(
                key in {c.lower() for c in s.config_files} for s in vm.snapshots
            ):
                return f"configuration of VM {vm.name}"
        if key in self._merge_keys():
            return "merge"
        if key in self.mounts:
            return "mounted on the host"
        sources, partials = self._copy_locks()
        if key in sources or key in partials:
            return "copy"
        return None

    def remove_item(self, path: str, *, force: bool, recurse: bool) -> None:
        canon = canonical_path(path)
        key = canon.lower()
        if key in self.roots:
            raise ModelError(f"Cannot remove the root '{canon}'.", category="InvalidOperation",
                             reason="RemoveFileSystemItemUnAuthorizedAccess", target=canon,
                             exception_type=UNAUTHORIZED)
        if key in self.files:
            self._check_removable(self.files[key], force=force)
            del self.files[key]
            return
        if key not in self.folders:
            raise path_not_found(path)
        sub_folders = [k for k in self.folders if k.startswith(key + "\\")]
        sub_files = [n for k, n in self.files.items() if k.startswith(key + "\\")]
        if (sub_folders or sub_files) and not recurse:
            raise ModelError(f"The directory is not empty. : '{canon}' (Remove-Item without -Recurse)",
                             category="InvalidOperation", reason="DirectoryNotEmpty", target=canon,
                             exception_type=IO_EXCEPTION)
        for node in sub_files:
            self._check_removable(node, force=force)
        for node in sub_files:
            del self.files[node.key]
        for k in [*sub_folders, key]:
            del self.folders[k]

    def _check_removable(self, node: FileNode, *, force: bool) -> None:
        if node.acl_protected:
            raise ModelError(f"Access to the path '{node.path}' is denied.", category="PermissionDenied",
                             reason="RemoveFileSystemItemUnAuthorizedAccess", target=node.path,
                             exception_type=UNAUTHORIZED)
        if self.in_use_by(node.key) is not None:
            raise file_in_use(node.path, category="WriteError", reason="RemoveFileSystemItemIOError")
        if node.read_only and not force:
            raise ModelError(f"Cannot remove item {node.path}: You do not have sufficient access rights to perform "
                             "this operation.", category="PermissionDenied",
                             reason="RemoveFileSystemItemUnAuthorizedAccess", target=node.path,
                             exception_type=UNAUTHORIZED)

    def read_text(self, path: str) -> str:
        canon = canonical_path(path)
        if self.is_dir(canon):
            raise access_denied(canon)
        node = self.file(canon)
        _, partials = self._copy_locks()
        if node.key in partials:
            raise file_in_use(node.path, category="ReadError", reason="GetContentReaderIOError")
        return node.text if node.text is not None else ""

    def write_text(self, path: str, text: str) -> FileNode:
        """[IO.File]::WriteAllText: create or overwrite a text file in an existing folder."""
        canon = canonical_path(path)
        self.require_folder_of(canon)
        existing = self.files.get(canon.lower())
        if existing is not None and (existing.acl_protected or existing.read_only or self.in_use_by(existing.key)):
            raise access_denied(canon)
        node = FileNode(canon, self.now, self.now, float(len(text.encode("utf-8"))), text=text)
        self.files[node.key] = node
        return node

    # --- disks ---------------------------------------------------------------------------------

    def vhd_node(self, path: str) -> FileNode:
        canon = canonical_path(path)
        node = self.files.get(canon.lower())
        if node is None:
            raise ModelError(f"Getting the mounted storage instance for the path '{canon}' failed. The system cannot "
                             "find the file specified.", category="ObjectNotFound", reason="ObjectNotFound",
                             target=canon)
        _, partials = self._copy_locks()
        if node.key in partials:
            raise file_in_use(node.path)
        if node.vhd is None:
            raise ModelError(f"The file '{canon}' is not a virtual hard disk file.", category="InvalidArgument",
                             reason="InvalidParameter", target=canon)
        return node

    def chain(self, top: FileNode) -> tuple[list[FileNode], str | None]:
        """The disk chain from `top` to its root, and the missing parent's path if it is broken."""
        chain = [top]
        seen = {top.key}
        cur = top
        while cur.vhd is not None and cur.vhd.parent_path:
            key = path_key(cur.vhd.parent_path)
            parent = self.files.get(key)
            if parent is None or parent.vhd is None:
                return chain, cur.vhd.parent_path
            if key in seen:
                break
            chain.append(parent)
            seen.add(key)
            cur = parent
        return chain, None

    def view(self, top: FileNode) -> dict[int, bytes]:
        chain, missing = self.chain(top)
        if missing is not None:
            raise ModelError(f"The parent disk '{missing}' of '{chain[-1].path}' does not exist.",
                             category="ObjectNotFound", reason="ObjectNotFound", target=missing)
        out: dict[int, bytes] = {}
        for node in reversed(chain):
            assert node.vhd is not None
            out.update(node.vhd.blocks)
        return out

    def _validate_chain(self, top: FileNode) -> list[FileNode]:
        chain, missing = self.chain(top)
        if missing is not None:
            raise ModelError(f"The system cannot find the file specified: the parent disk '{missing}' of "
                             f"'{chain[-1].path}'.", category="ObjectNotFound", reason="ObjectNotFound",
                             target=missing)
        for child, parent in itertools.pairwise(chain):
            assert child.vhd is not None and parent.vhd is not None
            if child.vhd.parent_write_guid != parent.vhd.data_write_guid:
                raise _chain_mismatch(child.path, parent.path)
        return chain

    def _check_writable(self, node: FileNode, *, who: str = "") -> None:
        """Could `node` be opened for write now (ACL, read-only attribute, sharing)?"""
        prefix = f"{who}: " if who else ""
        if node.acl_protected:
            raise ModelError(f"{prefix}Access to the path '{node.path}' is denied. (0x80070005)",
                             category="PermissionDenied", reason="AccessDenied", target=node.path,
                             exception_type=UNAUTHORIZED)
        if node.read_only:
            raise ModelError(f"{prefix}The file '{node.path}' is read-only. (0x80070005)", category="PermissionDenied",
                             reason="AccessDenied", target=node.path, exception_type=UNAUTHORIZED)
        sources, partials = self._copy_locks()
        if node.key in sources or node.key in partials:
            raise ModelError(f"{prefix}The process cannot access the file '{node.path}' because it is being used by "
                             "another process. (0x80070020)", category="ResourceBusy", reason="ObjectInUse",
                             target=node.path, exception_type=IO_EXCEPTION)

    def refresh_opens(self) -> None:
        """Open for write what must be (top disks of active VMs, merge targets), close the rest.
        Opening a closed disk for write gives it a new DataWriteGuid."""
        wanted: dict[str, str | None] = {}
        for vm in self.vms.values():
            if vm.state in ACTIVE_STATES:
                for drive in vm.drives:
                    wanted.setdefault(path_key(drive.path), None)
        for job in self.merges:
            wanted[job.parent_key] = job.child_key
        for key, node in self.files.items():
            if node.vhd is None:
                continue
            if key in wanted and not node.vhd.write_open:
                node.vhd.write_open = True
                node.vhd.data_write_guid = new_guid()
                node.modified = self.now
                child_key = wanted[key]
                child = self.files.get(child_key) if child_key else None
                if child is not None and child.vhd is not None:
                    child.vhd.parent_write_guid = node.vhd.data_write_guid
            elif key not in wanted and node.vhd.write_open:
                node.vhd.write_open = False

    def new_vhd_differencing(self, path: str, parent: str) -> FileNode:
        canon = canonical_path(path)
        if not canon.lower().endswith(".vhdx"):
            raise ModelError(f"Failed to create the virtual hard disk. The file name '{canon}' must have the .vhdx "
                             "extension.", category="InvalidArgument", reason="InvalidParameter", target=canon)
        parent_canon = canonical_path(parent)
        if parent_canon.lower().endswith(".avhdx"):
            raise ModelError(f"Failed to create the virtual hard disk. The parent '{parent_canon}' is an automatic "
                             "virtual hard disk (.avhdx) of a checkpoint and cannot be the parent of a new disk.",
                             category="InvalidArgument", reason="InvalidParameter", target=parent_canon)
        if self.exists(canon):
            raise ModelError(f"Failed to create the virtual hard disk. The system failed to create '{canon}': The file "
                             "exists. (0x80070050)", category="ResourceExists", reason="ResourceExists", target=canon)
        parent_node = self.vhd_node(parent_canon)
        self.require_folder_of(canon)
        assert parent_node.vhd is not None
        if parent_node.vhd.write_open:
            raise file_in_use(parent_node.path)
        vhd = Vhd("Differencing", parent_node.vhd.size, DIFF_BLOCK_SIZE, new_guid().upper(), new_guid(),
                  parent_node.path, parent_node.vhd.data_write_guid)
        return self.add_file(FileNode(canon, self.now, self.now, float(NEW_DIFF_FILE_SIZE), vhd=vhd))

    def new_vhd_dynamic(self, path: str, size: int) -> FileNode:
        canon = canonical_path(path)
        if not canon.lower().endswith(".vhdx"):
            raise ModelError(f"Failed to create the virtual hard disk. The file name '{canon}' must have the .vhdx "
                             "extension.", category="InvalidArgument", reason="InvalidParameter", target=canon)
        if size < 3 * MiB or size % 512:
            raise ModelError("The size must be at least 3 MB and a multiple of 512 bytes.",
                             category="InvalidArgument", reason="InvalidParameter", target=canon)
        if self.exists(canon):
            raise ModelError(f"Failed to create the virtual hard disk. The system failed to create '{canon}': The file "
                             "exists. (0x80070050)", category="ResourceExists", reason="ResourceExists", target=canon)
        self.require_folder_of(canon)
        vhd = Vhd("Dynamic", size, DYNAMIC_BLOCK_SIZE, new_guid().upper(), new_guid())
        return self.add_file(FileNode(canon, self.now, self.now, float(NEW_DIFF_FILE_SIZE), vhd=vhd))

    def set_vhd_parent(self, path: str, parent: str, leaf: str | None) -> FileNode:
        node = self.vhd_node(path)
        assert node.vhd is not None
        if node.vhd.vhd_type != "Differencing":
            raise ModelError(f"Failed to set new parent for the virtual disk. The virtual hard disk '{node.path}' is "
                             "not a differencing disk.", category="InvalidArgument", reason="InvalidParameter",
                             target=node.path)
        holders = [vm for vm in self.vms.values() if vm.state in ACTIVE_STATES and node.key in self._vm_chain_keys(vm)]
        merging = [m for m in self.merges if node.key in (m.child_key, m.parent_key)]
        if merging:
            raise object_in_use(node.path)
        if holders:
            if leaf is None:
                raise ModelError(f"Failed to set new parent for the virtual disk '{node.path}': the disk chain is in "
                                 "use by a running virtual machine; -LeafPath is required for an online re-parent.",
                                 category="InvalidOperation", reason="InvalidOperation", target=node.path)
            leaf_key = path_key(leaf)
            tops = {path_key(d.path) for vm in holders for d in vm.drives}
            if leaf_key not in tops:
                raise ModelError(f"Failed to set new parent for the virtual disk: '{leaf}' is not the leaf of the "
                                 "running chain.", category="InvalidArgument", reason="InvalidParameter", target=leaf)
        elif leaf is not None:
            leaf_node = self.vhd_node(leaf)
            if node.key not in {n.key for n in self.chain(leaf_node)[0]}:
                raise ModelError(f"Failed to set new parent for the virtual disk: '{node.path}' is not in the chain "
                                 f"of '{leaf_node.path}'.", category="InvalidArgument", reason="InvalidParameter",
                                 target=leaf)
        parent_canon = canonical_path(parent)
        if not parent_canon.lower().endswith(".vhdx"):
            raise ModelError(f"Failed to set new parent for the virtual disk. The new parent '{parent_canon}' must be "
                             "a .vhdx file.", category="InvalidArgument", reason="InvalidParameter",
                             target=parent_canon)
        new_parent = self.vhd_node(parent_canon)
        assert new_parent.vhd is not None
        if new_parent.key == node.key or node.key in {n.key for n in self.chain(new_parent)[0]}:
            raise ModelError("Failed to set new parent for the virtual disk: the new parent is a child of the disk.",
                             category="InvalidArgument", reason="InvalidParameter", target=parent_canon)
        if new_parent.vhd.size != node.vhd.size:
            raise ModelError(f"Failed to set new parent for the virtual disk. The virtual size of '{parent_canon}' "
                             "does not match the differencing disk.", category="InvalidArgument",
                             reason="InvalidParameter", target=parent_canon)
        if new_parent.vhd.data_write_guid != node.vhd.parent_write_guid:
            raise ModelError(
                f"Failed to set new parent for the virtual disk '{node.path}'. The chain of virtual hard disks is "
                f"corrupted. There is a mismatch in the identifiers of the parent virtual hard disk '{parent_canon}' "
                "and differencing disk. (0xC03A000E)",
                category="InvalidData", reason="IdentifierMismatch", target=parent_canon)
        sources, partials = self._copy_locks()
        if node.key in sources or node.key in partials:
            raise file_in_use(node.path)
        node.vhd.parent_path = new_parent.path
        node.modified = self.now
        return node

    # --- VMs -----------------------------------------------------------------------------------

    def vm(self, vm_id: str) -> VM:
        vm = self.vms.get(vm_id.lower())
        if vm is None:
            # Get-VM reports a missing VM as InvalidParameter / InvalidArgument, not ObjectNotFound
            # (pluralsight/PS-AutoLab-Env#133 shows the trace for -Name; -Id takes the same path).
            raise ModelError(f"Hyper-V was unable to find a virtual machine with ID \"{vm_id}\".",
                             category="InvalidArgument", reason="InvalidParameter", target=vm_id)
        return vm

    def vms_named(self, name: str) -> list[VM]:
        return [vm for vm in self.vms.values() if vm.name.lower() == name.lower()]

    def vm_state(self, vm: VM) -> str:
        """State as Get-VM shows it (Microsoft.HyperV.PowerShell.VMState)."""
        return vm.state + "Critical" if vm.critical else vm.state

    def vm_status(self, vm: VM) -> str:
        """Get-VM's Status: localized text; on a host not in English it is not these words."""
        english = STATUS_MERGING if any(m.vm_id == vm.id for m in self.merges) else STATUS_OK
        return english if self.ui_culture == "en-US" else LOCALIZED_STATUS.get(english, english)

    def vm_operational_status(self, vm: VM) -> list[str]:
        """Get-VM's OperationalStatus (VMOperationalStatus names, the same on every host): Ok, and
        MergingDisks as its second entry while a checkpoint merges (the WMI OperationalStatus[1])."""
        return ["Ok", "MergingDisks"] if any(m.vm_id == vm.id for m in self.merges) else ["Ok"]

    def uptime(self, vm: VM) -> float:
        return self.now - vm.started_at if vm.state in ACTIVE_STATES and vm.started_at is not None else 0.0

    def new_vm(self, name: str, path: str, vhd_path: str | None, memory: int, generation: int,
               switch: str | None) -> VM:
        if not name or len(name) > 100:
            raise ModelError("The virtual machine name must be 1 to 100 characters long.",
                             category="InvalidArgument", reason="InvalidParameter", target=name)
        check_name(name, what="virtual machine name")
        if memory < 32 * MiB or memory % (2 * MiB):
            raise ModelError(f"Failed to modify device 'Memory'. Invalid startup memory amount assigned for '{name}': "
                             "it must be at least 32 MB and a multiple of 2 MB.", category="InvalidArgument",
                             reason="InvalidParameter", target=name)
        if generation not in (1, 2):
            raise ModelError(f"Cannot validate argument on parameter 'Generation'. The {generation} argument is not "
                             "1 or 2.", category="InvalidData", reason="ParameterArgumentValidationError",
                             target=str(generation))
        if switch is not None and switch.lower() not in self.switches:
            raise ModelError(f"Hyper-V was unable to find a virtual switch with name '{switch}'.",
                             category="InvalidArgument", reason="InvalidParameter", target=switch)
        folder = canonical_path(path)
        if not self.is_dir(folder):
            raise directory_not_found(folder)
        vhd_node = None
        if vhd_path is not None:
            vhd_node = self.files.get(path_key(vhd_path))
            if vhd_node is None or vhd_node.vhd is None:
                raise ModelError("Failed to add device 'Virtual Hard Disk'. The system cannot find the file "
                                 f"specified: '{vhd_path}'.", category="ObjectNotFound", reason="ObjectNotFound",
                                 target=vhd_path)
            if generation == 2 and vhd_format(vhd_node.path) != "VHDX":
                raise ModelError(f"Failed to add device 'Virtual Hard Disk'. '{vhd_node.path}' is a VHD: generation 2 "
                                 "virtual machines support only VHDX disks.", category="InvalidArgument",
                                 reason="InvalidParameter", target=vhd_path)
        vm_id = new_guid()
        vm_path = canonical_path(folder + "\\" + name)
        config_dir = vm_path + "\\Virtual Machines"
        config_files = [f"{config_dir}\\{vm_id.upper()}{ext}" for ext in (".vmcx", ".vmgs", ".VMRS")]
        if CONFIG_FILE_SIZE * len(config_files) > self.free_bytes_float():
            raise disk_full(config_dir)
        self.ensure_folder(config_dir)
        for cfg in config_files:
            self.add_file(FileNode(cfg, self.now, self.now, float(CONFIG_FILE_SIZE)))
        vm = VM(vm_id, name, vm_path, generation, memory, 1, switch, self.now, config_files=config_files,
                growth_t=self.now)
        vm.adapters.append(self._new_adapter(switch))
        if vhd_node is not None:
            ctype = "SCSI" if generation == 2 else "IDE"
            vm.drives.append(Drive(new_guid(), vhd_node.path, ctype, 0, 0))
        self.vms[vm_id] = vm
        return vm

    def set_memory(self, vm: VM, startup: int) -> None:
        def refused(why: str) -> ModelError:
            return ModelError(f"Failed to modify device 'Memory'. '{vm.name}' failed to modify memory: {why}",
                              category="InvalidOperation", reason="InvalidOperation", target=vm.name,
                              exception_type=HYPERV_EXCEPTION)

        if startup < 32 * MiB or startup % (2 * MiB):
            raise ModelError(f"Failed to modify device 'Memory'. Invalid startup memory amount assigned for "
                             f"'{vm.name}': it must be at least 32 MB and a multiple of 2 MB.",
                             category="InvalidArgument", reason="InvalidParameter", target=vm.name)
        if vm.state not in ACTIVE_STATES and not vm.critical:
            vm.memory_startup = startup
            return
        if vm.critical or vm.state != STATE_RUNNING:
            raise invalid_state(vm.name)
        if vm.dynamic_memory:
            raise refused("the startup memory of a running virtual machine with Dynamic Memory cannot change.")
        if self.guest_up_for(vm) is None:
            raise refused("the guest operating system does not support runtime memory resize (it has not "
                          "started, or it runs no integration services).")
        if startup < vm.memory_startup:
            if "windows" not in vm.guest_os.lower():
                raise refused("the guest operating system does not support removing memory.")
            if startup < GUEST_MEMORY_DEMAND:
                raise refused("the guest cannot release that much memory.")
        vm.memory_startup = startup

    def add_network_adapter(self, vm: VM, name: str, switch: str | None, static_mac: str | None) -> NetAdapter:
        """Add-VMNetworkAdapter: the switch must exist; a static MAC is 12 hex digits; a Generation 1 VM
        takes a new adapter only while off (Generation 2 supports hot add, Windows Server 2016+)."""
        if vm.critical or (vm.state != STATE_OFF and vm.generation == 1):
            raise invalid_state(vm.name)
        if switch is not None and switch.lower() not in self.switches:
            raise ModelError(f"Hyper-V was unable to find a virtual switch with name '{switch}'.",
                             category="InvalidArgument", reason="InvalidParameter", target=switch)
        adapter = self._new_adapter(switch)
        adapter.name = name
        if static_mac is not None:
            mac = static_mac.replace("-", "").replace(":", "").upper()
            if len(mac) != 12 or any(ch not in "0123456789ABCDEF" for ch in mac):
                raise ModelError(f"Failed to set the MAC address '{static_mac}': it is not a valid MAC address.",
                                 category="InvalidArgument", reason="InvalidParameter", target=static_mac)
            adapter.mac, adapter.static_mac = mac, True
        vm.adapters.append(adapter)
        return adapter

    def remove_network_adapter(self, vm: VM, adapter: NetAdapter) -> None:
        if vm.critical or (vm.state != STATE_OFF and vm.generation == 1):
            raise invalid_state(vm.name)
        vm.adapters = [a for a in vm.adapters if a.id != adapter.id]

    def set_adapter_vlan(self, adapter: NetAdapter, vlan_id: int) -> None:
        """Set-VMNetworkAdapterVlan -Access -VlanId: 1 to 4094."""
        if not 1 <= vlan_id <= 4094:
            raise ModelError(f"The VLAN identifier {vlan_id} is not valid: it must be between 1 and 4094.",
                             category="InvalidArgument", reason="InvalidParameter", target=str(vlan_id))
        adapter.vlan_id = vlan_id

    def set_memory_config(self, vm: VM, *, startup: int | None, dynamic: bool | None, minimum: int | None,
                          maximum: int | None, buffer: int | None) -> None:
        """Set-VMMemory with Dynamic Memory parameters (issue 14). Buffer 5-2000 (Set-VMMemory
        documentation); with Dynamic Memory on, minimum <= startup <= maximum, each at least 32 MB and a
        multiple of 2 MB [strict]. Dynamic Memory is switched on or off only while the VM is off; on a
        running VM with Dynamic Memory only a larger maximum or a smaller minimum is taken [strict]."""
        def invalid(why: str) -> ModelError:
            return ModelError(f"Failed to modify device 'Memory'. '{vm.name}': {why}", category="InvalidArgument",
                              reason="InvalidParameter", target=vm.name, exception_type=HYPERV_EXCEPTION)

        if buffer is not None and not 5 <= buffer <= 2000:
            raise invalid(f"the memory buffer {buffer} is not between 5 and 2000 percent.")
        for value in (v for v in (minimum, maximum, startup) if v is not None):
            if value < 32 * MiB or value % (2 * MiB):
                raise invalid(f"{value} bytes is not at least 32 MB and a multiple of 2 MB.")
        enabled = vm.dynamic_memory if dynamic is None else dynamic
        new_startup = vm.memory_startup if startup is None else startup
        new_min = vm.memory_minimum if minimum is None else minimum
        new_max = vm.memory_maximum if maximum is None else maximum
        if enabled and not new_min <= new_startup <= new_max:
            raise invalid(f"with Dynamic Memory the minimum ({new_min // MiB} MB) must not exceed the startup memory "
                          f"({new_startup // MiB} MB), nor the startup memory the maximum ({new_max // MiB} MB).")
        active = vm.state in ACTIVE_STATES or vm.critical
        if active and dynamic is not None and dynamic != vm.dynamic_memory:
            raise invalid_state(vm.name)
        if active and vm.dynamic_memory and (new_min > vm.memory_minimum or new_max < vm.memory_maximum
                                             or new_startup != vm.memory_startup):
            raise invalid("on a running virtual machine Dynamic Memory's maximum can only grow and its minimum "
                          "only shrink.")
        if startup is not None and not vm.dynamic_memory and not enabled:
            self.set_memory(vm, startup)  # static memory: the runtime-resize rules
        else:
            vm.memory_startup = new_startup
        vm.dynamic_memory, vm.memory_minimum, vm.memory_maximum = enabled, new_min, new_max
        if buffer is not None:
            vm.memory_buffer = buffer

    def _new_adapter(self, switch: str | None) -> NetAdapter:
        self._next_mac += 1
        n = self._next_mac
        mac = f"00155D{(n >> 16) & 0xFF:02X}{(n >> 8) & 0xFF:02X}{n & 0xFF:02X}"
        return NetAdapter(new_guid(), "Network Adapter", mac, self.switches.get(switch.lower()) if switch else None,
                          f"172.20.{(n // 250) % 250}.{n % 250 + 2}", f"fe80::215:5dff:fe{n & 0xFF:02x}:{n:04x}")

    # --- host-mounted disks and the first-boot configuration disk (issue 14) ------------------------

    def mount_of(self, disk_number: int) -> Mount:
        for mount in self.mounts.values():
            if mount.disk_number == disk_number:
                return mount
        raise ModelError(f"No MSFT_Disk objects found with property 'Number' equal to '{disk_number}'. Verify the "
                         "value of the property and retry.", category="ObjectNotFound", reason="CmdletizationQuery_"
                         "NotFound_Number", target=str(disk_number))

    def _mounted_vhd(self, mount: Mount) -> Vhd:
        node = self.files[mount.key]
        assert node.vhd is not None
        return node.vhd

    def mount_vhd(self, path: str, *, no_drive_letter: bool = False) -> Mount:
        """Mount-VHD: the disk appears on the host (no drive letter until a partition gets one). A disk
        a running VM holds, or one already mounted, cannot be mounted [strict: 'in use']. An OS image's
        basic data partitions (GPT Basic; MBR IFS, System Reserved included) get the next free drive
        letters unless -NoDriveLetter; its EFI system, MSR and recovery partitions get none. A
        differencing disk mounts with its parents' content (the parents are only read); what is
        written goes into the mounted file."""
        node = self.vhd_node(path)
        if node.key in self.attached_keys():
            raise file_in_use(node.path)
        self._check_writable(node, who=f"Mount-VHD '{node.path}'")
        self._validate_chain(node)
        mount = Mount(node.key, self._next_disk_number)
        volumes = self.os_view(node)
        if volumes is not None and not no_drive_letter:
            taken = {r[0].upper() for r in self.drive_letters()} | self._taken_letters()
            free = [c for c in "DEFGHIJKLMNOPQRSTUVWXYZ" if c not in taken]
            for index, volume in enumerate(volumes):
                if volume.partition_type in ("Basic", "IFS") and free:
                    mount.letters[free.pop(0)] = index
        self._next_disk_number += 1
        self.mounts[node.key] = mount
        return mount

    def _taken_letters(self) -> set[str]:
        return {m.letter for m in self.mounts.values() if m.letter} | {
            letter for m in self.mounts.values() for letter in m.letters}

    def os_view(self, top: FileNode) -> list[Volume] | None:
        """An OS image's partitions as the disk chain from `top` presents them: the root image's
        volumes with each disk's written files on top, oldest first. None: no OS image in the chain."""
        chain, _ = self.chain(top)
        root = next((n for n in reversed(chain) if n.vhd is not None and n.vhd.os_volumes is not None), None)
        if root is None or root.vhd is None or root.vhd.os_volumes is None:
            return None
        volumes = [v.copy() for v in root.vhd.os_volumes]
        for node in reversed(chain[:chain.index(root) + 1]):
            assert node.vhd is not None
            for index, written in node.vhd.overlay.items():
                if index < len(volumes):
                    for name, data in written.items():
                        for key in [k for k in volumes[index].files if k.lower() == name.lower()]:
                            del volumes[index].files[key]
                        volumes[index].files[name] = data
        return volumes

    def mounted_os_volume(self, letter: str) -> tuple[FileNode, int, Volume] | None:
        for mount in self.mounts.values():
            if letter.upper() in mount.letters:
                node = self.files[mount.key]
                volumes = self.os_view(node)
                index = mount.letters[letter.upper()]
                if volumes is not None:
                    return node, index, volumes[index]
        return None

    def dismount_vhd(self, path: str) -> None:
        node = self.vhd_node(path)
        if node.key not in self.mounts:
            raise ModelError(f"The disk '{node.path}' is not attached (mounted) on this host.",
                             category="InvalidOperation", reason="InvalidOperation", target=node.path,
                             exception_type=HYPERV_EXCEPTION)
        del self.mounts[node.key]
        node.modified = self.now

    def initialize_disk(self, disk_number: int, partition_style: str) -> Mount:
        """Initialize-Disk: only a RAW disk (Initialize-Disk documentation: 'initializes a RAW disk')."""
        mount = self.mount_of(disk_number)
        vhd = self._mounted_vhd(mount)
        if vhd.partition_style is not None:
            raise ModelError("The disk has already been initialized.", category="InvalidOperation",
                             reason="StorageWMI 41001,Initialize-Disk", target=str(disk_number))
        vhd.partition_style = partition_style.upper()
        return mount

    def new_partition(self, disk_number: int, *, assign_letter: bool) -> Mount:
        """New-Partition -UseMaximumSize [-AssignDriveLetter]: the one partition modelled."""
        mount = self.mount_of(disk_number)
        vhd = self._mounted_vhd(mount)
        if vhd.partition_style is None:
            raise ModelError("The disk has not been initialized.", category="InvalidOperation",
                             reason="StorageWMI 41000,New-Partition", target=str(disk_number))
        if vhd.partition:
            raise ModelError("Not enough available capacity.", category="NotSpecified",
                             reason="StorageWMI 40000,New-Partition", target=str(disk_number))
        vhd.partition = True
        if assign_letter:
            taken = {r[0].upper() for r in self.drive_letters()} | self._taken_letters()
            free = [c for c in "DEFGHIJKLMNOPQRSTUVWXYZ" if c not in taken]
            if not free:
                raise ModelError("No drive letter is available.", category="NotSpecified",
                                 reason="StorageWMI 42002,New-Partition", target=str(disk_number))
            mount.letter = free[0]
        return mount

    def format_volume(self, disk_number: int, file_system: str, label: str) -> tuple[Mount, Volume]:
        """Format-Volume: a new, empty file system. A FAT volume label holds at most 11 characters."""
        mount = self.mount_of(disk_number)
        vhd = self._mounted_vhd(mount)
        if not vhd.partition:
            raise ModelError("The disk has no partition to format.", category="InvalidOperation",
                             reason="StorageWMI,Format-Volume", target=str(disk_number))
        if file_system.upper() in ("FAT", "FAT32") and len(label) > 11:
            raise ModelError(f"The volume label '{label}' is too long for {file_system} (11 characters at most).",
                             category="InvalidArgument", reason="StorageWMI,Format-Volume", target=label)
        vhd.volume = Volume(file_system.upper(), label)
        return mount, vhd.volume

    def mounted_volume(self, letter: str) -> Volume | None:
        for mount in self.mounts.values():
            if mount.letter and mount.letter.upper() == letter.upper():
                return self._mounted_vhd(mount).volume
        return None

    def set_content(self, path: str, value: bytes | str, *, byte_encoding: bool) -> None:
        """Set-Content: on a mounted volume's root (X:\\name) or a host file. `-Encoding Byte` writes
        the bytes as given; without it a string is written as text."""
        canon = canonical_path(path)
        drive, rest = ntpath.splitdrive(canon)
        data = value if isinstance(value, bytes) else value.encode("utf-8")
        if byte_encoding and not isinstance(value, bytes):
            raise ModelError("Cannot convert the value to System.Byte.", category="InvalidArgument",
                             reason="SetContentWriterIOError", target=canon)
        os_mount = self.mounted_os_volume(drive[0]) if len(drive) == 2 and drive[1] == ":" else None
        if os_mount is not None:
            node, index, view = os_mount
            name = rest.strip("\\")
            folder = name.rsplit("\\", 1)[0].lower() if "\\" in name else ""
            if not name or (folder and folder not in view.folders) or name.lower() in view.folders:
                raise directory_not_found(canon)  # Set-Content does not create folders
            assert node.vhd is not None
            written = node.vhd.overlay.setdefault(index, {})
            for key in [k for k in written if k.lower() == name.lower()]:
                del written[key]
            written[name] = data
            node.modified = self.now
            return
        volume = self.mounted_volume(drive[0]) if len(drive) == 2 and drive[1] == ":" else None
        if volume is not None:
            name = rest.strip("\\")
            if not name or "\\" in name:
                raise directory_not_found(canon)  # only the root folder is modelled [strict]
            for key in [k for k in volume.files if k.lower() == name.lower()]:
                del volume.files[key]
            volume.files[name] = data
            return
        if len(drive) == 2 and drive[1] == ":" and drive.lower() not in self.roots:
            raise ModelError(f"Cannot find drive. A drive with the name '{drive[0]}' does not exist.",
                             category="ObjectNotFound", reason="DriveNotFound", target=drive[0],
                             exception_type="System.Management.Automation.DriveNotFoundException")
        self.write_text(canon, data.decode("utf-8", errors="replace"))

    def rename_item(self, path: str, new_name: str) -> FileNode:
        """Rename-Item: same folder, the target must not exist, the file must not be in use."""
        node = self.file(path)
        if "\\" in new_name or not new_name:
            raise ModelError("Cannot rename the specified target, because it represents a path or device name.",
                             category="InvalidArgument", reason="Argument", target=new_name)
        parent = parent_path(node.path)
        target = canonical_path(f"{parent}\\{new_name}")
        if self.exists(target):
            raise ModelError("Cannot create a file when that file already exists.", category="WriteError",
                             reason="RenameItemIOError", target=target, exception_type=IO_EXCEPTION)
        if self.in_use_by(node.key) is not None:
            raise file_in_use(node.path, category="WriteError", reason="RenameItemIOError")
        del self.files[node.key]
        node.path = target
        self.files[node.key] = node
        return node

    def add_hard_disk_drive(self, vm: VM, path: str, controller_type: str, number: int, location: int) -> Drive:
        """Add-VMHardDiskDrive: SCSI may be added to a running VM, IDE only while off; the location must be
        free; a disk mounted on the host or in another VM's chain is in use."""
        if vm.critical:
            raise invalid_state(vm.name)
        node = self.vhd_node(path)
        ctype = controller_type.upper()
        if ctype == "IDE" and vm.state != STATE_OFF:
            raise invalid_state(vm.name)
        if ctype == "IDE" and vm.generation == 2:
            raise ModelError("Generation 2 virtual machines have no IDE controller.", category="InvalidArgument",
                             reason="InvalidParameter", target=vm.name)
        if self.in_use_by(node.key) is not None:
            raise file_in_use(node.path)
        if any(d.controller_type == ctype and d.controller_number == number and d.controller_location == location
               for d in vm.drives):
            raise ModelError(f"Failed to add device 'Virtual Hard Disk': the {ctype} controller {number} location "
                             f"{location} is in use.", category="InvalidArgument", reason="InvalidParameter",
                             target=vm.name, exception_type=HYPERV_EXCEPTION)
        drive = Drive(new_guid(), node.path, ctype, number, location)
        vm.drives.append(drive)
        self.refresh_opens()
        return drive

    def remove_hard_disk_drive(self, vm: VM, drive: Drive) -> None:
        """Remove-VMHardDiskDrive: SCSI drives may go while the VM runs (hot remove), IDE only while off."""
        if vm.critical or (drive.controller_type == "IDE" and vm.state != STATE_OFF):
            raise invalid_state(vm.name)
        vm.drives = [d for d in vm.drives if d.id != drive.id]
        self.refresh_opens()

    def _first_boot(self, vm: VM) -> None:
        """The guest agent at boot (cloud-init's NoCloud data source, cloudbase-init's NoCloud service):
        a vfat/iso9660 volume labelled cidata (or CIDATA) with user-data AND meta-data; the meta-data's
        instance-id decides whether it runs again (once per instance), local-hostname names the guest.
        Windows Setup (`_windows_setup`, first) never reads a data disk: its implicit answer-file search
        covers places on the boot disk and removable media only (docs/windows-fidelity.md)."""
        self._windows_setup(vm)
        if vm.guest_agent is None:
            return
        for drive in vm.drives[1:]:
            node = self.files.get(path_key(drive.path))
            volume = node.vhd.volume if node is not None and node.vhd is not None else None
            if volume is None or volume.label.lower() != "cidata" or volume.file_system not in ("FAT", "FAT32"):
                continue
            user, meta = volume.read("user-data"), volume.read("meta-data")
            if user is None or meta is None:
                continue
            fields = _simple_yaml(meta.decode("utf-8", errors="replace"))
            instance = fields.get("instance-id") or ""
            if instance and instance == vm.instance_id:
                return
            vm.instance_id = instance or None
            vm.first_boot_files = dict(volume.files)
            if fields.get("local-hostname"):
                vm.guest_hostname = fields["local-hostname"]
            return

    def _windows_setup(self, vm: VM) -> None:
        """The first boot of a generalized (sysprepped) Windows image runs Windows Setup's specialize
        pass, once. It takes the first answer file of its implicit search, in order (Windows Setup
        Automation Overview): the registry pointer (not modelled: the images have none),
        %WINDIR%\\Panther\\Unattend (downlevel installations only: not searched here [strict]),
        %WINDIR%\\Panther (unattend.xml), removable media roots (the simulated VMs have no floppy or DVD),
        %WINDIR%\\System32\\Sysprep (Unattend.xml for the passes after windowsPE), %SYSTEMDRIVE% (root,
        Unattend.xml or Autounattend.xml). Any other disk or folder is not searched. ComputerName of the
        specialize pass's Microsoft-Windows-Shell-Setup component names the computer; absent or `*`:
        a random WIN-xxxxxxxxxxx name."""
        if not vm.drives:
            return
        top = self.files.get(path_key(vm.drives[0].path))
        volumes = self.os_view(top) if top is not None and top.vhd is not None else None
        windows = next((v for v in volumes or () if "windows" in v.folders), None)
        if windows is None or not windows.generalized or vm.specialized:
            return
        vm.specialized = True
        vm.guest_os = WINDOWS_OS_NAME
        vm.guest_agent = None if vm.guest_agent == "cloud-init" else vm.guest_agent  # cloud-init is Linux's
        found: tuple[str, bytes] | None = None
        for name in ANSWER_FILE_SEARCH:
            data = windows.read(name)
            if data is not None:
                found = (name, data)
                break
        computer = computer_name(found[1]) if found is not None else None
        vm.answer_file = found[0] if found is not None else None
        vm.guest_hostname = computer if computer and computer != "*" else \
            "WIN-" + uuid.uuid4().hex[:11].upper()

    # --- the guest (integration services) -------------------------------------------------------

    def guest_up_for(self, vm: VM) -> float | None:
        """Seconds since the guest finished booting (None: not running, still booting, or no
        integration services to say so)."""
        if vm.state not in ACTIVE_STATES or vm.started_at is None or not vm.integration_services:
            return None
        boot = self.guest_boot_seconds if vm.boot_seconds is None else vm.boot_seconds
        up = self.now - vm.started_at - boot
        return up if up >= 0 else None

    def heartbeat(self, vm: VM) -> str:
        if vm.state not in ACTIVE_STATES:
            return ""
        return "OK" if self.guest_up_for(vm) is not None else "No Contact"

    def heartbeat_status(self, vm: VM) -> str | None:
        """Get-VM's Heartbeat (Microsoft.HyperV.PowerShell.VMHeartbeatStatus, the same names on every host
        language): none while the VM is off, NoContact until the guest's integration services answer,
        then OkApplicationsUnknown (a guest that reports no application health, as Linux guests do;
        MicrosoftDocs/windowsserverdocs#5313 shows the value)."""
        if vm.state not in ACTIVE_STATES:
            return None
        return "OkApplicationsUnknown" if self.guest_up_for(vm) is not None else "NoContact"

    def guest_addresses(self, vm: VM, adapter: NetAdapter) -> list[str]:
        up = self.guest_up_for(vm)
        if up is None:
            return []
        if adapter.switch_name and vm.dhcp and up >= self.guest_network_seconds:
            return [adapter.ipv4, adapter.ipv6_link_local]
        return [adapter.ipv6_link_local]

    def kvp_items(self, vm: VM) -> dict[str, str]:
        if self.guest_up_for(vm) is None:
            return {}
        items = {"FullyQualifiedDomainName": vm.guest_hostname, "OSName": vm.guest_os}
        ipv4 = [a for adapter in vm.adapters for a in self.guest_addresses(vm, adapter) if ":" not in a]
        if ipv4:
            items["NetworkAddressIPv4"] = ";".join(ipv4)
        return items

    def set_vm(self, vm: VM, *, notes: str | None, processor_count: int | None, checkpoint_type: str | None) -> None:
        if processor_count is not None:
            if vm.state != STATE_OFF:
                raise invalid_state(vm.name)
            if not 1 <= processor_count <= MAX_PROCESSORS:
                raise ModelError(f"Failed to modify device 'Processor'. The processor count {processor_count} is not "
                                 f"between 1 and {MAX_PROCESSORS}.", category="InvalidArgument",
                                 reason="InvalidParameter", target=vm.name)
        if notes is not None:
            vm.notes = notes
        if processor_count is not None:
            vm.processor_count = processor_count
        if checkpoint_type is not None:
            vm.checkpoint_type = checkpoint_type

    def start_vm(self, vm: VM) -> None:
        if vm.critical:
            raise invalid_state(vm.name)
        if vm.state == STATE_RUNNING:
            return
        if vm.state == STATE_STOPPING:
            raise object_in_use(vm.name)
        if vm.state == STATE_PAUSED:
            raise invalid_state(vm.name)  # Resume-VM resumes a paused VM [strict]
        prefix = f"'{vm.name}' failed to start"
        attached = self.attached_keys()
        for drive in vm.drives:
            top = self.files.get(path_key(drive.path))
            if top is None or top.vhd is None:
                raise ModelError(f"{prefix}. The system cannot find the file specified: '{drive.path}'.",
                                 category="ObjectNotFound", reason="ObjectNotFound", target=drive.path)
            self._validate_chain(top)
            self._check_writable(top, who=prefix)
            if top.key in attached:
                raise ModelError(f"{prefix}. The process cannot access the file '{top.path}' because it is being used "
                                 "by another process. (0x80070020)", category="ResourceBusy", reason="ObjectInUse",
                                 target=top.path, exception_type=IO_EXCEPTION)
        vm.state = STATE_RUNNING
        vm.started_at = self.now
        vm.growth_t = self.now
        vm.stop_at = None
        self._first_boot(vm)
        self.vm_workers[vm.id] = self.spawn("vmwp.exe", f'"C:\\Windows\\System32\\vmwp.exe" {vm.id.upper()}').pid
        self.refresh_opens()

    def stop_vm(self, vm: VM, *, turn_off: bool) -> float:
        """Returns how long a synchronous graceful Stop-VM blocks (simulated seconds); a graceful
        stop that will fail raises `failed_to_stop` only for the caller that waits (see cmdlets)."""
        if vm.state == STATE_OFF and not vm.critical:
            return 0.0
        if turn_off:
            vm.critical = False if vm.state == STATE_OFF else vm.critical
            self._finish_stop(vm)
            return 0.0
        if vm.critical or vm.state in (STATE_PAUSED, STATE_SAVED):
            raise invalid_state(vm.name)
        if not vm.shutdown_service:
            raise failed_to_stop(vm.name)
        if vm.state == STATE_STOPPING:
            return max(0.0, (vm.stop_at or self.now) - self.now)
        guest = self.shutdown_seconds if vm.shutdown_seconds is None else vm.shutdown_seconds
        vm.state = STATE_STOPPING
        vm.stop_fails = guest > STOP_FORCE_LIMIT
        vm.stop_at = self.now + min(guest, STOP_FORCE_LIMIT)
        return min(guest, STOP_FORCE_LIMIT)

    def resume_vm(self, vm: VM) -> None:
        if vm.critical or vm.state != STATE_PAUSED:
            raise invalid_state(vm.name)
        vm.state = STATE_RUNNING
        vm.growth_t = self.now

    def set_firmware(self, vm: VM, *, secure_boot: str | None, template: str | None) -> None:
        if vm.generation != 2:
            raise ModelError(f"The operation is not supported for generation 1 virtual machine '{vm.name}': "
                             "Set-VMFirmware applies to generation 2 virtual machines.", category="InvalidArgument",
                             reason="InvalidParameter", target=vm.name)
        if vm.state != STATE_OFF or vm.critical:
            raise invalid_state(vm.name)
        if template is not None and template not in SECURE_BOOT_TEMPLATES:
            raise ModelError(f"The secure boot template '{template}' was not found.", category="InvalidArgument",
                             reason="InvalidParameter", target=template)
        if secure_boot is not None:
            vm.secure_boot = secure_boot.lower() == "on"
        if template is not None:
            vm.secure_boot_template = template

    def _finish_stop_at(self, vm: VM, t: float) -> None:
        if vm.state == STATE_STOPPING:
            if vm.stop_fails:  # the guest did not shut down in time: Stop-VM gave up, the VM runs on
                vm.state = STATE_RUNNING
                vm.stop_at = None
                vm.stop_fails = False
                return
            self._finish_stop(vm)

    def _finish_stop(self, vm: VM) -> None:
        vm.stop_fails = False
        self.processes.pop(self.vm_workers.pop(vm.id, -1), None)
        vm.state = STATE_OFF
        vm.started_at = None
        vm.stop_at = None
        self.refresh_opens()

    def remove_vm(self, vm: VM) -> None:
        if vm.state != STATE_OFF:
            raise invalid_state(vm.name)
        if any(m.vm_id == vm.id for m in self.merges):
            raise object_in_use(vm.name)
        self.delete_vm(vm)

    def delete_vm(self, vm: VM) -> None:
        for cfg in [*vm.config_files, *(c for s in vm.snapshots for c in s.config_files)]:
            self.files.pop(cfg.lower(), None)
        del self.vms[vm.id]
        self.refresh_opens()

    def checkpoint_vm(self, vm: VM, name: str | None) -> Snapshot:
        if vm.critical:
            raise invalid_state(vm.name)
        if vm.checkpoint_type == "Disabled":
            raise ModelError(f"Checkpoint operation failed for '{vm.name}'. Checkpoints are disabled for this "
                             "virtual machine.", category="InvalidOperation", reason="OperationFailed", target=vm.name)
        if vm.state == STATE_STOPPING or any(m.vm_id == vm.id for m in self.merges):
            raise object_in_use(vm.name)
        running = vm.state == STATE_RUNNING
        if running and vm.checkpoint_type == "ProductionOnly":
            raise ModelError(f"Checkpoint operation failed for '{vm.name}'. Could not create a production checkpoint: "
                             "the guest does not support it (no backup integration service).",
                             category="InvalidOperation", reason="OperationFailed", target=vm.name)
        kind = "Standard" if running or vm.checkpoint_type == "Standard" else "Production"
        snap_id = new_guid()
        plans: list[tuple[int, FileNode, str]] = []
        for index, drive in enumerate(vm.drives):
            top = self.files.get(path_key(drive.path))
            if top is None or top.vhd is None:
                raise ModelError(f"Checkpoint operation failed for '{vm.name}'. The system cannot find the file "
                                 f"'{drive.path}'.", category="ObjectNotFound", reason="ObjectNotFound",
                                 target=drive.path)
            self.require_folder_of(top.path)
            stem = ntpath.splitext(leaf_name(top.path))[0]
            if top.path.lower().endswith(".avhdx") and len(stem) > 37 and stem[-37] == "_":
                stem = stem[:-37]
            folder = parent_path(top.path)
            if folder is not None and folder.lower() in self.read_only_folders:
                # The .avhdx goes beside its parent: a folder the host may not write fails the checkpoint.
                raise ModelError(f"Checkpoint operation failed for '{vm.name}'. Could not create the differencing disk "
                                 f"in '{folder}': General access denied error (0x80070005).",
                                 category="PermissionDenied", reason="AccessDenied", target=folder,
                                 exception_type=HYPERV_EXCEPTION)
            plans.append((index, top, f"{folder}\\{stem}_{new_guid().upper()}.avhdx"))
        snap_dir = vm.path + "\\Snapshots"
        config_files = [f"{snap_dir}\\{snap_id.upper()}.vmcx"] + ([f"{snap_dir}\\{snap_id.upper()}.VMRS"]
                                                                    if running else [])
        needed = NEW_DIFF_FILE_SIZE * len(plans) + CONFIG_FILE_SIZE * len(config_files)
        if needed > self.free_bytes_float():
            raise disk_full(vm.path)
        self.ensure_folder(snap_dir)
        for cfg in config_files:
            self.add_file(FileNode(cfg, self.now, self.now, float(CONFIG_FILE_SIZE)))
        disks: list[tuple[int, str, str]] = []
        for index, top, avhdx in plans:
            assert top.vhd is not None
            vhd = Vhd("Differencing", top.vhd.size, DIFF_BLOCK_SIZE, new_guid().upper(), new_guid(), top.path,
                      top.vhd.data_write_guid)
            self.add_file(FileNode(avhdx, self.now, self.now, float(NEW_DIFF_FILE_SIZE), vhd=vhd))
            vm.drives[index].path = avhdx
            disks.append((index, top.path, avhdx))
        snap = Snapshot(snap_id, name or f"{vm.name} - ({self.date():%m/%d/%Y - %H:%M:%S})", vm.id, kind, self.now,
                        vm.current_snapshot_id, disks, config_files)
        vm.snapshots.append(snap)
        vm.current_snapshot_id = snap.id
        self.refresh_opens()
        return snap

    def remove_snapshot(self, vm: VM, snap: Snapshot) -> None:
        if vm.critical:
            raise invalid_state(vm.name)
        merges: list[tuple[FileNode, FileNode]] = []
        for _index, _captured, avhdx in snap.disks:
            child = self.files.get(path_key(avhdx))
            if child is None or child.vhd is None:
                continue
            if any(m.child_key == child.key or m.parent_key == child.key for m in self.merges):
                raise object_in_use(child.path)
            if not child.vhd.parent_path:
                continue
            parent = self.files.get(path_key(child.vhd.parent_path))
            if parent is None or parent.vhd is None:
                raise ModelError(f"The merge of '{child.path}' failed: the parent disk '{child.vhd.parent_path}' does "
                                 "not exist.", category="ObjectNotFound", reason="ObjectNotFound",
                                 target=child.vhd.parent_path)
            if parent.vhd.data_write_guid != child.vhd.parent_write_guid:
                raise _chain_mismatch(child.path, parent.path)
            who = f"Failed to merge checkpoint '{snap.name}' of '{vm.name}': '{child.path}' into '{parent.path}'"
            self._check_writable(parent, who=who)
            if parent.vhd.write_open or any(m.parent_key == parent.key for m in self.merges):
                raise object_in_use(parent.path)
            merges.append((child, parent))
        for other in vm.snapshots:
            if other.parent_snapshot_id == snap.id:
                other.parent_snapshot_id = snap.parent_snapshot_id
        if vm.current_snapshot_id == snap.id:
            vm.current_snapshot_id = snap.parent_snapshot_id
        vm.snapshots.remove(snap)
        for cfg in snap.config_files:
            self.files.pop(cfg.lower(), None)
        for child, parent in merges:
            duration = child.length / self.merge_rate if self.merge_rate > 0 else 0.0
            self.merges.append(MergeJob(vm.id, child.key, parent.key, self.now, self.now + duration))
        self.refresh_opens()

    def _finish_merge(self, job: MergeJob, t: float) -> None:
        if job not in self.merges:
            return
        self.merges.remove(job)
        child = self.files.get(job.child_key)
        parent = self.files.get(job.parent_key)
        if child is None or parent is None or child.vhd is None or parent.vhd is None:
            self.refresh_opens()
            return
        parent.vhd.blocks.update(child.vhd.blocks)
        for index, written in child.vhd.overlay.items():
            parent.vhd.overlay.setdefault(index, {}).update(written)
        grown = max(0.0, child.length - NEW_DIFF_FILE_SIZE)
        parent.length = min(parent.length + grown, parent.vhd.size + VHD_METADATA_BYTES)
        parent.modified = t
        for vm in self.vms.values():
            for drive in vm.drives:
                if path_key(drive.path) == child.key:
                    drive.path = parent.path
        for node in self.files.values():
            if node.vhd is not None and node.vhd.parent_path and path_key(node.vhd.parent_path) == child.key:
                node.vhd.parent_path = parent.path
                node.vhd.parent_write_guid = parent.vhd.data_write_guid
        del self.files[child.key]
        self.refresh_opens()

    # --- guest ---------------------------------------------------------------------------------

    def guest_write(self, vm: VM, block: int, data: bytes) -> None:
        if vm.state != STATE_RUNNING:
            raise ModelError(f"VM '{vm.name}' is {vm.state}: the guest cannot write.", category="InvalidOperation",
                             reason="InvalidState", target=vm.name)
        if not vm.drives:
            raise ModelError(f"VM '{vm.name}' has no disk.", category="InvalidOperation", reason="InvalidState")
        top = self.files[path_key(vm.drives[0].path)]
        assert top.vhd is not None and top.vhd.write_open
        if block < 0:
            raise ValueError("block must be >= 0")
        top.vhd.blocks[block] = bytes(data)
        top.length = min(top.length + len(data), top.vhd.size + VHD_METADATA_BYTES)
        top.modified = self.now

    # --- background copy ----------------------------------------------------------------------

    # --- processes ------------------------------------------------------------------------------

    def spawn(self, name: str, command_line: str) -> Process:
        pid = self._next_pid
        while pid in self.processes:
            pid += 4
        self._next_pid = pid + 4
        process = Process(pid, name, command_line, self.now)
        self.processes[pid] = process
        return process

    def reboot(self) -> None:
        """The host restarts: every process ends (copy workers stop where they were, VMs are off),
        and PID numbering starts again."""
        for job in self.copies.values():
            if job.state == "Running":
                job.state = "Stopped"
                job.finished = self.now
        for vm in self.vms.values():
            if vm.state in ACTIVE_STATES:
                self._finish_stop(vm)
        self.processes.clear()
        self._next_pid = FIRST_PID

    def is_offloaded(self, source: str, destination: str) -> bool:
        roots = {r.lower() for r in self.offload_roots}

        def root(path: str) -> str | None:
            return next((r for r in roots if path.lower() == r or path.lower().startswith(r + "\\")), None)

        src = root(source)
        return src is not None and src == root(destination)

    # --- background copy ----------------------------------------------------------------------

    def start_copy(self, source: str, destination: str, partial: str, status_path: str,
                   *, fail_half_way: bool = False, worker_command_line: str = "",
                   create_return: int = 0, worker: str = "current") -> CopyJob:
        dest_canon = canonical_path(destination)
        if self.exists(dest_canon):
            message = f"The copy destination '{destination}' already exists."
            raise ModelError(message, category="OperationStopped", reason="", fq_error_id=message,
                             target=destination, exception_type=IO_EXCEPTION)
        src_canon = canonical_path(source)
        node = self.files.get(src_canon.lower())
        if node is None:
            if self.is_dir(src_canon):
                raise ModelError(f"The copy source '{source}' is a folder.", category="InvalidArgument",
                                 reason="InvalidArgument", target=source, exception_type=IO_EXCEPTION)
            raise ModelError(f"Cannot find path '{source}' because it does not exist.", category="ObjectNotFound",
                             reason="", fq_error_id="PathNotFound,Microsoft.PowerShell.Commands.GetItemCommand",
                             target=source, exception_type=ITEM_NOT_FOUND)
        if create_return != 0:
            message = f"Win32_Process.Create failed with code {create_return}"
            raise ModelError(message, category="OperationStopped", reason="", fq_error_id=message,
                             exception_type="System.Management.Automation.RuntimeException")
        status_canon = canonical_path(status_path)
        partial_canon = canonical_path(partial)
        pid = self.spawn("powershell.exe", worker_command_line).pid
        # the old worker's Read/Write loop cannot be offloaded
        offloaded = worker == "current" and self.is_offloaded(src_canon, dest_canon)
        payload = FileNode(dest_canon, self.now, self.now, node.length, text=node.text,
                           vhd=node.vhd.clone() if node.vhd is not None else None)
        job = CopyJob(pid, src_canon, dest_canon, partial_canon, status_canon, self.now, node.size,
                      self.offload_rate if offloaded else self.copy_rate, payload, offloaded=offloaded,
                      worker=worker)
        # the detached worker starts: open the source for read (FileShare.Read), create the partial.
        sources, partials = self._copy_locks()
        failure: str | None = None
        partial_parent = parent_path(partial_canon)
        status_parent = parent_path(status_canon)
        if node.vhd is not None and node.vhd.write_open:
            failure = (f"The process cannot access the file '{node.path}' because it is being used by another "
                       "process.")
        elif partial_canon.lower() in partials or partial_canon.lower() in sources:
            failure = (f"The process cannot access the file '{partial_canon}' because it is being used by another "
                       "process.")
        elif partial_parent is None or not self.is_dir(partial_parent):
            failure = f"Could not find a part of the path '{partial}'."
        elif self.is_dir(partial_canon):
            failure = f"Access to the path '{partial}' is denied."
        else:
            existing = self.files.get(partial_canon.lower())
            if existing is not None and (existing.acl_protected or existing.read_only):
                failure = f"Access to the path '{partial}' is denied."
            else:
                self.files[partial_canon.lower()] = FileNode(partial_canon, self.now, self.now, 0.0)
        self.copies[pid] = job
        if status_parent is not None and self.is_dir(status_parent) and status_canon.lower() not in self.files:
            self._write_status(job, self.now, initial=True)  # the starter's CreateNew
        if failure is not None:
            self._fail_copy(job, self.now, failure)
        elif fail_half_way:
            job.fail_at_bytes = job.total // 2
        return job

    def _finish_copy(self, job: CopyJob, t: float) -> None:
        if job.state != "Running":  # failed while its bytes flowed up to this event
            return
        if job.fail_at_bytes is not None:
            self._fail_copy(job, t, DISK_FULL_MESSAGE)
            return
        partial = self.files.get(path_key(job.partial))
        if self.exists(job.destination):
            self._fail_copy(job, t, "Cannot create a file when that file already exists.")
            return
        if partial is not None:
            del self.files[partial.key]
        job.payload.created = job.payload.modified = t
        self.files[job.payload.key] = job.payload
        job.state = "Completed"
        job.copied = float(job.total)
        job.finished = t
        self._write_status(job, t)
        self.processes.pop(job.pid, None)

    def _fail_copy(self, job: CopyJob, t: float, message: str) -> None:
        job.state = "Failed"
        job.error = message
        job.finished = t
        self._write_status(job, t)
        self.processes.pop(job.pid, None)

    def _status_job(self, canon: str) -> CopyJob | None:
        key = canon.lower()
        return next((j for j in self.copies.values() if j.state == "Running" and j.status_path.lower() == key), None)

    def observe_status_read(self, canon: str, *, opens: bool) -> bool:
        """A reader touches a running copy's status file (Get-Content opens it, `opens`; Test-Path does
        not). With `status_read_collision` armed, the access coincides with the worker's next progress
        write, deterministically instead of by timing luck:
        - "write-first": the write is under way as the reader arrives. The move-item worker's
          `Move-Item -Force` has deleted the status file and not yet moved the new one in (Windows
          PowerShell 5.1 deletes, then moves): the file is missing for this instant. File.Replace
          (current worker) swaps in one operation: nothing to see.
        - "read-first": Get-Content holds the file open (FileShare.ReadWrite, no FileShare.Delete)
          through the next whole-second write, which then cannot delete or replace it
          (`_status_write_collides`).
        Returns True when the status file is missing for this access."""
        job = self._status_job(canon)
        if job is None:
            return False
        if job.gap_at is not None and job.gap_at == self.now:
            return True
        mode = self.status_read_collision
        if mode == "write-first":
            self.status_read_collision = None
            if job.worker == "move-item":
                job.gap_at = self.now
                return True
        elif mode == "read-first" and opens:
            self.status_read_collision = None
            job.collide_n = math.floor(self.now - job.started + 1e-9) + 1
        return False

    def _status_write_collides(self, job: CopyJob, t: float) -> None:
        """The progress write at whole second `collide_n` finds a reader holding the status file without
        FileShare.Delete. The move-item worker's delete throws IOException (sharing violation) and, with
        ErrorActionPreference Stop, its catch ends the copy: Failed (the catch's own status write runs
        after the reader closed). The current worker's File.Replace fails too [strict]; it skips that
        progress write and the file keeps the previous one."""
        job.collide_n, n = None, job.collide_n
        if job.state != "Running" or n is None:
            return
        if job.worker == "move-item":
            self._fail_copy(job, t, f"The process cannot access the file '{job.status_path}' because it is being "
                                    "used by another process.")
            return
        job.stale_n = n
        self._write_status(job, t)

    def stop_process(self, pid: int) -> None:
        process = self.processes.get(pid)
        if process is None:
            raise ModelError(f"Cannot find a process with the process identifier {pid}.", category="ObjectNotFound",
                             reason="NoProcessFoundForGivenId", target=str(pid),
                             exception_type="Microsoft.PowerShell.Commands.ProcessCommandException")
        del self.processes[pid]
        job = self.copies.get(pid)
        if job is not None and job.state == "Running":
            job.state = "Stopped"
            job.finished = self.now
            return
        for vm_id, worker in list(self.vm_workers.items()):
            if worker == pid:  # killing a VM's worker process turns the VM off hard
                del self.vm_workers[vm_id]
                vm = self.vms.get(vm_id)
                if vm is not None and vm.state in ACTIVE_STATES:
                    self._finish_stop(vm)

    def status_document(self, job: CopyJob, t: float, *, initial: bool = False) -> dict[str, object]:
        started = iso_o(self.date(job.started))
        created = iso_o(self.date(job.started))
        doc: dict[str, object] = {"state": "Running", "bytesCopied": 0, "bytesTotal": job.total, "processId": job.pid,
                                  "processCreatedAt": created, "startedAt": started, "updatedAt": started,
                                  "finishedAt": None, "error": None}
        if initial:
            return doc
        if job.state == "Completed":
            assert job.finished is not None
            doc.update(state="Completed", bytesCopied=job.total, processId=job.pid,
                       updatedAt=iso_o(self.date(job.finished)), finishedAt=iso_o(self.date(job.finished)))
        elif job.state == "Failed":
            assert job.finished is not None
            doc.update(state="Failed", bytesCopied=0, processId=job.pid, updatedAt=iso_o(self.date(job.finished)),
                       finishedAt=iso_o(self.date(job.finished)), error=job.error)
        else:
            elapsed = t - job.started
            n = math.floor(elapsed + 1e-9)
            if job.stale_n is not None and n == job.stale_n:
                n -= 1  # that progress write was skipped: the file still holds the one before
            if n < 1:
                return doc
            tick = job.started + n
            copied = min(job.total, int((tick - job.started) * job.rate), int(job.copied))
            doc.update(bytesCopied=copied, processId=job.pid, updatedAt=iso_o(self.date(tick)))
        return doc

    def _write_status(self, job: CopyJob, t: float, *, initial: bool = False) -> None:
        if job.state == "Stopped":
            return
        if job.state == "Running" and job.collide_n is not None and t >= job.started + job.collide_n - 1e-9:
            return  # that write collides with a reader: _status_write_collides decides
        text = json.dumps(self.status_document(job, t, initial=initial), separators=(",", ":"))
        node = self.files.get(job.status_path.lower())
        if node is None:
            parent = parent_path(job.status_path)
            if parent is None or not self.is_dir(parent):
                return
            node = FileNode(job.status_path, t, t)
            self.files[node.key] = node
        if node.text != text:
            node.text = text
            node.length = float(len(text.encode("utf-8")))
            node.modified = t

    # --- inspection ----------------------------------------------------------------------------

    @staticmethod
    def fingerprint(node: FileNode) -> tuple[str, str, str]:
        assert node.vhd is not None
        digest = hashlib.sha256()
        digest.update(node.vhd.size.to_bytes(8, "little"))
        for index in sorted(node.vhd.blocks):
            data = node.vhd.blocks[index]
            digest.update(index.to_bytes(8, "little") + len(data).to_bytes(8, "little") + data)
        for volume_index, volume in enumerate(node.vhd.os_volumes or ()):  # an OS image's files count too
            for name in sorted(volume.files):
                digest.update(f"{volume_index}:{name}".encode() + volume.files[name])
        for volume_index in sorted(node.vhd.overlay):
            for name in sorted(node.vhd.overlay[volume_index]):
                digest.update(f"+{volume_index}:{name}".encode() + node.vhd.overlay[volume_index][name])
        return node.vhd.disk_identifier, node.vhd.data_write_guid, digest.hexdigest()


WINDOWS_OS_NAME = "Windows Server 2022 Datacenter"
ANSWER_FILE_SEARCH = (  # the implicit search's paths on the Windows volume (volume-relative), in order
    "Windows\\Panther\\unattend.xml",
    "Windows\\System32\\Sysprep\\unattend.xml",
    "unattend.xml",
    "autounattend.xml",
)
UNATTEND_NS = "{urn:schemas-microsoft-com:unattend}"


def computer_name(answer: bytes) -> str | None:
    """ComputerName of the specialize pass's Microsoft-Windows-Shell-Setup component, or None. A
    DOCTYPE is not expanded: the file is then treated as having no ComputerName."""
    if b"<!DOCTYPE" in answer.upper():
        return None
    try:
        # Safe without defusedxml: a DOCTYPE (the only way to declare entities) was refused above,
        # and expat never fetches external resources.
        root = ElementTree.fromstring(answer)  # noqa: S314
    except ElementTree.ParseError:
        return None
    for settings in root.iter(UNATTEND_NS + "settings"):
        if settings.get("pass") != "specialize":
            continue
        for component in settings.iter(UNATTEND_NS + "component"):
            if component.get("name") == "Microsoft-Windows-Shell-Setup":
                node = component.find(UNATTEND_NS + "ComputerName")
                if node is not None and node.text:
                    return node.text.strip()
    return None


def _simple_yaml(text: str) -> dict[str, str]:
    """Top-level `key: value` lines of a YAML mapping (meta-data is that simple in practice)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line or line[0] in " \t#" or ":" not in line:
            continue
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip().strip("'\"")
    return fields
