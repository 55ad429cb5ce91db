"""First-boot configuration (issue 14): spec.bootstrap's Secret on a small disk the guest reads. Pure.

The guest tools look for a FAT volume by its label (sources in docs/windows-fidelity.md, "Guest, resize
and bootstrap"): cloud-init's NoCloud data source reads `user-data` and `meta-data` (both required;
`network-config` optional) from a vfat or iso9660 volume labelled `cidata`; cloudbase-init (Windows)
has the same NoCloud service with the same label and files. So one format serves Linux and Windows
bases: a 64 MiB dynamic VHDX with one MBR partition formatted FAT32, label `cidata`. (Sysprepped
Windows bases without cloudbase-init: spec.bootstrap.format Unattend, provisioning/unattend.py; Windows
Setup does not search a data disk for its answer file.)

How the disk is made, so that a crash at any point is recognised and never attached half-built:
1. Build: `New-VHD <partial> | Mount-VHD | Initialize-Disk | New-Partition | Format-Volume` under a
   temporary name (`<vm>-cidata.partial.vhdx`); the volume's drive letter is recorded in the status.
2. Write: `Set-Content` of each file (typed byte[] values, never script text), `Dismount-VHD`, and
   `Rename-Item` to the final name (`<vm>-cidata.vhdx`). Only a complete disk has the final name.
   A partial disk that is not mounted, or whose drive letter is not known, is discarded and rebuilt.
3. Attach (SCSI, a fixed location) while the VM is off, before its first start.
4. Once the guest is ready (spec.readiness, and at least its heartbeat) detach it and delete the file,
   unless spec.bootstrap.keepDisk.

The Secret's content is only ever in the `Set-Content` values: not in status, events, messages or
action descriptions (commands._show prints byte values as their length).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import Bootstrap, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.provisioning.layout import Layout, same_path
from hyperv_operator.provisioning.observation import Observation, VmInfo

LABEL = "cidata"
FILE_SYSTEM = cmdlets.CONFIG_FILE_SYSTEM
DISK_BYTES = 64 * 1024 * 1024  # FAT32 needs about 32 MiB at least; the files are a few KiB
USER_DATA, META_DATA, NETWORK_CONFIG = "user-data", "meta-data", "network-config"
FILES = (USER_DATA, META_DATA, NETWORK_CONFIG)
UNATTEND_XML = "unattend.xml"  # spec.bootstrap.format Unattend (provisioning/unattend.py)
PANTHER = "Windows\\Panther"  # where it goes, from the Windows volume's root
KEY = "bootstrap"  # status key
CONTROLLER = 0  # SCSI controller number

BUILD, WRITE, SEAL, DISCARD, ATTACH, DETACH, REMOVE = (
    "BuildConfigDisk", "WriteConfigDisk", "SealConfigDisk", "DiscardConfigDisk", "AttachConfigDisk",
    "DetachConfigDisk", "RemoveConfigDisk")
KINDS = frozenset({BUILD, WRITE, SEAL, DISCARD, ATTACH, DETACH, REMOVE})
SECRET_UNAVAILABLE = "BootstrapSecretUnavailable"
RETRY_SECRET = 15.0


def disk_path(layout: Layout) -> str:
    return layout.config_disk


def partial_path(layout: Layout) -> str:
    return layout.config_partial


def paths(spec: VirtualMachineSpec, layout: Layout, status: Mapping[str, Any] | None = None) -> tuple[str, ...]:
    """What the engine's observation Test-Paths for a VM with spec.bootstrap: a crash may have made
    either file before the status knew of it. Format Unattend, while the VM's own disk is mounted:
    `<letter>:\\Windows\\Panther` on each lettered partition, to find the Windows volume
    (provisioning/unattend.py)."""
    if spec.bootstrap is None:
        return ()
    if spec.bootstrap.unattend:
        record = (status or {}).get(KEY) or {}
        letters = record.get("volumes") or [] if record.get("state") == "Mounted" else []
        return tuple(f"{letter}:\\{PANTHER}" for letter in letters)
    return layout.config_disk, layout.config_partial


def location(generation: int) -> int:
    """The SCSI location of the configuration disk: generation 2 boots from SCSI 0:0, generation 1
    from IDE, so its SCSI controller is free from location 0."""
    return 1 if generation == 2 else 0


# --- the Secret -> files ----------------------------------------------------------------------------


def files_from_secret(data: Mapping[str, str] | None, secret_name: str, vm_name: str,
                      uid: str, *, unattend: bool = False) -> tuple[tuple[tuple[str, bytes], ...] | None, str | None]:
    """(files, problem) from a Secret's `data` (base64 values, as the API serves them). meta-data is
    generated unless the Secret has one: instance-id = the VM's uid (cloud-init runs its per-instance
    modules once per instance-id), local-hostname = the VM's name. Problems never quote content.
    `unattend` (spec.bootstrap.format Unattend): the one file is the key unattend.xml."""
    if data is None:
        return None, f"Secret {secret_name!r} (spec.bootstrap.secretRef) was not found in the VM's namespace"
    if unattend:
        if UNATTEND_XML not in data:
            return None, (f"Secret {secret_name!r} has no key {UNATTEND_XML!r} (spec.bootstrap.format Unattend "
                          f"writes it to \\Windows\\Panther\\unattend.xml on the VM's disk)")
        try:
            return ((UNATTEND_XML, base64.b64decode(str(data[UNATTEND_XML]), validate=True)),), None
        except (binascii.Error, ValueError):
            return None, f"Secret {secret_name!r}: key {UNATTEND_XML!r} is not valid base64"
    decoded: dict[str, bytes] = {}
    for key in FILES:
        if key in data:
            try:
                decoded[key] = base64.b64decode(str(data[key]), validate=True)
            except (binascii.Error, ValueError):
                return None, f"Secret {secret_name!r}: key {key!r} is not valid base64"
    if USER_DATA not in decoded:
        return None, (f"Secret {secret_name!r} has no key {USER_DATA!r} (spec.bootstrap needs user-data; "
                      f"meta-data and network-config are optional)")
    if META_DATA not in decoded:
        decoded[META_DATA] = f"instance-id: {uid}\nlocal-hostname: {vm_name}\n".encode()
    return tuple((k, decoded[k]) for k in FILES if k in decoded), None


def with_files(bootstrap: Bootstrap, data: Mapping[str, str] | None, vm_name: str, uid: str) -> Bootstrap:
    files, problem = files_from_secret(data, bootstrap.secret_name, vm_name, uid, unattend=bootstrap.unattend)
    return replace(bootstrap, files=files, problem=problem)


def needs_secret(spec: VirtualMachineSpec, status: Mapping[str, Any]) -> bool:
    """Whether the handler must read the Secret: only until the first boot is done."""
    return spec.bootstrap is not None and not (status.get(KEY) or {}).get("completedAt")


# --- observation ------------------------------------------------------------------------------------


def split(obs: Observation, layout: Layout) -> Observation:
    """The configuration disk is not one of the VM's own disks: the phases that reason about the
    VM's drives (Quick's re-parent and merge) must not see it."""
    config = disk_path(layout)
    if not any(same_path(d, config) for d in obs.drives):
        return obs
    return replace(obs, drives=tuple(d for d in obs.drives if not same_path(d, config)), config_drive=config)


# --- decisions ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    action: tuple[str, tuple[Statement, ...], str] | None = None  # (kind, statements, description)
    message: str = ""
    wait: float | None = None
    stall: str | None = None
    status: dict[str, Any] = field(default_factory=dict)  # the new status.bootstrap (None: unchanged)
    top: dict[str, Any] = field(default_factory=dict)  # top-level status keys to set (network.py)
    created: tuple[str, ...] = ()
    events: tuple[tuple[str, str], ...] = ()
    requeue: float | None = None  # after the action (None: the planner's default, AFTER_ACTION)


def before_start(spec: VirtualMachineSpec, status: Mapping[str, Any], obs: Observation, vm: VmInfo,
                 layout: Layout, now: datetime) -> Decision | None:
    """What must happen before the VM's first start; None: nothing (start it)."""
    boot = spec.bootstrap
    record = dict(status.get(KEY) or {})
    if boot is None or record.get("completedAt"):
        return None
    if obs.config_drive is not None:
        return None
    final, partial = disk_path(layout), partial_path(layout)
    if boot.files is None:
        why = boot.problem or "the bootstrap Secret has not been read"
        return Decision(message=f"not starting VM {vm.id} before its first-boot configuration exists: {why}",
                        wait=RETRY_SECRET, stall=SECRET_UNAVAILABLE)
    base = {"secretName": boot.secret_name, "disk": final, "partial": partial}
    if obs.exists(final):
        loc = location(vm.generation or spec.generation)
        return Decision((ATTACH, (cmdlets.add_vm_scsi_disk(vm.id, final, CONTROLLER, loc),),
                         f"Add-VMHardDiskDrive {vm.id} -Path {final} -ControllerType SCSI "
                         f"-ControllerNumber {CONTROLLER} -ControllerLocation {loc}"),
                        f"attaching the configuration disk {final} to VM {vm.id} before its first start",
                        status={**record, **base, "state": "Attached", "volume": None,
                                "controllerLocation": loc},
                        events=(("BootstrapDiskAttached", f"configuration disk {final} (label {LABEL}, from Secret "
                                                          f"{boot.secret_name}) attached to VM {vm.id}"),))
    if obs.exists(partial):
        info = obs.vhd(partial)
        letter = str(record.get("volume") or "")
        if info is None:
            return Decision(message=f"reading the configuration disk {partial}", wait=0.5)
        if info.attached and letter:
            # The rename to the final name says "complete" (the disk is attached and booted from then
            # on): it goes in a pipeline of its own once the writes succeeded. Windows runs a batch's
            # next statement after a failed one, so behind a failed Set-Content it would seal a disk
            # missing its files.
            writes = [cmdlets.write_file(f"{letter}:\\{name}", content) for name, content in boot.files]
            names = ", ".join(name for name, _ in boot.files)
            return Decision((WRITE, (*writes, cmdlets.dismount_vhd(partial)),
                             f"Set-Content {letter}:\\{{{names}}}; Dismount-VHD {partial}"),
                            f"writing {names} to the configuration disk",
                            status={**record, **base, "state": "Built", "volume": None})
        if not info.attached and record.get("state") == "Built":
            return Decision((SEAL, (cmdlets.rename_item(partial, _leaf(final)),),
                             f"Rename-Item {partial} -> {_leaf(final)}"),
                            f"sealing the configuration disk (its files written): {_leaf(final)}",
                            status={**record, **base, "state": "Built", "volume": None})
        statements = ((cmdlets.dismount_vhd(partial),) if info.attached else ()) + (cmdlets.remove_file(partial),)
        return Decision((DISCARD, statements, f"Dismount-VHD/Remove-Item {partial} (incomplete)"),
                        f"discarding the incomplete configuration disk {partial} to build it again",
                        status={**record, **base, "state": "Discarded", "volume": None})
    return Decision((BUILD, (cmdlets.new_config_volume(partial, DISK_BYTES, LABEL),),
                     f"New-VHD {partial} | Mount-VHD | Initialize-Disk | New-Partition | Format-Volume "
                     f"-FileSystem {FILE_SYSTEM} -NewFileSystemLabel {LABEL}"),
                    f"building the configuration disk {partial} (FAT32, label {LABEL})",
                    status={**record, **base, "state": "Building", "volume": None,
                            "startedAt": record.get("startedAt") or cond.timestamp(now)},
                    created=(partial, final))


def after_ready(spec: VirtualMachineSpec, status: Mapping[str, Any], obs: Observation, vm: VmInfo,
                layout: Layout, ready: bool, now: datetime) -> Decision | None:
    """Once the guest is up (ready per spec.readiness and its heartbeat OK) the configuration disk
    has been read: detach and delete it (or keep it, spec.bootstrap.keepDisk). None: nothing to do."""
    boot = spec.bootstrap
    record = dict(status.get(KEY) or {})
    final = layout.config_disk
    if record.get("completedAt"):
        if record.get("state") == "Removed" and obs.config_drive is None and obs.exists(final):
            # Detached, but the operator died before the file went.
            return Decision((REMOVE, (cmdlets.remove_file(final),), f"Remove-Item {final}"),
                            f"removing the configuration disk {final}")
        return None
    if boot is None or vm.state != "Running" or not ready or obs.guest is None or not obs.guest.heartbeat_ok:
        return None
    done = cond.timestamp(now)
    if obs.config_drive is None:
        if not record.get("state"):
            return Decision(status={"secretName": boot.secret_name, "state": "NotApplied", "completedAt": done,
                                    "message": "the VM had started before spec.bootstrap was set"})
        gone = {**record, "state": "Removed", "completedAt": done}
        if obs.exists(final):  # detached, but the operator died before the file went
            return Decision((REMOVE, (cmdlets.remove_file(final),), f"Remove-Item {final}"),
                            f"removing the configuration disk {final}", status=gone)
        return Decision(status=gone)
    record.setdefault("disk", final)  # the status may have been lost in a crash after the attach
    guest = obs.guest.hostname or "unknown"
    if boot.keep_disk:
        return Decision(status={**record, "state": "Kept", "completedAt": done},
                        events=(("BootstrapCompleted", f"VM {vm.id} booted with its configuration disk (guest "
                                                       f"hostname {guest}); kept (spec.bootstrap.keepDisk)"),))
    loc = int(record.get("controllerLocation", location(vm.generation or spec.generation)))
    return Decision((DETACH, (cmdlets.remove_vm_scsi_disk(vm.id, CONTROLLER, loc), cmdlets.remove_file(final)),
                     f"Remove-VMHardDiskDrive {vm.id} SCSI {CONTROLLER}:{loc}; Remove-Item {final}"),
                    f"the guest is up: removing its configuration disk {final}",
                    status={**record, "state": "Removed", "completedAt": done},
                    events=(("BootstrapCompleted", f"VM {vm.id} booted with its configuration disk (guest hostname "
                                                   f"{guest}); detached and deleted {final}"),))


def absorb(status: Mapping[str, Any], output: Sequence[HostObject]) -> dict[str, Any]:
    """The built volume's drive letter (Format-Volume's MSFT_Volume) into status.bootstrap.volume."""
    s = dict(status)
    for obj in output:
        letter = obj.get("DriveLetter")
        if isinstance(letter, int) and 65 <= letter <= 90:
            letter = chr(letter)  # a .NET Char may arrive as its code
        if isinstance(letter, str) and len(letter.strip()) == 1 and letter.strip().isalpha():
            s[KEY] = {**dict(s.get(KEY) or {}), "volume": letter.strip().upper()}
            break
    return s


def _leaf(path: str) -> str:
    return path.rstrip("\\").rsplit("\\", 1)[-1]
