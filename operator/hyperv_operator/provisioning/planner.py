"""The pure planner: (spec, status, observation, now) -> Plan(action, new status, requeue, events).

No I/O here. `plan` walks the strategy's phase table (phases.py) from `status.phase`: each phase
handler looks at the observation and either reports its work done (the loop moves to the next
phase, emitting PhaseChanged), or returns one host action, or a wait. `plan_delete` does the same
for finalize(). `absorb` folds an action's output (a new VM's Id, the checkpoint's .avhdx) into
the status; `error_status` turns a host error into the status the handler writes.
"""

from __future__ import annotations

import copy as _copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hyperv_operator import conditions as cond
from hyperv_operator.api import UID_TAG_PREFIX, DeletionPolicy, PowerState, Strategy, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets, errors, scripts, second_hop
from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import HostError, HostUnreachableError, TransientHostError
from hyperv_operator.provisioning import guest as guest_mod
from hyperv_operator.provisioning import resize as resize_mod
from hyperv_operator.provisioning import retry
from hyperv_operator.provisioning.layout import Layout, is_avhdx, is_checkpoint_of, same_path
from hyperv_operator.provisioning.model import Event, VmRef
from hyperv_operator.provisioning.observation import CopyJob, Observation, VmInfo, is_copy_worker, kind_of, parse_vm
from hyperv_operator.provisioning.pacing import copy_poll_delay, merge_poll_delay, progress_sample
from hyperv_operator.provisioning.phases import COPY_PHASES, Phase, Step

# Requeue delays (seconds).
HOST_ACCESS_CATEGORIES = frozenset({"AuthenticationError", "SecurityError"})
"""Error categories the WinRM client gives to 401s and TLS trust failures: the host, not the VM."""
AFTER_ACTION = 0.3  # right after a command: observe its effect promptly
COPY_POLL = 2.0
MERGE_POLL = 1.0
SHORT_WAIT = 0.5
POWER_POLL = 5.0
TRANSIENT_BACKOFF = 5.0
CLEANUP_RETRY = 30.0
STOP_TIMEOUT = 60.0  # graceful shutdown, then -TurnOff
MERGE_TIMEOUT = 3600.0  # a checkpoint merge still running after this stalls with a reason (it may still finish)
CRITICAL_POLL = 30.0  # re-check a VM Hyper-V reports as *Critical (lost storage) or Saved

# Hyper-V's VMState values (Microsoft.HyperV.PowerShell.VMState): Other, Running, Off, Stopping, Saved,
# Paused, Starting, Reset, Saving, Pausing, Resuming, FastSaved, FastSaving, and a *Critical twin of
# each (RunningCritical, OffCritical, ...), which Hyper-V reports when the VM lost access to its
# storage. Every state has an outcome below; none is waited for without a word.
PAUSED = "Paused"
SAVED_STATES = frozenset({"Saved", "FastSaved"})
COPY_STALL_SECONDS = 120.0  # the worker reports every second: this long without progress means it hangs
MAX_COPY_RESTARTS = 3  # a copy whose worker died is restarted this many times, then the VM fails

RUNNING = "Running"
OFF = "Off"


def is_critical(state: str) -> bool:
    return state.endswith("Critical")


@dataclass(frozen=True)
class Action:
    """One host operation: one client.run() of one or a few statements."""

    kind: str  # CamelCase name for logs and result handling (NewVM, StartCopy, RemoveFolders, ...)
    statements: tuple[Statement, ...]
    description: str  # the host step, human readable
    tolerate_not_found: bool = False  # finalize: "already gone" counts as done
    starts_copy: bool = False


@dataclass(frozen=True)
class Plan:
    action: Action | None
    status: dict[str, Any]  # the status after the action succeeds
    requeue_after: float | None
    events: tuple[Event, ...] = ()
    finished: bool = False


# --- results of a phase handler ------------------------------------------------------------------


@dataclass(frozen=True)
class _Done:
    pass


@dataclass(frozen=True)
class _Act:
    action: Action
    message: str
    requeue: float = AFTER_ACTION


@dataclass(frozen=True)
class _Wait:
    message: str
    requeue: float | None
    stall: str | None = None  # Stalled=True with this reason (the user must act; re-checked every `requeue`)


@dataclass(frozen=True)
class _Fail:
    reason: str
    message: str


_Result = _Done | _Act | _Wait | _Fail
DONE = _Done()


@dataclass
class _Work:
    spec: VirtualMachineSpec
    status: dict[str, Any]
    obs: Observation
    now: datetime
    vm: VmRef
    layout: Layout
    events: list[Event] = field(default_factory=list)

    @property
    def strategy(self) -> Strategy:
        return self.spec.strategy

    @property
    def vm_label(self) -> str:
        vm_id = self.status.get("vmId")
        return f"VM {vm_id[:8]}..." if vm_id else f"VM {self.layout.vm_name}"

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.events.append(Event("Warning" if warning else "Normal", reason, message))

    def created(self, *paths: str) -> None:
        files: list[str] = list(self.status.get("createdFiles") or [])
        for path in paths:
            if not any(same_path(path, f) for f in files):
                files.append(path)
        self.status["createdFiles"] = files

    def timing(self, key: str, value: Any) -> None:
        timings = dict(self.status.get("timings") or {})
        timings[key] = value
        self.status["timings"] = timings

    def reached(self, at_key: str, seconds_key: str | None = None) -> None:
        """The first time the VM reaches a milestone: record when (ms precision) and, with
        `seconds_key`, how long since createdAt. Later calls change nothing."""
        timings = self.status.get("timings") or {}
        if timings.get(at_key):
            return
        self.timing(at_key, cond.precise_timestamp(self.now))
        if seconds_key:
            seconds = _seconds_between(timings.get("createdAt"), self.now)
            if seconds is not None:
                self.timing(seconds_key, seconds)

    def copy_status(self, **values: Any) -> None:
        current = dict(self.status.get("copy") or {})
        current.update(values)
        self.status["copy"] = current

    def recorded_avhdx(self) -> str | None:
        disk = self.status.get("disk") or {}
        if is_avhdx(disk.get("path")):
            return str(disk["path"])
        for path in self.status.get("createdFiles") or []:
            if is_avhdx(path):
                return str(path)
        return self.obs.avhdx_drive()

    def adopt_vm(self) -> None:
        vm = self.obs.vm
        if vm is None:
            return
        if not self.status.get("vmId"):
            if self.obs.found_by in ("tag", "folder"):
                self.event("Adopted", f"adopted existing VM {vm.id} found by its {self.obs.found_by} on host "
                                      f"{self.obs.host_name}")
            self.status["vmId"] = vm.id
        if self.strategy is Strategy.QUICK:
            avhdx = self.obs.avhdx_drive()
            if avhdx and not any(same_path(avhdx, f) for f in self.status.get("createdFiles") or []):
                self.created(avhdx)


def _seconds_between(start: str | None, end: datetime) -> float | None:
    begun = cond.parse_timestamp(start)
    return None if begun is None else round((end - begun).total_seconds(), 3)


def _vm_gone(w: _Work) -> _Fail | None:
    if w.obs.vm is not None or not w.status.get("vmId"):
        return None
    files = ", ".join(w.status.get("createdFiles") or []) or "none"
    return _Fail("VMDeletedOutOfBand",
                 f"VM {w.status['vmId']} was deleted outside the operator on host {w.obs.host_name}; its disks were "
                 f"left in place (created files: {files}) and nothing was re-created. Delete this resource to clean "
                 f"up, or recreate it.")


# --- phase handlers ------------------------------------------------------------------------------


def _pending(w: _Work) -> _Result:
    base = w.spec.base_vhd
    if w.obs.is_denied(base):
        return _Fail(second_hop.REASON, second_hop.denied_message(base, w.obs.host_name))
    if not w.obs.exists(base):
        return _Fail("BaseDiskNotFound", f"base disk {base} not found on host {w.obs.host_name}; nothing was created")
    info = w.obs.vhd(base)
    if info is None:
        return _Wait(f"reading base disk {base}", SHORT_WAIT)
    if info.vhd_format and w.spec.generation == 2 and info.vhd_format.upper() != "VHDX":
        return _Fail("BaseFormatUnsupported",
                     f"base disk {base} is in {info.vhd_format} format; generation 2 VMs need a VHDX base (with a "
                     f"GPT/UEFI image); use generation 1 or convert the base (Convert-VHD); nothing was created")
    if info.in_use_elsewhere and not (w.status.get("timings") or {}).get("createdAt"):
        w.event("BaseInUseElsewhere", f"Get-VHD cannot read base disk {base}: another host has it open (shared "
                                      f"storage); checked it by file instead ({info.file_size} bytes)")
    if is_avhdx(base) or info.vhd_type.lower() == "differencing" or info.parent_path:
        return _Fail("BaseIsDifferencing",
                     f"base disk {base} is a differencing disk (parent {info.parent_path}); use a standalone VHDX "
                     f"as base; nothing was created")
    w.status["vmName"] = w.layout.vm_name
    w.status["vmDir"] = w.layout.vm_dir
    if w.strategy is Strategy.QUICK:
        w.status["checkpointName"] = w.layout.checkpoint_name
    w.reached("createdAt")
    if w.strategy is not Strategy.QUICK and not w.status.get("disk"):
        diff = w.strategy is Strategy.DIFFERENCING
        w.status["disk"] = {"path": w.layout.disk, "type": "Differencing" if diff else "Dynamic",
                            "parentPath": w.spec.base_vhd if diff else None}
    if info.size is not None and w.strategy is not Strategy.DIFFERENCING and not w.status.get("copy"):
        w.copy_status(bytesTotal=info.file_size or info.size, bytesCopied=0, percent=0)
    return DONE


def _creating_disk(w: _Work) -> _Result:
    disk, base = w.layout.disk, w.spec.base_vhd
    w.status["disk"] = {"path": disk, "type": "Differencing", "parentPath": base}
    if w.obs.exists(disk):
        info = w.obs.vhd(disk)
        if info is None:
            return _Wait(f"reading disk {disk}", SHORT_WAIT)
        if not same_path(info.parent_path, base):
            return _Fail("DiskConflict", f"{disk} exists but its parent is {info.parent_path}, not the base {base}")
        w.created(disk)
        return DONE
    w.created(disk)
    return _Act(Action("CreateDifferencingDisk",
                       (cmdlets.new_directory(w.layout.vm_dir), cmdlets.new_differencing_vhd(disk, base)),
                       f"New-VHD {disk} -ParentPath {base} -Differencing"),
                f"creating differencing disk {disk} on base {base}")


def _copy_worker_alive(w: _Work, job: CopyJob | None) -> bool | None:
    """True: the recorded worker process runs (command line and creation time match); False: it is
    gone or its PID now belongs to another process; None: not known (nothing recorded or not looked)."""
    record = w.status.get("copy") or {}
    pid = (job.process_id if job else 0) or int(record.get("processId") or 0)
    if not pid or not w.obs.copy_process_checked:
        return None
    created = (job.process_created_at if job else None) or record.get("processCreatedAt")
    return is_copy_worker(w.obs.copy_process, created)


def _copy_trouble(w: _Work, job: CopyJob) -> str | None:
    """Why a copy whose status says Running is not progressing, or None. Staleness is judged on the
    operator's clock (when a new updatedAt was first seen), never by comparing host and operator clocks."""
    alive = _copy_worker_alive(w, job)
    pid = job.process_id or (w.status.get("copy") or {}).get("processId")
    if alive is False:
        return (f"the copy worker (process {pid}) is no longer running on host {w.obs.host_name} (host restarted "
                f"or process ended) at {job.bytes_copied}/{job.bytes_total} bytes")
    record = w.status.get("copy") or {}
    mark = f"{job.bytes_copied}@{job.updated_at}"
    if record.get("progressMark") != mark:
        w.copy_status(progressMark=mark, progressSeenAt=cond.timestamp(w.now))
        return None
    seen = cond.parse_timestamp(record.get("progressSeenAt"))
    if seen is not None and (w.now - seen).total_seconds() > COPY_STALL_SECONDS:
        return (f"the copy worker (process {pid}) reported no progress for "
                f"{int((w.now - seen).total_seconds())} s (last update {job.updated_at})")
    return None


def _restart_copy(w: _Work, reason: str, job: CopyJob | None) -> _Result | None:
    """Stop a hung worker (only if it is provably ours), drop its status file and start again, at
    most MAX_COPY_RESTARTS times. None: nothing to clean, start the copy in this step."""
    record = w.status.get("copy") or {}
    restarts = int(record.get("restarts") or 0)
    base, disk = w.spec.base_vhd, w.layout.disk
    if restarts >= MAX_COPY_RESTARTS:
        return _Fail("CopyWorkerLost", f"background copy of {base} to {disk} on host {w.obs.host_name}: {reason}; "
                                       f"gave up after {restarts} restarts")
    w.event("CopyRestarted", f"restarting the copy of {base} to {disk} ({restarts + 1}/{MAX_COPY_RESTARTS}): "
                             f"{reason}", warning=True)
    pid = (job.process_id if job else 0) or int(record.get("processId") or 0)
    stop = [cmdlets.stop_process(pid)] if pid and _copy_worker_alive(w, job) else []
    w.copy_status(restarts=restarts + 1, processId=None, processCreatedAt=None, progressMark=None,
                  progressSeenAt=None, bytesCopied=0, percent=0, lastRestartReason=reason)
    if not stop and not w.obs.exists(w.layout.copy_status):
        return None
    statements = (*stop, cmdlets.remove_file(w.layout.copy_status))
    return _Act(Action("RestartCopy", statements, " ; ".join(str(s) for s in statements), tolerate_not_found=True),
                f"restarting the copy: {reason}")


def _copy_failed(w: _Work, job: CopyJob) -> _Result:
    """[reliability] A failed copy (disk full, share dropped) is tried again after a growing wait, its
    files removed first; after retry.COPY_ATTEMPTS the VM is Failed with the last error (the retry
    annotation tries again on demand)."""
    base, disk, layout = w.spec.base_vhd, w.layout.disk, w.layout
    again = retry.copy_failed(w.status.get("copy") or {}, job.finished_at or job.updated_at or "", w.now,
                              w.vm.uid)
    w.copy_status(**again.record)
    text = (f"background copy of {base} to {disk} failed on host {w.obs.host_name} "
            f"(attempt {again.record['failures']} of {retry.COPY_ATTEMPTS}): {job.error or 'no reason given'}")
    if again.give_up:
        return _Fail("CopyFailed", f"{text}; annotate {retry.RETRY_ANNOTATION} with a new value to try again")
    if again.wait > 0:
        return _Wait(f"{text}; copying again at {again.record['retryAt']}", min(again.wait, retry.MAX_DELAY))
    leftovers = [p for p in (layout.copy_status, layout.partial) if w.obs.exists(p)]
    # The failed worker has ended: the next copy is a new start, not a lost worker to restart.
    w.copy_status(processId=None, processCreatedAt=None, progressMark=None, progressSeenAt=None)
    return _Act(Action("RemoveFailedCopy", tuple(cmdlets.remove_file(p) for p in leftovers),
                       "Remove-Item " + ", ".join(leftovers), tolerate_not_found=True),
                f"{text}; removing the failed copy's files to copy again")


def _copying(w: _Work) -> _Result:
    base, disk, layout = w.spec.base_vhd, w.layout.disk, w.layout
    job = w.obs.copy
    if w.obs.exists(disk):
        total = (job.bytes_total if job else 0) or int((w.status.get("copy") or {}).get("bytesTotal") or 0)
        if not (w.status.get("copy") or {}).get("finishedAt"):
            w.event("CopyCompleted", f"copy of {base} to {disk} completed")
        w.copy_status(bytesCopied=total, bytesTotal=total, percent=100, queued=False,
                      finishedAt=(job.finished_at if job and job.finished_at else None) or cond.timestamp(w.now))
        w.created(disk)
        leftovers = [p for p in (layout.copy_status, layout.partial) if w.obs.exists(p)]
        if leftovers:  # the copy's bookkeeping files go once the copy is whole
            return _Act(Action("RemoveCopyStatus", tuple(cmdlets.remove_file(p) for p in leftovers),
                               "Remove-Item " + ", ".join(leftovers), tolerate_not_found=True),
                        f"copy complete; removing {', '.join(leftovers)}")
        return DONE
    if job is not None and job.state == "Running":
        trouble = _copy_trouble(w, job)
        if trouble is None:
            percent = int(job.bytes_copied * 100 // job.bytes_total) if job.bytes_total else 0
            w.copy_status(bytesCopied=job.bytes_copied, bytesTotal=job.bytes_total, percent=min(percent, 99),
                          queued=False, startedAt=job.started_at or (w.status.get("copy") or {}).get("startedAt"))
            w.created(layout.partial, layout.copy_status, disk)
            return _Wait(f"copying {base} -> {disk}: {min(percent, 99)}% ({job.bytes_copied}/{job.bytes_total} "
                         "bytes)", COPY_POLL)
        restart = _restart_copy(w, trouble, job)
        if restart is not None:
            return restart
    elif job is not None and job.state == "Completed":
        # The copy finished between our Test-Path and our read of its status file: look again
        # rather than start a second copy over the finished one.
        return _Wait(f"copy of {base} to {disk} completed; confirming {disk} exists", AFTER_ACTION)
    elif job is not None and job.state == "Failed":
        return _copy_failed(w, job)  # [reliability] retried when its cause may be gone
    elif job is None and (w.status.get("copy") or {}).get("processId"):
        # We started a worker but no status file is there (yet): wait while the worker lives.
        alive = _copy_worker_alive(w, None)
        pid = (w.status.get("copy") or {}).get("processId")
        if alive is not False:
            return _Wait(f"waiting for the copy worker (process {pid}) to report", COPY_POLL)
        restart = _restart_copy(w, f"the copy worker (process {pid}) ended without a status file", None)
        if restart is not None:
            return restart
    slot = w.obs.slot
    if not slot.available:
        if not (w.status.get("copy") or {}).get("queued"):
            w.event("CopyQueued", f"copy of {base} queued: {slot.running} copies already running on host "
                                  f"{w.obs.host_name} (maxConcurrentCopies={slot.limit})")
        w.copy_status(queued=True, queuePosition=slot.position)  # [reliability] FIFO place in the host's ledger
        place = f", position {slot.position} in the queue" if slot.position else ""
        return _Wait(f"queued: {slot.running} copies already running on host {w.obs.host_name} "
                     f"(maxConcurrentCopies={slot.limit}){place}", COPY_POLL)
    w.created(layout.partial, layout.copy_status, disk)
    w.copy_status(bytesCopied=0, percent=0, queued=False, queuePosition=None, startedAt=cond.timestamp(w.now),
                  finishedAt=None)
    w.event("CopyStarted", f"background copy of {base} to {disk} started on host {w.obs.host_name}")
    return _Act(Action("StartCopy",
                       (cmdlets.new_directory(layout.vm_dir),
                        scripts.start_background_copy(base, disk, layout.partial, layout.copy_status)),
                       f"StartBackgroundCopy {base} -> {layout.partial} -> {disk}", starts_copy=True),
                f"starting background copy of {base} to {disk}")


def _creating_vm(w: _Work) -> _Result:
    quick = w.strategy is Strategy.QUICK
    vhd = w.spec.base_vhd if quick else w.layout.disk
    vm = w.obs.vm
    if vm is None:
        if not quick and not w.obs.exists(vhd):
            return _Fail("DiskNotFound", f"the VM's disk {vhd} is missing on host {w.obs.host_name}")
        s = w.spec
        # Tag and size it in the same statement (and start it, where the phase after is Starting):
        # New-VM's output feeds Set-VM, so a crash half-way leaves an untagged VM in our folder.
        # Secure boot settings go on with Set-VMFirmware while the VM is still off: no start then.
        firmware_first = s.secure_boot is not None and s.generation == 2
        start = not quick and s.power_state is PowerState.RUNNING and not firmware_first
        if quick and not w.status.get("checkpointTypeBefore"):
            # New VMs get Production checkpoints by default; Standard is only for the quick-provision
            # checkpoint and is put back once it is merged.
            w.status["checkpointTypeBefore"] = "Production"
        return _Act(Action("NewVM",
                           (cmdlets.new_directory(w.layout.vm_dir),
                            cmdlets.new_configured_vm(w.layout.vm_name, w.layout.vm_dir, vhd, s.memory_bytes,
                                                      s.generation, s.switch_name,
                                                      notes=f"{UID_TAG_PREFIX}{w.vm.uid}", processor_count=s.cpus,
                                                      checkpoint_type="Standard" if quick else None, start=start)),
                           f"New-VM {w.layout.vm_name} -Path {w.layout.vm_dir} -VHDPath {vhd} | Set-VM"
                           + (" | Start-VM" if start else "")),
                    f"creating VM {w.layout.vm_name} on {vhd}" + (" (not started: the base is read-only)"
                                                                   if quick else ""))
    tagged = vm.tagged_for(w.vm.uid)
    wrong_cpus = vm.processor_count is not None and vm.processor_count != w.spec.cpus
    wrong_checkpoint = quick and vm.checkpoint_type is not None and vm.checkpoint_type != "Standard"
    if wrong_checkpoint and not w.status.get("checkpointTypeBefore"):
        w.status["checkpointTypeBefore"] = vm.checkpoint_type  # restored once the checkpoint is merged
    if not tagged or wrong_cpus or wrong_checkpoint:
        return _Act(Action("ConfigureVM",
                           (cmdlets.set_vm(vm.id, notes=f"{UID_TAG_PREFIX}{w.vm.uid}", processor_count=w.spec.cpus,
                                           checkpoint_type="Standard" if quick else None),),
                           f"Set-VM {vm.id} -Notes <uid tag> -ProcessorCount {w.spec.cpus}"
                           + (" -CheckpointType Standard" if quick else "")),
                    f"configuring VM {vm.id} (uid tag, CPUs" + (", standard checkpoints)" if quick else ")"))
    boot = w.spec.secure_boot
    if boot is not None and w.spec.generation == 2 and not w.status.get("firmwareConfigured"):
        if vm.state != OFF:
            return _Wait(f"VM {vm.id} is {vm.state} before its secure boot settings were applied; Set-VMFirmware "
                         f"needs the VM off: turn it off to continue", CRITICAL_POLL, stall="FirmwareNotApplied")
        w.status["firmwareConfigured"] = True
        template = boot.template if boot.enabled else None
        return _Act(Action("ConfigureFirmware",
                           (cmdlets.set_vm_firmware(vm.id, secure_boot=boot.enabled, template=template),),
                           f"Set-VMFirmware {vm.id} -EnableSecureBoot {'On' if boot.enabled else 'Off'}"
                           + (f" -SecureBootTemplate {template}" if template else "")),
                    f"applying secure boot settings to VM {vm.id} before its first start")
    if w.strategy is Strategy.COPY:
        w.reached("independentAt", "secondsToIndependent")
    return DONE


def _checkpointing(w: _Work) -> _Result:
    vm = w.obs.vm
    assert vm is not None
    name = w.layout.checkpoint_name
    w.status["checkpointName"] = name
    if w.obs.has_snapshot(name):
        avhdx = w.obs.avhdx_drive()
        if avhdx:
            w.status["disk"] = {"path": avhdx, "type": "Differencing", "parentPath": w.spec.base_vhd}
        return DONE
    return _Act(Action("Checkpoint", (cmdlets.checkpoint_vm(vm.id, name), cmdlets.get_vm_hard_disk_drives(vm.id)),
                       f"Checkpoint-VM {vm.id} -SnapshotName {name}"),
                f"creating checkpoint {name} (the VM moves onto an .avhdx next to the base)")


def _starting(w: _Work) -> _Result:
    vm = w.obs.vm
    assert vm is not None
    if vm.state == RUNNING:
        w.reached("runningAt", "secondsToRunning")
        return DONE
    if w.spec.power_state is PowerState.OFF:
        return DONE
    if vm.state == PAUSED:
        return _Act(Action("ResumeVM", (cmdlets.resume_vm(vm.id),), f"Resume-VM {vm.id}"),
                    f"resuming VM {vm.id} (it was paused)")
    if vm.state != OFF and vm.state not in SAVED_STATES:
        return _Wait(f"waiting for VM {vm.id} to settle (state {vm.state})", SHORT_WAIT)
    return _Act(Action("StartVM", (cmdlets.start_vm(vm.id),), f"Start-VM {vm.id}"), f"starting VM {vm.id}")


def _reparenting(w: _Work) -> _Result:
    disk, base = w.layout.disk, w.spec.base_vhd
    avhdx = w.recorded_avhdx()
    if avhdx is None or not w.obs.exists(avhdx):
        if w.obs.drives and all(same_path(d, disk) for d in w.obs.drives):
            return DONE  # merged already (the operator died after the merge)
        return _Fail("UnexpectedDiskChain", f"the VM's checkpoint disk {avhdx} is missing; drives: "
                                            f"{', '.join(w.obs.drives) or 'none'}")
    info = w.obs.vhd(avhdx)
    if info is None:
        return _Wait(f"reading disk chain of {avhdx}", SHORT_WAIT)
    w.status["disk"] = {"path": avhdx, "type": "Differencing", "parentPath": info.parent_path}
    if same_path(info.parent_path, disk):
        return DONE
    if not same_path(info.parent_path, base):
        return _Fail("UnexpectedDiskChain", f"{avhdx} has parent {info.parent_path}; expected the base {base} or "
                                            f"the copy {disk}")
    if not w.obs.exists(disk):
        return _Fail("CopyMissing", f"the copy {disk} is missing; cannot re-parent {avhdx}")
    w.status["disk"] = {"path": avhdx, "type": "Differencing", "parentPath": disk}
    w.event("Reparenting", f"re-parenting {avhdx} from {base} onto {disk}")
    return _Act(Action("Reparent", (cmdlets.reparent_vhd(avhdx, disk),),
                       f"Set-VHD {avhdx} -ParentPath {disk} -LeafPath {avhdx}"),
                f"re-parenting {avhdx} onto the copy {disk}")


def _merging(w: _Work) -> _Result:
    vm = w.obs.vm
    assert vm is not None
    disk = w.layout.disk
    avhdx = w.recorded_avhdx()
    disk_info = w.obs.vhd(disk)
    on_disk = bool(w.obs.drives) and all(same_path(d, disk) for d in w.obs.drives)
    avhdx_gone = avhdx is None or not w.obs.exists(avhdx)
    if on_disk and avhdx_gone and disk_info is not None and not disk_info.parent_path and not vm.merging:
        w.status["disk"] = {"path": disk, "type": disk_info.vhd_type or "Dynamic", "parentPath": None}
        before = w.status.get("checkpointTypeBefore")
        if before and before != "Standard" and vm.checkpoint_type == "Standard":
            # Standard checkpoints were needed only for the quick-provision checkpoint.
            w.status["checkpointTypeBefore"] = None
            return _Act(Action("RestoreCheckpointType", (cmdlets.set_vm(vm.id, checkpoint_type=str(before)),),
                               f"Set-VM {vm.id} -CheckpointType {before}"),
                        f"merged; restoring the VM's checkpoint type {before}")
        w.status["mergeStartedAt"] = None
        w.reached("independentAt", "secondsToIndependent")
        w.event("Independent", f"{w.vm_label} now runs on its own disk {disk}; the base is no longer used")
        return DONE
    name = w.layout.checkpoint_name
    if w.obs.has_snapshot(name):
        info = w.obs.vhd(avhdx)
        if info is None:
            return _Wait(f"reading disk chain of {avhdx}", SHORT_WAIT)
        if not same_path(info.parent_path, disk):
            # Never merge into the base: the checkpoint must sit on the copy first.
            return _Fail("UnexpectedDiskChain", f"refusing to remove checkpoint {name}: {avhdx} has parent "
                                                f"{info.parent_path}, not the copy {disk}")
        w.event("MergeStarted", f"removing checkpoint {name}: merging {avhdx} into {disk} online")
        w.status["mergeStartedAt"] = cond.timestamp(w.now)
        statements = [cmdlets.remove_vm_snapshot(vm.id, name)]
        before = w.status.get("checkpointTypeBefore")
        if before and before != "Standard":
            # The quick-provision checkpoint was the only one that needed Standard: put the VM's type
            # back in the same pipeline (a crash in between is caught after the merge, below).
            statements.append(cmdlets.set_vm(vm.id, checkpoint_type=str(before)))
            w.status["checkpointTypeBefore"] = None
        return _Act(Action("RemoveCheckpoint", tuple(statements),
                           f"Remove-VMSnapshot {vm.id} -Name {name}"
                           + (f"; Set-VM -CheckpointType {before}" if len(statements) > 1 else "")),
                    f"removing checkpoint {name} (merges {avhdx} into {disk})", merge_poll_delay(0.0, MERGE_POLL))
    message = (f"merging {avhdx} into {disk} (VM status: {vm.status or 'unknown'}; drives: "
               f"{', '.join(w.obs.drives) or 'none'})")
    merging_for = _seconds_between(w.status.get("mergeStartedAt"), w.now)
    if merging_for is not None and merging_for > MERGE_TIMEOUT:
        return _Wait(f"the merge of {avhdx} into {disk} has not finished after {int(merging_for)}s (limit "
                     f"{int(MERGE_TIMEOUT)}s); VM status: {vm.status or 'unknown'}. Check the host (Hyper-V-VMMS "
                     f"event log, free space on the disk's volume); the operator keeps watching", CRITICAL_POLL,
                     stall="MergeTimedOut")
    return _Wait(message, merge_poll_delay(merging_for, MERGE_POLL))


def _provisioned(w: _Work) -> _Result:
    vm = w.obs.vm
    if vm is None:
        return _Fail("VMNotFound", f"no VM tagged for this resource on host {w.obs.host_name}")
    if vm.state == PAUSED:
        # Paused: the guest does not run, so it can neither serve (Running) nor shut down (Off).
        # Resume it first, in both cases; a graceful shutdown follows when spec.powerState is Off.
        w.event("VMPausedOutOfBand", f"VM {vm.id} was paused outside the operator; resuming it "
                                     f"(spec.powerState {w.spec.power_state.value})", warning=True)
        return _Act(Action("ResumeVM", (cmdlets.resume_vm(vm.id),), f"Resume-VM {vm.id}"),
                    f"resuming paused VM {vm.id}", POWER_POLL)
    resized = _resize(w, vm)  # issue 14: cpus/memory changes
    if resized is not None:
        return resized
    if w.spec.power_state is PowerState.RUNNING:
        w.status["stopRequestedAt"] = None
        if vm.state == RUNNING:
            seen = _guest_verdict(w)  # issue 14: Ready follows spec.readiness
            if not seen.ready:
                return _Wait(seen.message, guest_mod.GUEST_POLL, stall=seen.reason if seen.stalled else None)
            return _Wait(seen.message, None)
        if vm.state == OFF or vm.state in SAVED_STATES:
            unchanged_spec = w.status.get("observedGeneration") == w.vm.generation
            if unchanged_spec and w.status.get("powerState") == RUNNING:
                w.event("VMStoppedOutOfBand", f"VM {vm.id} was stopped outside the operator (state {vm.state}); "
                                              f"starting it again because spec.powerState is Running", warning=True)
            else:
                w.event("PowerStateChanged", f"starting VM {vm.id} (spec.powerState Running)")
            return _Act(Action("StartVM", (cmdlets.start_vm(vm.id),), f"Start-VM {vm.id}"),
                        f"starting VM {vm.id} (spec.powerState Running, was {vm.state})")
        return _Wait(f"waiting for VM {vm.id} to settle (state {vm.state})", POWER_POLL)
    if vm.state == OFF:
        w.status["stopRequestedAt"] = None
        return _Wait(f"VM {vm.id} is off (spec.powerState Off)", None)
    if vm.state in SAVED_STATES:
        # Not off: its memory is saved to disk. Turning it off would discard that state, and the
        # operator never loses data on its own; the user decides.
        w.status["stopRequestedAt"] = None
        return _Wait(f"VM {vm.id} is {vm.state} (its memory is saved to disk), not Off as spec.powerState asks; "
                     f"the operator does not discard a saved state: start the VM (it is then shut down) or remove "
                     f"its saved state (Remove-VMSavedState)", CRITICAL_POLL, stall="VMSaved")
    requested = cond.parse_timestamp(w.status.get("stopRequestedAt"))
    if requested is None:
        w.status["stopRequestedAt"] = cond.timestamp(w.now)
        w.event("PowerStateChanged", f"shutting down VM {vm.id} through the guest (spec.powerState Off)")
        return _Act(Action("StopVM", (cmdlets.stop_vm(vm.id, turn_off=False),), f"Stop-VM {vm.id} -Force"),
                    f"shutting down VM {vm.id} (graceful)", POWER_POLL)
    waited = (w.now - requested).total_seconds()
    if waited >= STOP_TIMEOUT:
        w.event("GracefulStopTimedOut", f"VM {vm.id} did not shut down within {int(STOP_TIMEOUT)}s; turning it off",
                warning=True)
        return _Act(Action("TurnOffVM", (cmdlets.stop_vm(vm.id, turn_off=True),), f"Stop-VM {vm.id} -TurnOff"),
                    f"turning off VM {vm.id} (graceful shutdown timed out)", POWER_POLL)
    return _Wait(f"waiting for VM {vm.id} to shut down ({int(waited)}s of {int(STOP_TIMEOUT)}s, state {vm.state})",
                 POWER_POLL)


def _critical(w: _Work) -> _Wait | None:
    """A VM Hyper-V reports as *Critical lost access to its storage: nothing the operator sends can
    help (Start-VM, checkpoints and merges fail on it), so stall with the reason and re-check."""
    vm = w.obs.vm
    if vm is None or not is_critical(vm.state):
        return None
    return _Wait(f"Hyper-V reports VM {vm.id} as {vm.state}: it has lost access to its storage (a disk or its "
                 f"configuration folder is unreachable, e.g. the share is down or the volume is full). The "
                 f"operator sends nothing until the host reports a normal state again", CRITICAL_POLL,
                 stall="VMCritical")


PENDING = Step(Phase.PENDING, _pending,
               "check the base: Get-VHD must find it, not a differencing disk; nothing is created",
               "the base is a standalone VHDX", watches_vm=False)

PHASE_TABLES: dict[Strategy, tuple[Step, ...]] = {
    Strategy.DIFFERENCING: (
        PENDING,
        Step(Phase.CREATING_DISK, _creating_disk, "New-Item vm_dir; New-VHD disk -ParentPath base -Differencing",
             "Get-VHD disk exists with ParentPath = base", watches_vm=False),
        Step(Phase.CREATING_VM, _creating_vm, "New-VM -Path vm_dir -VHDPath disk | Set-VM Notes=uid tag, CPUs "
                                              "-Passthru | Start-VM -Passthru (record vmId)",
             "a VM with our uid tag (or status.vmId) exists, configured"),
        Step(Phase.STARTING, _starting, "Start-VM (skipped when powerState is Off)", "VM State Running"),
        Step(Phase.PROVISIONED, _provisioned, "power and drift: start/stop per spec.powerState; report "
                                              "out-of-band changes", "converged"),
    ),
    Strategy.COPY: (
        PENDING,
        Step(Phase.COPYING, _copying, "wait for a copy slot; start the background copy base -> disk.partial "
                                      "(renamed to disk when whole); poll its status file by its ETA",
             "disk exists (the rename happened)"),
        Step(Phase.CREATING_VM, _creating_vm, "New-VM -VHDPath disk | Set-VM Notes=uid tag, CPUs -Passthru | "
                                              "Start-VM -Passthru (record vmId)",
             "a VM with our uid tag exists, configured"),
        Step(Phase.STARTING, _starting, "Start-VM (skipped when powerState is Off)", "VM State Running"),
        Step(Phase.PROVISIONED, _provisioned, "power and drift", "converged"),
    ),
    Strategy.QUICK: (
        PENDING,
        Step(Phase.CREATING_VM, _creating_vm, "New-VM -VHDPath base | Set-VM Notes=uid tag, CPUs, CheckpointType "
                                              "Standard -Passthru (NOT started: the base is read-only)",
             "a VM with our tag exists, configured"),
        Step(Phase.CHECKPOINTING, _checkpointing, "Checkpoint-VM hyperv-operator-quick-provision (the VM moves "
                                                  "onto <base>_<GUID>.avhdx next to the base, so the base's "
                                                  "FOLDER must be writable for the host; recorded in createdFiles)",
             "the checkpoint exists"),
        Step(Phase.STARTING, _starting, "Start-VM: the VM runs on the .avhdx (Ready=True from here)",
             "VM State Running"),
        Step(Phase.COPYING_BASE, _copying, "wait for a copy slot; background copy base -> disk.partial -> disk; "
                                           "poll by its ETA", "disk exists"),
        Step(Phase.REPARENTING, _reparenting, "Set-VHD avhdx -ParentPath disk -LeafPath avhdx (never "
                                              "-IgnoreIdMismatch)", "Get-VHD avhdx ParentPath = disk"),
        Step(Phase.MERGING, _merging, "Remove-VMSnapshot (merges the .avhdx into disk online; never into the "
                                      "base); poll (Stalled MergeTimedOut after an hour); then Set-VM "
                                      "-CheckpointType <the type before>",
             "drive = disk, .avhdx gone, disk has no parent, VM Status not 'Merging disks', checkpoint type "
             "restored"),
        Step(Phase.PROVISIONED, _provisioned, "power and drift (Independent=True)", "converged"),
    ),
}


def phases(strategy: Strategy) -> tuple[Phase, ...]:
    return tuple(step.phase for step in PHASE_TABLES[strategy])


def step_of(strategy: Strategy, phase: Phase) -> Step:
    return next(step for step in PHASE_TABLES[strategy] if step.phase is phase)


def next_phase(strategy: Strategy, phase: Phase) -> Phase:
    order = phases(strategy)
    return order[min(order.index(phase) + 1, len(order) - 1)]


def is_before(strategy: Strategy, phase: Phase, other: Phase) -> bool:
    order = phases(strategy)
    return phase in order and other in order and order.index(phase) < order.index(other)


# --- conditions ----------------------------------------------------------------------------------


def _independent(strategy: Strategy, phase: Phase) -> tuple[bool, str, str]:
    if strategy is Strategy.DIFFERENCING:
        return False, "DifferencingDisk", "the VM's disk is a differencing child of the base"
    if strategy is Strategy.COPY:
        if phase is Phase.PENDING or phase is Phase.COPYING:
            return False, "CopyInProgress", "the base is being copied"
        return True, "FullCopy", "the VM's disk is a full copy of the base"
    if phase is Phase.PROVISIONED:
        return True, "Merged", "the checkpoint was merged into the VM's own disk"
    if is_before(strategy, phase, Phase.REPARENTING):
        return False, "RunningOnBase", "the VM runs on a checkpoint of the base until the copy is merged"
    return False, "Merging", "the VM's checkpoint is being re-parented and merged into its own disk"


def _with_conditions(
    w: _Work, phase: Phase, *, converged: bool, failure: tuple[str, str] | None = None,
    busy: tuple[str, str] | None = None,
) -> None:
    s, prev, gen, now = w.status, w.status.get("conditions"), w.vm.generation, w.now
    message = str(s.get("message") or "")
    updates: list[dict[str, Any]] = []
    if failure:
        updates.append(cond.make(prev, cond.STALLED, True, failure[0], failure[1], gen, now))
        updates.append(cond.make(prev, cond.RECONCILING, False, "Stalled", failure[1], gen, now))
        updates.append(cond.make(prev, cond.READY, False, failure[0], failure[1], gen, now))
        if cond.find(prev, cond.INDEPENDENT) is None:
            updates.append(cond.make(prev, cond.INDEPENDENT, None, "Failed", failure[1], gen, now))
        s["conditions"] = cond.merge(prev, updates)
        return
    updates.append(cond.make(prev, cond.STALLED, False, "NoError", "", gen, now))
    if busy:
        updates.append(cond.make(prev, cond.RECONCILING, True, busy[0], busy[1], gen, now))
    elif converged:
        updates.append(cond.make(prev, cond.RECONCILING, False, "Provisioned", message, gen, now))
    else:
        updates.append(cond.make(prev, cond.RECONCILING, True, phase.value, message, gen, now))
    vm = w.obs.vm
    state = vm.state if vm else None
    started = not is_before(w.strategy, phase, Phase.STARTING)  # Ready from Starting on (Quick: on the .avhdx)
    seen = _guest_verdict(w) if state == RUNNING else None  # issue 14
    if w.spec.power_state is PowerState.RUNNING and state == RUNNING and started and seen is not None:
        updates.append(cond.make(prev, cond.READY, seen.ready, seen.reason, seen.message, gen, now))
    elif w.spec.power_state is PowerState.OFF and state == OFF and phase is Phase.PROVISIONED:
        updates.append(cond.make(prev, cond.READY, True, "PoweredOff", f"VM {vm.id if vm else ''} is off as "
                                                                        f"requested", gen, now))
    else:
        reason = phase.value if phase is not Phase.PROVISIONED else (
            "Stopping" if w.spec.power_state is PowerState.OFF else "Starting")
        updates.append(cond.make(prev, cond.READY, False, reason, message, gen, now))
    ok, reason, text = _independent(w.strategy, phase)
    updates.append(cond.make(prev, cond.INDEPENDENT, ok, reason, text, gen, now))
    s["conditions"] = cond.merge(prev, updates)


def _finish_status(w: _Work, phase: Phase, message: str, *, converged: bool,
                   stall: str | None = None) -> dict[str, Any]:
    s = w.status
    s["phase"] = phase.value
    s["message"] = message
    s["lastError"] = None
    s["observedGeneration"] = w.vm.generation
    if w.obs.vm is not None:
        s["powerState"] = w.obs.vm.state
        s["vmName"] = w.obs.vm.name or s.get("vmName")
    # --- guest (issue 14) ---
    running = w.obs.vm is not None and w.obs.vm.state == RUNNING
    s["guest"] = guest_mod.record(s.get("guest"), w.obs.guest, running, running and _guest_verdict(w).ready, w.now)
    if stall:
        _with_conditions(w, phase, converged=False, failure=(stall, message))
    else:
        _with_conditions(w, phase, converged=converged)
    return s


def _resize(w: _Work, vm: VmInfo) -> _Result | None:
    """Issue 14: apply spec.cpus / spec.memory changes (decisions in provisioning/resize.py)."""
    d = resize_mod.decide(w.spec, w.spec.update_policy, vm, w.status, w.now, stop_timeout=STOP_TIMEOUT)
    prev = w.status.get("conditions")
    updates = resize_mod.pending_condition(prev, d.pending, w.vm.generation, w.now)
    if updates:
        w.status["conditions"] = cond.merge(prev, updates)
    w.status.update(d.status)
    for reason, message in d.events:
        w.event(reason, message)
    if d.action is not None:
        kind, statements, description = d.action
        return _Act(Action(kind, statements, description), d.message,
                    POWER_POLL if kind in ("StopVMForResize", "TurnOffVMForResize") else AFTER_ACTION)
    if d.wait is not None:
        return _Wait(d.message, d.wait)
    return None


def _guest_verdict(w: _Work) -> guest_mod.Verdict:
    """Issue 14: is the running VM's guest ready per spec.readiness (from the status.guest before this step)."""
    vm_id = w.obs.vm.id if w.obs.vm else str(w.status.get("vmId") or "")
    return guest_mod.verdict(w.spec.readiness, w.spec.readiness_timeout_seconds, vm_id, w.obs.guest,
                             w.status.get("guest"), w.now)


def _fail(w: _Work, phase_before: Phase, failure: _Fail) -> Plan:
    s = w.status
    s["phase"] = Phase.FAILED.value
    s["message"] = failure.message
    s["lastError"] = failure.message
    s["observedGeneration"] = w.vm.generation
    if phase_before is not Phase.FAILED:
        w.event("PhaseChanged", f"{w.strategy.value}: {phase_before.value} -> Failed ({w.vm_label})", warning=True)
        w.event(failure.reason, failure.message, warning=True)
    _with_conditions(w, Phase.FAILED, converged=False, failure=(failure.reason, failure.message))
    return Plan(None, s, None, tuple(w.events))


def _phase_of(status: Mapping[str, Any]) -> Phase:
    try:
        return Phase(status.get("phase") or Phase.PENDING.value)
    except ValueError:
        return Phase.PENDING


def retryable_failure(status: Mapping[str, Any]) -> bool:
    """A missing (or, across the second hop, unreadable) base is re-checked (e.g. by the periodic timer)
    while nothing was created."""
    stalled = cond.find(status.get("conditions"), cond.STALLED)
    return (stalled is not None and stalled.get("reason") in ("BaseDiskNotFound", second_hop.REASON)
            and not status.get("vmId")
            and not status.get("createdFiles"))


def plan(
    spec: VirtualMachineSpec, status: Mapping[str, Any], observation: Observation, now: datetime, *,
    vm: VmRef, layout: Layout,
) -> Plan:
    """The next step of provisioning / power management. Pure."""
    w = _Work(spec, _copy.deepcopy(dict(status)), observation, now, vm, layout)
    start = _phase_of(status)
    start_conditions = status.get("conditions")
    if start is Phase.DELETING:
        return Plan(None, w.status, None)
    phase: Phase = start
    if start is Phase.FAILED:
        if not retryable_failure(status):
            return Plan(None, w.status, None)
        phase = Phase.PENDING
    if phase not in phases(spec.strategy):
        return _fail(w, start, _Fail("UnknownPhase", f"phase {phase} is not part of the {spec.strategy} strategy"))
    while True:
        step = step_of(spec.strategy, phase)
        critical = _critical(w) if phase is not Phase.PENDING else None
        gone = _vm_gone(w) if step.watches_vm and critical is None else None
        if gone is not None:
            return _fail(w, start, gone)
        if step.watches_vm and critical is None:
            w.adopt_vm()
        result: _Result = critical if critical is not None else step.plan(w)
        if isinstance(result, _Done):
            nxt = next_phase(spec.strategy, phase)
            if nxt == phase:  # Provisioned never reports done; guard anyway
                return Plan(None, _finish_status(w, phase, "provisioned", converged=True), None, tuple(w.events))
            w.event("PhaseChanged", f"{spec.strategy.value}: {phase.value} -> {nxt.value} ({w.vm_label})")
            phase = nxt
            continue
        if isinstance(result, _Fail):
            return _fail(w, start, result)
        if isinstance(result, _Act):
            status_out = _finish_status(w, phase, f"{phase.value}: {result.message}", converged=False)
            return Plan(result.action, status_out, result.requeue, tuple(w.events))
        converged = result.requeue is None and phase is Phase.PROVISIONED
        requeue = result.requeue
        if phase in COPY_PHASES and requeue is not None and observation.copy is not None:
            requeue = copy_poll_delay(observation.copy, requeue, now=now,  # poll by the copy's ETA
                                      previous=progress_sample(status.get("copy")))
        status_out = _finish_status(w, phase, f"{phase.value}: {result.message}" if not converged
                                    else result.message, converged=converged, stall=result.stall)
        stalled_before = cond.find(start_conditions, cond.STALLED) or {}
        if result.stall and not (stalled_before.get("status") == "True"
                                 and stalled_before.get("reason") == result.stall):
            w.event(result.stall, result.message, warning=True)  # once, when the stall begins
        return Plan(None, status_out, requeue, tuple(w.events))


# --- finalize ------------------------------------------------------------------------------------


def _deletable(w: _Work, path: str) -> bool:
    """Only our files: under our uid-specific vm_dir, or the checkpoint .avhdx recorded for this VM;
    never the base, never anything else."""
    if same_path(path, w.spec.base_vhd):
        return False
    if path.lower().startswith(w.layout.vm_dir.lower() + "\\"):
        return True
    # Outside vm_dir only the quick-provision checkpoint disk Hyper-V put beside the base:
    # <base folder>\<base stem>_<GUID>.avhdx, and only if it was recorded for this VM.
    recorded = any(same_path(path, f) for f in w.status.get("createdFiles") or []) or same_path(
        path, (w.status.get("disk") or {}).get("path"))
    return recorded and is_checkpoint_of(path, w.spec.base_vhd)


def plan_delete(
    spec: VirtualMachineSpec, status: Mapping[str, Any], observation: Observation, now: datetime, *,
    vm: VmRef, layout: Layout,
) -> Plan:
    """The next step of deletion. Pure. `finished=True` when the finalizer may go."""
    w = _Work(spec, _copy.deepcopy(dict(status)), observation, now, vm, layout)
    obs = observation
    if spec.deletion_policy is DeletionPolicy.RETAIN:
        w.status["message"] = (f"deletionPolicy Retain: VM {status.get('vmId') or layout.vm_name} and its files in "
                               f"{layout.vm_dir} were left on host {obs.host_name}")
        w.event("Retained", w.status["message"])
        return Plan(None, w.status, None, tuple(w.events), finished=True)
    start = _phase_of(status)
    if start is not Phase.DELETING:
        w.event("PhaseChanged", f"{spec.strategy.value}: {start.value} -> Deleting ({w.vm_label})")
    w.status["phase"] = Phase.DELETING.value
    w.status["lastError"] = None

    def act(action: Action, message: str, requeue: float = AFTER_ACTION) -> Plan:
        return _deleting(w, message, action, requeue)

    job = obs.copy
    if job is not None and job.state == "Running" and not obs.exists(layout.disk):
        pid = job.process_id or int((status.get("copy") or {}).get("processId") or 0)
        # Stop only a process proven to be our worker: its PID may now be another VM's vmwp.exe.
        ours = pid and _copy_worker_alive(w, job)
        statements = ([cmdlets.stop_process(pid)] if ours else []) + [cmdlets.remove_file(layout.copy_status)]
        how = (f"stopping worker process {pid}" if ours
               else f"process {pid} is not running or is not the copy worker: not stopped")
        w.event("CopyCancelled", f"cancelling the background copy to {layout.disk} ({how})")
        return act(Action("CancelCopy", tuple(statements), " ; ".join(str(s) for s in statements),
                          tolerate_not_found=True), f"cancelling the background copy ({how})")
    host_vm = obs.vm
    if host_vm is not None:
        if host_vm.merging:
            return _deleting(w, f"waiting for the merge of VM {host_vm.id} to finish before removing it", None,
                             MERGE_POLL)
        for drive in obs.drives:  # record the checkpoint disk before the VM that names it goes away
            if is_avhdx(drive) and not any(same_path(drive, f) for f in w.status.get("createdFiles") or []):
                w.created(drive)
                return _deleting(w, f"recording checkpoint disk {drive} for removal", None, 0.0)
        statements = ([] if host_vm.state == OFF else [cmdlets.stop_vm(host_vm.id, turn_off=True)])
        statements.append(cmdlets.remove_vm(host_vm.id))
        return act(Action("RemoveVM", tuple(statements), f"Stop-VM {host_vm.id} -TurnOff; Remove-VM {host_vm.id}",
                          tolerate_not_found=True), f"turning off and removing VM {host_vm.id}")
    candidates: list[str] = []
    for path in [*(w.status.get("createdFiles") or []), *layout.owned_files]:
        if not any(same_path(path, c) for c in candidates):
            candidates.append(path)
    files = [p for p in candidates if obs.exists(p) and _deletable(w, p)]
    if files:
        return act(Action("RemoveFiles", tuple(cmdlets.remove_file(p) for p in files),
                          "Remove-Item " + ", ".join(files), tolerate_not_found=True),
                   "removing files created for this VM: " + ", ".join(files))
    folders = [f for f in layout.folders_bottom_up if obs.exists(f)]
    if folders:
        return act(Action("RemoveFolders", tuple(cmdlets.remove_empty_directory(f) for f in folders),
                          "Remove-Item (empty folders) " + ", ".join(folders), tolerate_not_found=True),
                   "removing empty folders " + ", ".join(folders))
    w.event("Deleted", f"VM and files of {vm.namespace}/{vm.name} removed from host {obs.host_name}; base "
                       f"{spec.base_vhd} untouched")
    w.status["message"] = "deleted"
    return Plan(None, w.status, None, tuple(w.events), finished=True)


def _deleting(w: _Work, message: str, action: Action | None, requeue: float) -> Plan:
    w.status["message"] = f"Deleting: {message}"
    prev, gen = w.status.get("conditions"), w.vm.generation
    w.status["conditions"] = cond.merge(prev, [
        cond.make(prev, cond.RECONCILING, True, "Deleting", w.status["message"], gen, w.now),
        cond.make(prev, cond.READY, False, "Deleting", w.status["message"], gen, w.now),
    ])
    return Plan(action, w.status, requeue, tuple(w.events))


# --- action results and errors -------------------------------------------------------------------


def absorb(action: Action, status: Mapping[str, Any], output: Sequence[HostObject]) -> dict[str, Any]:
    """Fold an action's output into the status (pure)."""
    s = _copy.deepcopy(dict(status))
    if action.kind == "NewVM":
        for obj in output:
            if kind_of(obj) == "vm":
                s["vmId"] = parse_vm(obj).id
                break
    elif action.kind == "Checkpoint":
        for obj in output:
            if kind_of(obj) == "drive":
                path = str(obj.get("Path") or "")
                if is_avhdx(path):
                    files = list(s.get("createdFiles") or [])
                    if not any(same_path(path, f) for f in files):
                        files.append(path)
                    s["createdFiles"] = files
                    disk = dict(s.get("disk") or {})
                    s["disk"] = {"path": path, "type": "Differencing",
                                 "parentPath": disk.get("parentPath") if not is_avhdx(disk.get("path")) else None}
    elif action.kind == "StartCopy":
        for obj in output:
            pid = obj.get("ProcessId")
            if pid:
                created = obj.get("ProcessCreatedAt")
                s["copy"] = {**dict(s.get("copy") or {}), "processId": int(pid),
                             "processCreatedAt": str(created) if created else None}
    return s


def is_not_found(error: HostError) -> bool:
    """By FullyQualifiedErrorId, exception type and category (see hyperv/errors.py), never by text."""
    return errors.is_not_found(error)


def error_status(
    spec: VirtualMachineSpec, status: Mapping[str, Any], intended: Mapping[str, Any], error: HostError,
    now: datetime, *, vm: VmRef, layout: Layout, host_name: str, step: str, deleting: bool = False,
    retry_in: float | None = None,
) -> tuple[dict[str, Any], float | None, tuple[Event, ...]]:
    """The status after a failed host call: keep the phase on transient errors (retry), Failed on
    permanent ones. `intended` is the plan's status; its createdFiles are kept (intent)."""
    s = _copy.deepcopy(dict(status))
    for key in ("createdFiles", "vmId", "vmName", "vmDir", "disk", "checkpointName", "timings", "stopRequestedAt",
                "checkpointTypeBefore"):
        if intended.get(key):  # intent and identity survive the failure
            s[key] = _copy.deepcopy(intended[key])
    if intended.get("phase") not in (None, Phase.FAILED.value):
        s["phase"] = intended["phase"]  # the phase whose host step was attempted
    phase = _phase_of(s)
    w = _Work(spec, s, Observation(host_name=host_name), now, vm, layout)
    prev, gen = s.get("conditions"), vm.generation
    s["lastError"] = f"{step}: {error}"
    if isinstance(error, TransientHostError):
        reason = "HostUnreachable" if isinstance(error, HostUnreachableError) else "HostBusy"
        delay = TRANSIENT_BACKOFF if retry_in is None else retry_in  # [reliability] backoff from settle
        s["message"] = f"{phase.value}: {step} failed, retrying in {delay:g}s: {error}"
        s["conditions"] = cond.merge(prev, [
            cond.make(prev, cond.RECONCILING, True, reason, s["message"], gen, now),
            cond.make(prev, cond.STALLED, False, "NoError", "", gen, now),
        ])
        return s, delay, (Event("Warning", reason, f"{step} on host {host_name}: {error}"),)
    if error.category in HOST_ACCESS_CATEGORIES:
        # The host refused *us* (credentials, TLS trust), not this VM: stall visibly, keep the phase
        # and retry, so fixing the HyperVHost's Secret resumes the VM where it stopped.
        s["phase"] = phase.value
        s["message"] = f"{phase.value}: cannot use host {host_name}, retrying in {int(CLEANUP_RETRY)}s: {error}"
        updates = [
            cond.make(prev, cond.STALLED, True, "HostAccessDenied", s["message"], gen, now),
            cond.make(prev, cond.RECONCILING, False, "HostAccessDenied", s["message"], gen, now),
        ]
        if phase is not Phase.PROVISIONED and not cond.is_true(prev, cond.READY):
            updates.append(cond.make(prev, cond.READY, False, "HostAccessDenied", s["message"], gen, now))
        s["conditions"] = cond.merge(prev, updates)
        return s, CLEANUP_RETRY, (Event("Warning", "HostAccessDenied", f"{step} on host {host_name}: {error}"),)
    if deleting:
        s["message"] = f"Deleting: {step} failed, retrying in {int(CLEANUP_RETRY)}s: {error}"
        s["conditions"] = cond.merge(prev, [
            cond.make(prev, cond.STALLED, True, "CleanupFailed", s["message"], gen, now),
            cond.make(prev, cond.RECONCILING, True, "Deleting", s["message"], gen, now),
        ])
        return s, CLEANUP_RETRY, (Event("Warning", "CleanupFailed", f"{step} on host {host_name}: {error}"),)
    if phase is Phase.PROVISIONED:  # a failed power action does not un-provision the VM
        s["message"] = f"Provisioned: {step} failed, retrying in {int(CLEANUP_RETRY)}s: {error}"
        s["conditions"] = cond.merge(prev, [
            cond.make(prev, cond.READY, False, "PowerActionFailed", s["message"], gen, now),
            cond.make(prev, cond.RECONCILING, True, "PowerActionFailed", s["message"], gen, now),
        ])
        return s, CLEANUP_RETRY, (Event("Warning", "PowerActionFailed", f"{step} on host {host_name}: {error}"),)
    if phase is Phase.CHECKPOINTING and error.category == "PermissionDenied":
        # Checkpoint-VM puts Quick's .avhdx beside the base: the base's folder must be writable.
        folder = spec.base_vhd.rsplit("\\", 1)[0]
        result = _fail(w, phase, _Fail("BaseFolderNotWritable",
                                       f"{step} failed on host {host_name}: Hyper-V creates Quick's checkpoint disk "
                                       f"beside the base, in {folder}, and may not write there ({error}). Make that "
                                       f"folder writable for the host (the base file itself stays read-only), or use "
                                       f"strategy Copy or Differencing"))
        return result.status, None, result.events
    reason = "BaseDiskNotFound" if (is_not_found(error) and phase is Phase.PENDING) else "HostRejected"
    result = _fail(w, phase, _Fail(reason, f"{step} failed on host {host_name}: {error}"))
    return result.status, None, result.events

