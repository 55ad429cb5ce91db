"""The planner's handling of the copy worker's liveness (pure): a worker gone after a host reboot or
a kill, a hung worker, a worker not yet reporting, and the bound on restarts."""

from __future__ import annotations

from typing import Any

from hyperv_operator.provisioning.observation import CopyJob
from hyperv_operator.provisioning.planner import COPY_STALL_SECONDS, MAX_COPY_RESTARTS, plan

from .helpers import BASE, LAYOUT, NOW, REF, WORKER_CREATED, cmdlet_names, later, observe, spec, status, vmwp, worker

PID = 4242
JOB = CopyJob("Running", 2 * 2**30, 4 * 2**30, PID, "2025-01-01T11:59:30Z", "2025-01-01T11:59:50Z",
              process_created_at=WORKER_CREATED)
FILES = (BASE, LAYOUT.partial, LAYOUT.copy_status)


def copying(**copy: Any) -> dict[str, Any]:
    return status("Copying", copy={"processId": PID, "processCreatedAt": WORKER_CREATED, **copy})


def test_running_copy_with_live_worker_waits_and_notes_progress() -> None:
    r = plan(spec("Copy"), copying(), observe(files=FILES, job=JOB, process=worker(PID)), NOW, vm=REF, layout=LAYOUT)
    assert r.action is None and r.status["copy"]["percent"] == 50
    assert r.status["copy"]["progressSeenAt"] == "2025-01-01T12:00:00Z"


def test_worker_gone_after_reboot_restarts_the_copy() -> None:
    r = plan(spec("Copy"), copying(), observe(files=FILES, job=JOB, process_checked=True), NOW, vm=REF,
             layout=LAYOUT)
    assert r.action is not None and r.action.kind == "RestartCopy"
    assert cmdlet_names(r.action) == ["Remove-Item"]  # nothing to stop: the worker is gone
    assert r.status["copy"]["restarts"] == 1 and r.status["copy"]["processId"] is None
    assert any(e.reason == "CopyRestarted" and e.type == "Warning" for e in r.events)
    assert "no longer running" in r.status["copy"]["lastRestartReason"]


def test_pid_reused_by_another_process_is_not_our_worker_and_never_stopped() -> None:
    r = plan(spec("Copy"), copying(), observe(files=FILES, job=JOB, process=vmwp(PID)), NOW, vm=REF, layout=LAYOUT)
    assert r.action is not None and r.action.kind == "RestartCopy"
    assert "Stop-Process" not in cmdlet_names(r.action)


def test_hung_worker_is_stopped_then_restarted() -> None:
    mark = f"{JOB.bytes_copied}@{JOB.updated_at}"
    st = copying(progressMark=mark, progressSeenAt="2025-01-01T12:00:00Z")
    obs = observe(files=FILES, job=JOB, process=worker(PID))
    r = plan(spec("Copy"), st, obs, later(COPY_STALL_SECONDS - 1), vm=REF, layout=LAYOUT)
    assert r.action is None  # still within the bound
    r = plan(spec("Copy"), st, obs, later(COPY_STALL_SECONDS + 1), vm=REF, layout=LAYOUT)
    assert r.action is not None and r.action.kind == "RestartCopy"
    assert cmdlet_names(r.action) == ["Stop-Process", "Remove-Item"]
    assert r.action.statements[0].commands[0].parameter("Id") == PID


def test_restarts_are_bounded() -> None:
    r = plan(spec("Copy"), copying(restarts=MAX_COPY_RESTARTS), observe(files=FILES, job=JOB, process_checked=True),
             NOW, vm=REF, layout=LAYOUT)
    assert r.action is None and r.status["phase"] == "Failed"
    stalled = next(c for c in r.status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "CopyWorkerLost" and "gave up after 3 restarts" in stalled["message"]


def test_worker_not_reporting_yet_is_waited_for_while_it_lives() -> None:
    r = plan(spec("Copy"), copying(), observe(files=(BASE,), process=worker(PID)), NOW, vm=REF, layout=LAYOUT)
    assert r.action is None and "waiting for the copy worker" in r.status["message"]


def test_worker_dead_without_status_file_starts_a_new_copy() -> None:
    r = plan(spec("Copy"), copying(), observe(files=(BASE,), process_checked=True), NOW, vm=REF, layout=LAYOUT)
    assert r.action is not None and r.action.kind == "StartCopy"
    assert r.status["copy"]["restarts"] == 1


def test_the_copy_makes_its_folder_only_when_the_host_lacks_it() -> None:
    # Copy: nothing exists yet, the copy's folder is made in the copy's pipeline.
    r = plan(spec("Copy"), copying(processId=None), observe(files=(BASE,)), NOW, vm=REF, layout=LAYOUT)
    assert r.action is not None and r.action.kind == "StartCopy"
    assert cmdlet_names(r.action) == ["New-Item", "<script>"]
    # The folder is there (Quick: New-VM's statement made it): one statement less on the critical path.
    r = plan(spec("Copy"), copying(processId=None), observe(files=(BASE, LAYOUT.vm_dir)), NOW, vm=REF, layout=LAYOUT)
    assert r.action is not None and r.action.kind == "StartCopy"
    assert cmdlet_names(r.action) == ["<script>"]
