"""What one reconcile step saw on the host, as plain data (built by the engine, read by the planner)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hyperv_operator.api import UID_TAG_PREFIX
from hyperv_operator.conditions import parse_timestamp
from hyperv_operator.hyperv.commands import HostObject
from hyperv_operator.hyperv.scripts import WORKER_COMMAND_LINE_TAIL
from hyperv_operator.provisioning.guest import Adapter, GuestInfo
from hyperv_operator.provisioning.layout import Layout, same_path
from hyperv_operator.provisioning.phases import Phase

MERGING_STATUS = "merging disks"
"""Get-VM's Status text while a checkpoint merges, on an English host (the text is localized)."""
MERGING_OPERATIONAL_STATUS = "mergingdisks"
"""VMOperationalStatus.MergingDisks in Get-VM's OperationalStatus: the same name on every host."""


@dataclass(frozen=True)
class VmInfo:
    id: str
    name: str
    state: str  # Running, Off, Starting, Stopping, Saved, ...
    status: str = ""  # "Operating normally", "Merging disks", ... (localized text)
    operational_status: tuple[str, ...] = ()  # Get-VM OperationalStatus (VMOperationalStatus names)
    notes: str = ""
    path: str = ""
    processor_count: int | None = None
    checkpoint_type: str | None = None
    # issue 14 (resize): the VM's memory and generation as Get-VM reports them
    memory_startup: int | None = None
    dynamic_memory: bool | None = None
    generation: int | None = None
    memory_minimum: int | None = None  # Get-VM MemoryMinimum / MemoryMaximum (Dynamic Memory's range)
    memory_maximum: int | None = None

    def tagged_for(self, uid: str) -> bool:
        return f"{UID_TAG_PREFIX}{uid}" in self.notes

    @property
    def merging(self) -> bool:
        return (any(s.lower() == MERGING_OPERATIONAL_STATUS for s in self.operational_status)
                or MERGING_STATUS in self.status.lower())


@dataclass(frozen=True)
class VhdInfo:
    path: str
    vhd_type: str = ""  # Dynamic, Fixed, Differencing
    parent_path: str | None = None
    size: int | None = None
    file_size: int | None = None
    vhd_format: str = ""  # VHD | VHDX
    in_use_elsewhere: bool = False  # Get-VHD refused (another host has it open); read by file instead
    attached: bool | None = None  # Get-VHD Attached: open by a running VM, or mounted on the host


@dataclass(frozen=True)
class CopyJob:
    """The background copy's status file (see hyperv/scripts.py)."""

    state: str  # Running, Completed, Failed
    bytes_copied: int = 0
    bytes_total: int = 0
    process_id: int = 0
    started_at: str | None = None
    updated_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    process_created_at: str | None = None

    @classmethod
    def parse(cls, text: str) -> CopyJob | None:
        try:
            data = json.loads(text)
        except (TypeError, ValueError):
            return None
        if not isinstance(data, dict) or "state" not in data:
            return None
        return cls(
            state=str(data.get("state")),
            bytes_copied=int(data.get("bytesCopied") or 0),
            bytes_total=int(data.get("bytesTotal") or 0),
            process_id=int(data.get("processId") or 0),
            started_at=data.get("startedAt"),
            updated_at=data.get("updatedAt"),
            finished_at=data.get("finishedAt"),
            error=data.get("error"),
            process_created_at=data.get("processCreatedAt"),
        )


@dataclass(frozen=True)
class ProcessInfo:
    """A process on the host (Win32_Process)."""

    process_id: int
    name: str = ""
    command_line: str = ""
    created_at: datetime | None = None


def parse_process(obj: HostObject) -> ProcessInfo:
    created = _prop(obj, "CreationDate")
    if isinstance(created, datetime) and created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return ProcessInfo(
        process_id=_int(_prop(obj, "ProcessId")) or 0,
        name=_text(_prop(obj, "Name")),
        command_line=_text(_prop(obj, "CommandLine")),
        created_at=created if isinstance(created, datetime) else parse_timestamp(_text(created) or None),
    )


def is_copy_worker(process: ProcessInfo | None, created_at: str | None) -> bool:
    """Is this process the copy worker we started? Its command line runs our worker (the exact
    -EncodedCommand) and, when we know it, its creation time matches: a PID alone proves nothing,
    Windows reuses PIDs (after a reboot, another VM's vmwp.exe may hold it)."""
    if process is None or not process.command_line.rstrip().endswith(WORKER_COMMAND_LINE_TAIL):
        return False
    expected = parse_timestamp(created_at)
    if expected is None or process.created_at is None:
        return expected is None
    return abs((process.created_at - expected).total_seconds()) < 2.0


@dataclass(frozen=True)
class SlotView:
    """Copy slots on this host as the engine saw them before planning."""

    available: bool  # this VM holds a slot or may take one
    running: int  # copies holding a slot on the host (other VMs)
    limit: int
    position: int | None = None  # this VM's 1-based place in the host's copy queue, once queued


@dataclass(frozen=True)
class Observation:
    host_name: str  # the HyperVHost's name, for messages
    vm: VmInfo | None = None
    found_by: str = ""  # "id" | "tag" | "folder" | ""
    drives: tuple[str, ...] = ()  # paths of the VM's hard disk drives
    snapshots: tuple[str, ...] = ()  # names of the VM's checkpoints
    existing: frozenset[str] = frozenset()  # lower-cased paths that Test-Path found
    denied: frozenset[str] = frozenset()  # lower-cased paths the host answered access denied for
    vhds: Mapping[str, VhdInfo] = field(default_factory=dict)  # by lower-cased path
    copy: CopyJob | None = None
    slot: SlotView = SlotView(True, 0, 2)
    copy_process: ProcessInfo | None = None  # the process with the copy worker's recorded PID, if any
    copy_process_checked: bool = False  # whether the engine looked for it (False: unknown)
    guest: GuestInfo | None = None  # issue 14: integration services' view of a running guest (None: not read)
    config_drive: str | None = None  # issue 14: the first-boot configuration disk, when attached (bootstrap.split)
    adapters: tuple[Adapter, ...] | None = None  # issue 14: Get-VMNetworkAdapter, running or not (None: not read)

    def exists(self, path: str | None) -> bool:
        return path is not None and path.rstrip("\\").lower() in self.existing

    def is_denied(self, path: str | None) -> bool:
        return path is not None and path.rstrip("\\").lower() in self.denied

    def vhd(self, path: str | None) -> VhdInfo | None:
        return self.vhds.get(path.rstrip("\\").lower()) if path else None

    def has_snapshot(self, name: str) -> bool:
        return name in self.snapshots

    def avhdx_drive(self) -> str | None:
        return next((d for d in self.drives if d.lower().endswith(".avhdx")), None)


# --- parsing host objects (pure) ------------------------------------------------------------------


def _prop(obj: HostObject, *names: str) -> Any:
    for name in names:
        if name in obj.properties:
            return obj.properties[name]
    lowered = {k.lower(): v for k, v in obj.properties.items()}
    for name in names:
        if name.lower() in lowered:
            return lowered[name.lower()]
    return None


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _texts(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(_text(v) for v in value if v is not None)
    return (_text(value),)


def _int(value: Any) -> int | None:
    try:
        return None if value is None else int(value)
    except (TypeError, ValueError):
        return None


def _bool(value: Any) -> bool | None:
    if value is None:
        return None
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return bool(value)


def checkpointed_vm(output: Sequence[HostObject]) -> tuple[str, str, tuple[str, ...]] | None:
    """New-VM | Set-VM | Checkpoint-VM -Passthru, then Get-VMHardDiskDrive -VMName: (the VM's Id and
    name from the VMSnapshot, the paths of that VM's drives, picked by their VMId among every VM of that
    name); None without the snapshot (the checkpoint was not taken)."""
    snapshot = next((o for o in output if kind_of(o) == "snapshot"), None)
    if snapshot is not None and snapshot.get("VMId"):
        vm_id, vm_name = str(snapshot.get("VMId")), str(snapshot.get("VMName") or "")
    else:
        # Checkpoint-VM's page calls its -Passthru output both "an object representing the virtual
        # machine" and a snapshot: a VM object names the VM by Id.
        vm = next((o for o in output if kind_of(o) == "vm"), None)
        if vm is None or not vm.get("Id"):
            return None
        vm_id, vm_name = str(vm.get("Id")), str(vm.get("Name") or "")
    drives = tuple(str(o.get("Path") or "") for o in output
                   if kind_of(o) == "drive" and str(o.get("VMId") or "").lower() == vm_id.lower())
    return vm_id, vm_name, drives


def kind_of(obj: HostObject) -> str:
    """vm | vhd | drive | snapshot | process | bool | string | other (by type name, else by properties)."""
    if obj.is_a("VirtualMachine"):
        return "vm"
    if obj.is_a("VirtualHardDisk"):
        return "vhd"
    if obj.is_a("HardDiskDrive"):
        return "drive"
    if obj.is_a("VMSnapshot") or obj.is_a("VMCheckpoint"):
        return "snapshot"
    if any(t.lower().endswith("/win32_process") for t in obj.type_names):
        return "process"
    if isinstance(obj.value, bool):
        return "bool"
    if isinstance(obj.value, str):
        return "string"
    keys = {k.lower() for k in obj.properties}
    if "vhdtype" in keys or "vhdformat" in keys:
        return "vhd"
    if "controllertype" in keys:
        return "drive"
    if "snapshottype" in keys or "parentsnapshotid" in keys:
        return "snapshot"
    if "state" in keys and "id" in keys:
        return "vm"
    return "other"


def parse_vm(obj: HostObject) -> VmInfo:
    return VmInfo(
        id=_text(_prop(obj, "Id", "VMId")),
        name=_text(_prop(obj, "Name", "VMName")),
        state=_text(_prop(obj, "State")),
        status=_text(_prop(obj, "Status")),
        operational_status=_texts(_prop(obj, "OperationalStatus")),
        notes=_text(_prop(obj, "Notes")),
        path=_text(_prop(obj, "Path", "ConfigurationLocation")),
        processor_count=_int(_prop(obj, "ProcessorCount")),
        checkpoint_type=(_text(_prop(obj, "CheckpointType")) or None),
        memory_startup=_int(_prop(obj, "MemoryStartup")),
        dynamic_memory=_bool(_prop(obj, "DynamicMemoryEnabled")),
        generation=_int(_prop(obj, "Generation")),
        memory_minimum=_int(_prop(obj, "MemoryMinimum")),
        memory_maximum=_int(_prop(obj, "MemoryMaximum")),
    )


def parse_vhd(obj: HostObject) -> VhdInfo:
    parent = _text(_prop(obj, "ParentPath")) or None
    return VhdInfo(
        path=_text(_prop(obj, "Path")),
        vhd_type=_text(_prop(obj, "VhdType")),
        parent_path=parent,
        size=_int(_prop(obj, "Size")),
        file_size=_int(_prop(obj, "FileSize")),
        vhd_format=_text(_prop(obj, "VhdFormat")),
        attached=_bool(_prop(obj, "Attached")),
    )


def pick_vm(vms: Iterable[VmInfo], vm_id: str | None, uid: str, layout: Layout) -> tuple[VmInfo | None, str]:
    """Our VM: by status.vmId, else by the uid tag in Notes, else an untagged VM whose folder is our
    vm_dir (New-VM succeeded but the operator died before Set-VM tagged it). Never by name."""
    candidates = list(vms)
    if vm_id:
        for vm in candidates:
            if vm.id.lower() == vm_id.lower():
                return vm, "id"
    tagged = sorted((vm for vm in candidates if vm.tagged_for(uid)), key=lambda v: v.id)
    if tagged:
        return tagged[0], "tag"
    for vm in sorted(candidates, key=lambda v: v.id):
        if not vm.notes.strip() and vm.path and (
            same_path(vm.path, layout.vm_dir) or vm.path.lower().startswith(layout.vm_dir.lower() + "\\")
        ):
            return vm, "folder"
    return None, ""


# --- what to read in the one observing round trip (pure) ------------------------------------------


@dataclass(frozen=True)
class Reads:
    """What an observation reads beyond Test-Path: each read fails the batch if its object is missing,
    so only what the status says exists is read up front (`expected`); what turns out to exist and is
    needed but was not expected is read in a second round trip (`needed`)."""

    vhds: tuple[str, ...]
    copy_status: bool


def expected_reads(phase: str, on_checkpoint: bool, status: Mapping[str, Any], layout: Layout, base_vhd: str, *,
                   deleting: bool) -> Reads:
    copy = status.get("copy") or {}
    copy_live = bool(copy.get("startedAt")) and not copy.get("finishedAt")
    if deleting:
        return Reads((), copy_live)
    vhds: list[str] = []
    if phase in (Phase.PENDING, Phase.FAILED):
        vhds.append(base_vhd)
    disk_made = (phase in (Phase.CREATING_VM, Phase.STARTING, Phase.PROVISIONED) if not on_checkpoint
                 else phase in (Phase.REPARENTING, Phase.MERGING, Phase.PROVISIONED))
    if disk_made:
        vhds.append(layout.disk)
    avhdx = recorded_avhdx(status)
    if on_checkpoint and avhdx and phase in (Phase.STARTING, Phase.COPYING_BASE, Phase.REPARENTING):
        vhds.append(avhdx)
    return Reads(tuple(vhds), copy_live and phase in (Phase.COPYING, Phase.COPYING_BASE))


def needed_reads(phase: str, on_checkpoint: bool, status: Mapping[str, Any], layout: Layout, base_vhd: str,
                 obs: Observation, *, deleting: bool) -> Reads:
    """Everything the planner may consult, given what exists (`obs` from the first round trip)."""
    if deleting:  # issue 14: a half-built configuration disk may still be mounted on the host
        mounted = [p for p in (layout.config_partial, layout.disk if _unattend_pending(status) else None)
                   if p is not None and obs.exists(p)]
        return Reads(tuple(mounted), obs.exists(layout.copy_status))
    vhds: list[str] = []
    if phase in (Phase.PENDING, Phase.FAILED) and obs.exists(base_vhd):
        vhds.append(base_vhd)
    if obs.exists(layout.disk) and phase in (Phase.PENDING, Phase.CREATING_DISK, Phase.MERGING):
        vhds.append(layout.disk)
    avhdx = recorded_avhdx(status) or obs.avhdx_drive()
    merging_done = phase == Phase.MERGING and not obs.has_snapshot(layout.checkpoint_name)
    if on_checkpoint and avhdx and obs.exists(avhdx) and not merging_done:
        vhds.append(avhdx)
    if obs.exists(layout.config_partial):  # issue 14: is the half-built configuration disk still mounted?
        vhds.append(layout.config_partial)
    if obs.exists(layout.disk) and _unattend_pending(status) and layout.disk not in vhds:
        vhds.append(layout.disk)  # issue 14: is the VM's own disk mounted on the host (unattend.py)?
    after_copy = (Phase.PROVISIONED, Phase.REPARENTING, Phase.MERGING, Phase.FAILED)
    read_copy = obs.exists(layout.copy_status) and phase not in after_copy
    return Reads(tuple(vhds), read_copy)


def _unattend_pending(status: Mapping[str, Any]) -> bool:
    """Whether unattend.xml is being written into the VM's own disk (provisioning/unattend.py; its
    states repeated here: observation does not import the decisions)."""
    record = status.get("bootstrap") or {}
    return record.get("format") == "Unattend" and record.get("state") in ("Preparing", "Mounted", "Dismounted",
                                                                         "NoWindowsVolume")


def recorded_avhdx(status: Mapping[str, Any]) -> str | None:
    disk = status.get("disk") or {}
    if str(disk.get("path") or "").lower().endswith(".avhdx"):
        return str(disk["path"])
    for path in status.get("createdFiles") or []:
        if str(path).lower().endswith(".avhdx"):
            return str(path)
    return None
