"""The copy phases (Copy's Copying, Quick's CopyingBase): start the background copy when a host slot
is free, follow its status file, restart a lost or hung worker, retry a failed copy."""

from __future__ import annotations

from hyperv_operator import conditions as cond
from hyperv_operator.hyperv import cmdlets, scripts
from hyperv_operator.provisioning import retry
from hyperv_operator.provisioning.observation import CopyJob, is_copy_worker
from hyperv_operator.provisioning.planner.work import (
    AFTER_ACTION,
    COPY_POLL,
    COPY_STALL_SECONDS,
    DONE,
    MAX_COPY_RESTARTS,
    Action,
    _Act,
    _Fail,
    _Result,
    _Wait,
    _Work,
)


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
    # The folder the copy writes into: made here unless the host (or New-VM's statement before it in
    # the same run, Quick) shows it there already.
    folder = () if w.obs.exists(layout.vm_dir) else (cmdlets.new_directory(layout.vm_dir),)
    return _Act(Action("StartCopy",
                       (*folder, scripts.start_background_copy(base, disk, layout.partial, layout.copy_status)),
                       f"StartBackgroundCopy {base} -> {layout.partial} -> {disk}", starts_copy=True),
                f"starting background copy of {base} to {disk}")
