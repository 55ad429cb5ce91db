"""Builders for pure planner tests: specs, observations, statuses."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hyperv_operator.api import VirtualMachineSpec
from hyperv_operator.hyperv.scripts import WORKER_COMMAND_LINE_TAIL
from hyperv_operator.provisioning.guest import GuestInfo
from hyperv_operator.provisioning.layout import layout_for
from hyperv_operator.provisioning.model import VmRef
from hyperv_operator.provisioning.observation import CopyJob, Observation, ProcessInfo, SlotView, VhdInfo, VmInfo

BASE = "C:\\Bases\\base.vhdx"
VMS = "D:\\VMs"
UID = "1234abcd-0000-4000-8000-000000000001"
REF = VmRef("default", "web", UID, 1)
LAYOUT = layout_for("web", UID, None, VMS)
DISK = LAYOUT.disk
AVHDX = "C:\\Bases\\base_2691830B-9046-4818-930E-D7D7C41A7028.avhdx"
VM_ID = "6e1f2a3b-1111-2222-3333-444455556666"
TAG = f"hyperv-operator.io/uid={UID}"
FREE_SLOT = SlotView(True, 0, 2)
NOW = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


def later(seconds: float) -> datetime:
    return NOW + timedelta(seconds=seconds)


def spec(strategy: str, **extra: Any) -> VirtualMachineSpec:
    return VirtualMachineSpec.from_dict(
        {"hostRef": {"name": "hv1"}, "baseVhd": BASE, "strategy": strategy, "memory": "1Gi", "cpus": 2, **extra}
    )


def vm(state: str = "Off", *, status: str = "Operating normally", notes: str = TAG, cpus: int | None = 2,
       checkpoint_type: str | None = "Standard", vm_id: str = VM_ID, path: str = LAYOUT.vm_dir + "\\web") -> VmInfo:
    return VmInfo(id=vm_id, name="web", state=state, status=status, notes=notes, path=path,
                  processor_count=cpus, checkpoint_type=checkpoint_type)


def base_vhd() -> VhdInfo:
    return VhdInfo(BASE, "Dynamic", None, size=10 * 2**30, file_size=4 * 2**30)


def observe(
    *,
    files: tuple[str, ...] = (BASE,),
    host_vm: VmInfo | None = None,
    found_by: str = "id",
    drives: tuple[str, ...] = (),
    snapshots: tuple[str, ...] = (),
    vhds: tuple[VhdInfo, ...] = (),
    job: CopyJob | None = None,
    slot: SlotView = FREE_SLOT,
    process: ProcessInfo | None = None,
    process_checked: bool = False,
    guest: GuestInfo | None = None,
) -> Observation:
    vhd_map = {v.path.lower(): v for v in vhds}
    if BASE in files and BASE.lower() not in vhd_map:
        vhd_map[BASE.lower()] = base_vhd()
    return Observation(
        host_name="hv1",
        vm=host_vm,
        found_by=found_by if host_vm else "",
        drives=drives,
        snapshots=snapshots,
        existing=frozenset(f.lower() for f in files),
        vhds=vhd_map,
        copy=job,
        slot=slot,
        copy_process=process,
        copy_process_checked=process_checked or process is not None,
        # A running VM's guest booted: its heartbeat answers (spec.readiness defaults to Heartbeat).
        guest=guest if guest is not None or host_vm is None or host_vm.state != "Running"
        else GuestInfo(heartbeat="OK"),
    )


WORKER_CREATED = "2025-01-01T11:59:30.1234567Z"


def worker(pid: int, created: str = WORKER_CREATED) -> ProcessInfo:
    """The copy worker as Win32_Process shows it."""
    return ProcessInfo(pid, "powershell.exe",
                       '"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe" -NoProfile '
                       f"-NonInteractive {WORKER_COMMAND_LINE_TAIL}",
                       datetime.fromisoformat(created.replace("Z", "+00:00")))


def vmwp(pid: int) -> ProcessInfo:
    """Another VM's worker process holding a reused PID."""
    return ProcessInfo(pid, "vmwp.exe", '"C:\\Windows\\System32\\vmwp.exe" 0A1B2C3D-0000-0000-0000-000000000000',
                       NOW)


def status(phase: str | None = None, **extra: Any) -> dict[str, Any]:
    result: dict[str, Any] = dict(extra)
    if phase:
        result["phase"] = phase
    result.setdefault("timings", {"createdAt": "2025-01-01T11:59:00Z"})
    return result


def condition(s: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in s["conditions"] if c["type"] == type_)


def cmdlet_names(action: Any) -> list[str]:
    return [c.name.split("\\")[-1] if not c.is_script else "<script>" for st in action.statements for c in st.commands]
