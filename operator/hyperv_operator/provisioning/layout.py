"""Where a VM's files live on the host: a pure function of (name, uid, spec, host).

    vm_dir      = <vmPath or host.defaultVmPath>\\<name>-<uid[:8]>   (one folder per Kubernetes object)
    config      = vm_dir\\<name>\\Virtual Machines                  (Hyper-V puts the configuration there)
    disk        = vm_dir\\<name>.vhdx        the VM's own disk (differencing child, or the copy)
    partial     = disk + ".partial"          the copy while it is written (renamed to `disk` when whole)
    copy_status = disk + ".copy.json"        the background copy's status file

Every path under vm_dir belongs to exactly one Kubernetes object (the uid is in the folder name), so
a crash between a host command and the status write cannot orphan a file there: finalize() removes
the layout's files as well as status.createdFiles. Paths are compared case-insensitively (Windows).
"""

from __future__ import annotations

import ntpath
import re
from dataclasses import dataclass

QUICK_CHECKPOINT_NAME = "hyperv-operator-quick-provision"


def join(folder: str, *parts: str) -> str:
    path = folder.rstrip("\\")
    for part in parts:
        path = f"{path}\\{part.strip(chr(92))}"
    return path


def same_path(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.rstrip("\\").lower() == b.rstrip("\\").lower()


def is_avhdx(path: str | None) -> bool:
    return bool(path) and str(path).lower().endswith(".avhdx")


_GUID = r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}"


def is_checkpoint_of(path: str | None, base: str) -> bool:
    """Is `path` a checkpoint disk Checkpoint-VM made of `base`: `<base folder>\\<base stem>_<GUID>.avhdx`?

    Hyper-V creates a checkpoint's .avhdx beside the disk it differences (for Quick: in the base's
    folder), named after that disk with a GUID suffix."""
    if not path or not is_avhdx(path):
        return False
    folder, name = ntpath.split(path.rstrip("\\"))
    base_folder, base_name = ntpath.split(base.rstrip("\\"))
    stem = ntpath.splitext(base_name)[0]
    return same_path(folder, base_folder) and re.fullmatch(re.escape(stem) + "_" + _GUID + r"\.avhdx", name,
                                                           re.IGNORECASE) is not None


@dataclass(frozen=True)
class Layout:
    vm_name: str
    vm_dir: str
    disk: str
    partial: str
    copy_status: str
    copy_status_tmp: str
    checkpoint_name: str

    @property
    def folders_bottom_up(self) -> tuple[str, ...]:
        """The folders this layout may create (Hyper-V creates the ones under vm_dir\\name)."""
        config = join(self.vm_dir, self.vm_name)
        return (
            join(config, "Virtual Machines"),
            join(config, "Snapshots"),
            join(config, "Virtual Hard Disks"),
            config,
            join(self.vm_dir, "Snapshots"),
            self.vm_dir,
        )

    @property
    def owned_files(self) -> tuple[str, ...]:
        """Files of this layout that finalize() removes if present (besides status.createdFiles)."""
        return (self.disk, self.partial, self.copy_status, self.copy_status_tmp, self.config_disk,
                self.config_partial)

    @property
    def config_disk(self) -> str:
        """Issue 14: the first-boot configuration disk (provisioning/bootstrap.py), once complete."""
        return join(self.vm_dir, f"{self.vm_name}-cidata.vhdx")

    @property
    def config_partial(self) -> str:
        """The configuration disk while it is built (renamed to `config_disk` when complete)."""
        return join(self.vm_dir, f"{self.vm_name}-cidata.partial.vhdx")


def layout_for(name: str, uid: str, vm_path: str | None, default_vm_path: str) -> Layout:
    vm_dir = join(vm_path or default_vm_path, f"{name}-{uid[:8]}")
    disk = join(vm_dir, f"{name}.vhdx")
    status = disk + ".copy.json"
    return Layout(
        vm_name=name,
        vm_dir=vm_dir,
        disk=disk,
        partial=disk + ".partial",
        copy_status=status,
        copy_status_tmp=status + ".tmp",
        checkpoint_name=QUICK_CHECKPOINT_NAME,
    )
