"""The background copy as Windows runs it: Win32_Process.Create, the worker process and its identity,
PID reuse after a reboot, Get-CimInstance's strictness, and copy offload."""

from __future__ import annotations

import json
from typing import Any

from hyperv_operator.hyperv import cmdlets as c
from hyperv_operator.hyperv import scripts
from hyperv_operator.hyperv.commands import cmd, pipe
from hyperv_operator.provisioning.observation import is_copy_worker, parse_process

Sim = Any
SHARE = "\\\\FS\\VMSHARE"
BASE = SHARE + "\\BASE.VHDX"
BASE_SIZE = 9 * 10**9
VM_ROOT = SHARE + "\\VMs"
GiB = 1024**3


def start(sim: Sim, dest: str, source: str = BASE) -> Any:
    return sim.one(scripts.start_background_copy(source, dest, dest + ".partial", dest + ".copy.json"))


def status_of(sim: Sim, dest: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(sim.one(c.read_text_file(dest + ".copy.json")).value)
    return doc


def test_failed_create_leaves_no_status_file(sim: Sim) -> None:
    """Create returning 9 (a bare powershell.exe, ansible/ansible#70655) must not leave a 'Running'
    status behind: the starter writes the status only after Create succeeded."""
    dest = VM_ROOT + "\\VM.vhdx"
    sim.host.fail_process_create(9)
    err = sim.fails(scripts.start_background_copy(BASE, dest, dest + ".partial", dest + ".copy.json"))
    assert "Win32_Process.Create failed with code 9" in err.message
    assert sim.one(c.test_path(dest + ".copy.json")).value is False
    assert not [p for p in sim.host.processes() if p["Name"] == "powershell.exe"]


def test_worker_process_is_identified_by_command_line_and_creation_time(sim: Sim) -> None:
    dest = VM_ROOT + "\\VM.vhdx"
    out = start(sim, dest)
    pid = int(out["ProcessId"])
    [proc] = sim.run(c.get_process(pid))
    info = parse_process(proc)
    assert info.name == "powershell.exe"
    assert info.command_line.startswith('"C:\\Windows\\System32\\WindowsPowerShell\\v1.0\\powershell.exe" ')
    assert is_copy_worker(info, str(out["ProcessCreatedAt"]))
    assert is_copy_worker(info, status_of(sim, dest)["processCreatedAt"])
    assert not is_copy_worker(info, "2020-01-01T00:00:00Z")  # same PID, another process


def test_get_cim_instance_is_strict(sim: Sim) -> None:
    assert sim.run(c.get_process(99999)) == []  # no such process: no output, no error
    bad_class = pipe(cmd("CimCmdlets\\Get-CimInstance", ClassName="Win32_Service"))
    assert "0x80041010" in sim.fails(bad_class).fq_error_id
    bad_filter = pipe(cmd("CimCmdlets\\Get-CimInstance", ClassName="Win32_Process", Filter="Name = 'x'"))
    assert "0x80041017" in sim.fails(bad_filter).fq_error_id


def test_an_unknown_worker_text_is_refused(sim: Sim) -> None:
    dest = VM_ROOT + "\\VM.vhdx"
    statement = scripts.start_background_copy(BASE, dest, dest + ".p", dest + ".s")
    command = statement.commands[0]
    params = tuple((k, "Write-Output hi" if k == "Worker" else v) for k, v in command.parameters)
    forged = pipe(type(command)(command.name, params, is_script=True))
    assert sim.fails(forged).fq_error_id == "WorkerNotRecognized"


def test_reboot_ends_the_worker_and_its_pid_goes_to_a_vm_worker(sim: Sim) -> None:
    dest = VM_ROOT + "\\VM.vhdx"
    pid = int(start(sim, dest)["ProcessId"])
    created = status_of(sim, dest)["processCreatedAt"]
    sim.wait(30.5)
    sim.host.reboot()
    sim.wait(100)
    frozen = status_of(sim, dest)
    assert frozen["state"] == "Running" and frozen["bytesCopied"] == 30 * 75_000_000  # stale forever
    child = SHARE + "\\other.vhdx"
    sim.run(c.new_differencing_vhd(child, BASE))
    vm_id = str(sim.one(c.new_vm("other", VM_ROOT, child, GiB, 2, None))["Id"])
    sim.run(c.start_vm(vm_id))
    [proc] = sim.run(c.get_process(pid))
    info = parse_process(proc)
    assert info.name == "vmwp.exe"  # the PID now belongs to another VM's worker process
    assert not is_copy_worker(info, created)


def test_copy_offload_moves_no_bytes_through_the_host(make_sim: Any) -> None:
    sim = make_sim(offload_bytes_per_second=300e6)
    sim.host.enable_copy_offload(SHARE)
    sim.host.add_folder("C:\\Local")
    offloaded, local = VM_ROOT + "\\A.vhdx", "C:\\Local\\B.vhdx"
    start(sim, offloaded)
    start(sim, local)
    sim.wait(31)
    assert status_of(sim, offloaded)["state"] == "Completed"  # 9 GB at 300 MB/s: 30 s
    assert status_of(sim, local)["state"] == "Running"  # 75 MB/s through the host
    jobs = {j["Destination"]: j for j in sim.host.copy_jobs()}
    assert jobs[offloaded]["Offloaded"] is True and jobs[offloaded]["HostBytes"] == 0
    assert jobs[local]["Offloaded"] is False and jobs[local]["HostBytes"] == 31 * 75_000_000
    assert sim.host.disk_fingerprint(offloaded) == sim.host.disk_fingerprint(BASE)


def test_the_old_start_script_got_9_and_left_a_stale_running_status(sim: Sim) -> None:
    """What the start script before the fidelity pass did on Windows: status "Running" written, then
    Create of a bare powershell.exe returned 9; the stale status made every later step think a copy ran."""
    from .legacy_scripts import OLD_START_BACKGROUND_COPY

    dest = VM_ROOT + "\\VM.vhdx"
    old = scripts.start_background_copy(BASE, dest, dest + ".partial", dest + ".copy.json")
    command = old.commands[0]
    legacy = pipe(type(command)(OLD_START_BACKGROUND_COPY, command.parameters, is_script=True))
    assert "code 9" in sim.fails(legacy).message
    assert status_of(sim, dest)["state"] == "Running"  # stale: no process exists
    assert not [p for p in sim.host.processes() if p["Name"] == "powershell.exe"]
    # The current script, same situation (Create returns 9): no status file at all.
    other = VM_ROOT + "\\VM2.vhdx"
    sim.host.fail_process_create(9)
    sim.fails(scripts.start_background_copy(BASE, other, other + ".partial", other + ".copy.json"))
    assert sim.one(c.test_path(other + ".copy.json")).value is False


def test_a_start_script_whose_powershell_path_names_no_file_gets_9(sim: Sim, monkeypatch: Any) -> None:
    """Windows runs the start script's text: a `$exe` path that names no file (here a vertical tab where
    `\\v1.0` belongs, as the script once had: Python's escape in the source file) makes
    Win32_Process.Create return 9 and the copy never starts. The simulator judges the path in the
    text it was sent, not only the script's identity."""
    broken = scripts.START_BACKGROUND_COPY.replace("WindowsPowerShell\\v1.0", "WindowsPowerShell\x0b1.0")
    assert broken != scripts.START_BACKGROUND_COPY
    monkeypatch.setitem(scripts.SCRIPT_IDS, scripts._script_id(broken), "StartBackgroundCopy")
    dest = VM_ROOT + "\\VM.vhdx"
    command = scripts.start_background_copy(BASE, dest, dest + ".partial", dest + ".copy.json").commands[0]
    err = sim.fails(pipe(type(command)(broken, command.parameters, is_script=True)))
    assert "Win32_Process.Create failed with code 9" in err.message
    assert sim.one(c.test_path(dest + ".copy.json")).value is False
    start(sim, dest)  # the script as shipped starts its worker
    assert [p for p in sim.host.processes() if p["Name"] == "powershell.exe"]


def start_worker(sim: Sim, dest: str, worker: str) -> Any:
    """The current start script, carrying `worker` as its -Worker text."""
    statement = scripts.start_background_copy(BASE, dest, dest + ".partial", dest + ".copy.json")
    command = statement.commands[0]
    params = tuple((k, worker if k == "Worker" else v) for k, v in command.parameters)
    return sim.one(pipe(type(command)(command.name, params, is_script=True)))


def job_state(sim: Sim, dest: str) -> str:
    return str({j["Destination"]: j for j in sim.host.copy_jobs()}[dest]["State"])


def test_old_worker_aborts_when_a_reader_holds_the_status_file_through_a_progress_write(sim: Sim) -> None:
    """Windows PowerShell 5.1 `Move-Item -Force` deletes the old status, then moves; Get-Content holds
    it without FileShare.Delete, so the delete throws and ErrorActionPreference Stop ends the copy."""
    from .legacy_scripts import OLD_COPY_WORKER

    dest = VM_ROOT + "\\OLD.vhdx"
    start_worker(sim, dest, OLD_COPY_WORKER)
    sim.wait(10.5)
    sim.host.coincide_next_status_read("read-first")
    assert status_of(sim, dest)["bytesCopied"] == 10 * 75_000_000  # the read itself succeeds
    sim.wait(1)  # the progress write at 11 s meets the open reader
    failed = status_of(sim, dest)
    assert failed["state"] == "Failed" and job_state(sim, dest) == "Failed"
    assert failed["error"] == (f"The process cannot access the file '{dest}.copy.json' because it is being used "
                               "by another process.")
    sim.wait(200)
    assert sim.one(c.test_path(dest)).value is False  # the copy never finished


def test_current_worker_skips_a_progress_write_a_reader_blocks_and_completes(sim: Sim) -> None:
    dest = VM_ROOT + "\\NEW.vhdx"
    start_worker(sim, dest, scripts.COPY_WORKER)
    sim.wait(10.5)
    sim.host.coincide_next_status_read("read-first")
    assert status_of(sim, dest)["bytesCopied"] == 10 * 75_000_000
    sim.wait(1)
    skipped = status_of(sim, dest)  # File.Replace failed at 11 s: that write is skipped, the file stays
    assert skipped["state"] == "Running" and skipped["bytesCopied"] == 10 * 75_000_000
    sim.wait(1)
    assert status_of(sim, dest)["bytesCopied"] == 12 * 75_000_000
    sim.wait(200)
    assert status_of(sim, dest)["state"] == "Completed" and job_state(sim, dest) == "Completed"
    assert sim.host.disk_fingerprint(dest) == sim.host.disk_fingerprint(BASE)


def test_old_worker_status_file_is_missing_between_its_delete_and_move(sim: Sim) -> None:
    from .legacy_scripts import OLD_COPY_WORKER

    old, new = VM_ROOT + "\\OLD.vhdx", VM_ROOT + "\\NEW.vhdx"
    start_worker(sim, old, OLD_COPY_WORKER)
    start_worker(sim, new, scripts.COPY_WORKER)
    sim.wait(5.5)
    sim.host.coincide_next_status_read("write-first")
    assert sim.one(c.test_path(old + ".copy.json")).value is False
    assert sim.fails(c.read_text_file(old + ".copy.json")).category == "ObjectNotFound"
    sim.wait(1)  # the move completed
    assert status_of(sim, old)["state"] == "Running"
    # File.Replace swaps in one operation: a reader arriving during the write finds the file.
    sim.host.coincide_next_status_read("write-first")
    assert sim.one(c.test_path(new + ".copy.json")).value is True
    assert status_of(sim, new)["state"] == "Running"
