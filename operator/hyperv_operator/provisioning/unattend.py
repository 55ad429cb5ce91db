"""First-boot configuration for sysprepped Windows bases (issue 14, spec.bootstrap.format Unattend). Pure.

Windows Setup finds an answer file by an implicit search (Windows Setup Automation Overview, "Implicit
answer file search order"; sources in docs/windows-fidelity.md, "Guest, resize and bootstrap"): the
registry, %WINDIR%\\Panther, removable media roots, %WINDIR%\\System32\\Sysprep, %SYSTEMDRIVE%. A fixed
data disk such as the cidata VHDX is not searched, and Hyper-V offers no removable medium a host
cmdlet can write (a virtual floppy, Generation 1 only, cannot be mounted or formatted on the host; an
ISO cannot be made without script text). So the answer file goes where Setup caches it and looks
first after the registry: `\\Windows\\Panther\\unattend.xml` on the VM's OWN disk, before its first
start. The VM's own disk is the differencing child (Differencing) or the full copy (Copy); the base is
never mounted (its read-only attribute and ACL would refuse it anyway). Quick first runs on a checkpoint
of the base, before its own disk exists: refused by the CRD, and here as a stall.

The steps, each one host command, so that a crash anywhere is recognised from the status and Get-VHD:
0. Record `state: Preparing` (no host command): from here on the observation reads the VM's disk with
   Get-VHD, so a mount the status never heard of is seen (Attached) and undone.
1. Mount: `Mount-VHD -Passthru | Get-Partition`; Windows gives the basic data partitions drive letters.
   The letters go to status.bootstrap.volumes (`state: Mounted`).
2. Write: `Set-Content <letter>:\\Windows\\Panther\\unattend.xml` (typed byte[], never script text;
   Set-Content creates no folder, so a volume without \\Windows\\Panther fails the write) and
   `Dismount-VHD`, in one batch (`state: Written`). Writing again is harmless: the same bytes.
   Mounted but the letters unknown (a crash before the status write), or no single basic data
   partition to write to: Dismount-VHD first.
3. Start. Once the guest is up (spec.readiness and its heartbeat) the record is completed (`Applied`).
   The file stays in the VM's disk: Windows Setup keeps its cached answer files in Panther (and removes
   passwords from them after each pass).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import BOOTSTRAP_UNATTEND, Strategy, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.commands import HostObject
from hyperv_operator.provisioning.bootstrap import (
    KEY,
    PANTHER,
    RETRY_SECRET,
    SECRET_UNAVAILABLE,
    UNATTEND_XML,
    Decision,
)
from hyperv_operator.provisioning.layout import Layout
from hyperv_operator.provisioning.observation import Observation, VmInfo

TARGET = PANTHER + "\\" + UNATTEND_XML  # on the Windows volume, from its root
MOUNT, WRITE, DISMOUNT = "MountSystemDisk", "WriteAnswerFile", "DismountSystemDisk"
KINDS = frozenset({MOUNT, WRITE, DISMOUNT})
NO_WINDOWS_VOLUME = "UnattendTargetNotFound"
QUICK_REFUSED = "UnattendNeedsOwnDisk"
RETRY_TARGET = 60.0
# Longer than the planner's AFTER_ACTION, so the run ends after the write: `Written` is in the stored
# status before a later run starts the VM. (A crash after Start-VM in the same run would lose it, and
# a running VM's disk cannot be mounted to look.)
PERSIST_BEFORE_START = 0.5


def before_start(spec: VirtualMachineSpec, status: Mapping[str, Any], obs: Observation, vm: VmInfo,
                 layout: Layout, now: datetime) -> Decision | None:
    """What must happen before the VM's first start; None: nothing (start it)."""
    boot = spec.bootstrap
    record = dict(status.get(KEY) or {})
    if boot is None or record.get("completedAt") or record.get("state") == "Written":
        return None
    if spec.strategy is Strategy.QUICK:
        return Decision(message=f"not starting VM {vm.id}: spec.bootstrap.format Unattend writes unattend.xml into "
                                f"the VM's own disk before its first start, and a Quick VM first runs on a checkpoint "
                                f"of the read-only base; use strategy Differencing or Copy",
                        wait=RETRY_TARGET, stall=QUICK_REFUSED)
    if boot.files is None:
        why = boot.problem or "the bootstrap Secret has not been read"
        return Decision(message=f"not starting VM {vm.id} before its answer file is written: {why}",
                        wait=RETRY_SECRET, stall=SECRET_UNAVAILABLE)
    answer = dict(boot.files)[UNATTEND_XML]
    disk = layout.disk
    base = {"secretName": boot.secret_name, "format": BOOTSTRAP_UNATTEND, "disk": disk}
    state = record.get("state")
    if state not in ("Preparing", "Mounted", "Dismounted", "NoWindowsVolume"):
        return Decision(message=f"writing unattend.xml to the VM's disk {disk} before its first start",
                        wait=0.5, status={**base, "state": "Preparing", "volumes": None,
                                          "startedAt": record.get("startedAt") or cond.timestamp(now)})
    info = obs.vhd(disk)
    if info is None:
        return Decision(message=f"reading the VM's disk {disk}", wait=0.5)
    letters = [str(x) for x in record.get("volumes") or []]
    # The Windows volume: the lettered partition with \Windows\Panther (the observation Test-Paths
    # it on each, bootstrap.paths). A Generation 1 (MBR) image's System Reserved partition gets a
    # letter too.
    windows = [letter for letter in letters if obs.exists(f"{letter}:\\{PANTHER}")]
    if info.attached:
        if state == "Mounted" and len(windows) == 1:
            target = f"{windows[0]}:\\{TARGET}"
            return Decision((WRITE, (cmdlets.write_file(target, answer), cmdlets.dismount_vhd(disk)),
                             f"Set-Content {target}; Dismount-VHD {disk}"),
                            f"writing unattend.xml to {disk} (\\{TARGET}) before the first start of VM {vm.id}",
                            status={**record, **base, "state": "Written", "volumes": None},
                            events=(("UnattendWritten", f"unattend.xml (from Secret {boot.secret_name}) written to "
                                                        f"\\{TARGET} on the disk {disk} of VM {vm.id}"),),
                            requeue=PERSIST_BEFORE_START)
        found = state == "Mounted"
        return Decision((DISMOUNT, (cmdlets.dismount_vhd(disk),), f"Dismount-VHD {disk}"),
                        f"dismounting {disk}" + (f": {len(windows)} of its {len(letters)} lettered partitions have "
                                                 f"\\{PANTHER}, not one" if found else " (mounted by an earlier try)"),
                        status={**record, **base, "volumes": None,
                                "state": "NoWindowsVolume" if found else "Dismounted"})
    if state == "NoWindowsVolume":
        return Decision(message=f"not starting VM {vm.id}: its disk {disk} has no single volume with \\{PANTHER} "
                                f"to write unattend.xml to (is the base a Windows image?)", wait=RETRY_TARGET,
                        stall=NO_WINDOWS_VOLUME)
    return Decision((MOUNT, (cmdlets.mount_os_disk(disk),), f"Mount-VHD {disk} -Passthru | Get-Partition"),
                    f"mounting the VM's disk {disk} on the host to write unattend.xml",
                    status={**record, **base, "state": "Mounted", "volumes": None})


def after_ready(spec: VirtualMachineSpec, status: Mapping[str, Any], obs: Observation, vm: VmInfo,
                now: datetime) -> Decision | None:
    """The guest is up: Windows Setup has run its specialize pass with the answer file."""
    boot = spec.bootstrap
    record = dict(status.get(KEY) or {})
    if boot is None or record.get("completedAt"):
        return None
    done = cond.timestamp(now)
    if record.get("state") != "Written":
        return Decision(status={"secretName": boot.secret_name, "format": BOOTSTRAP_UNATTEND, "state": "NotApplied",
                                "completedAt": done, "message": "the VM had started before unattend.xml was written"})
    guest = obs.guest.hostname if obs.guest is not None and obs.guest.hostname else "unknown"
    return Decision(status={**record, "state": "Applied", "completedAt": done},
                    events=(("BootstrapCompleted", f"VM {vm.id} booted with unattend.xml in its disk (guest hostname "
                                                   f"{guest})"),))


def absorb(status: Mapping[str, Any], output: Sequence[HostObject]) -> dict[str, Any]:
    """The drive letters of the mounted disk's partitions (Get-Partition) into status.bootstrap.volumes;
    Windows letters the basic data partitions (GPT Type Basic; MBR: IFS), not EFI, MSR or recovery."""
    s = dict(status)
    letters: list[str] = []
    for obj in output:
        letter = obj.get("DriveLetter")
        if isinstance(letter, int) and 65 <= letter <= 90:
            letter = chr(letter)  # a .NET Char may arrive as its code
        if isinstance(letter, str) and len(letter.strip()) == 1 and letter.strip().isalpha():
            letters.append(letter.strip().upper())
    s[KEY] = {**dict(s.get(KEY) or {}), "volumes": letters}
    return s
