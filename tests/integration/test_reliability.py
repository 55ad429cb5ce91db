"""Limits and outcomes that survive restarts (issue 10), against the real API server and the operator
as a process: copy slots held in the host's status across SIGKILLs and two operator processes, and a
SIGTERM that writes nothing."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from hyperv_operator.conditions import parse_timestamp
from hyperv_operator.envtest.controlplane import ControlPlane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV, apply_objects, host_objects
from tests.integration import hostview
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

ONE_SLOT_HOST = "hv-oneslot"


@pytest.fixture(scope="module")
def slow_sim() -> Iterator[SimulatedHyperV]:
    """Its own host, so other tests' copies do not count: a 9 GB copy lasts ~2 s of wall time here
    (the operator's first look at a copy is 2 s after its start; at x60 it is then done)."""
    simulated = SimulatedHyperV(time_scale=60.0, guest_write_bytes_per_second=20e3).start()
    yield simulated
    simulated.stop()


@pytest.fixture(scope="module")
def one_slot_host(control_plane: ControlPlane, slow_sim: SimulatedHyperV, operator: OperatorProcess) -> str:
    apply_objects(control_plane, host_objects(NAMESPACE, ONE_SLOT_HOST, slow_sim, max_concurrent_copies=1))
    return ONE_SLOT_HOST


class CopySampler:
    """Counts the copies running on the simulated host every few milliseconds."""

    def __init__(self, sim: SimulatedHyperV) -> None:
        self.sim = sim
        self.samples = 0
        self.overlaps = 0
        self.max_running = 0
        self.overlap_seen: list[list[str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            running = [j["Destination"] for j in self.sim.host.copy_jobs() if j["State"] == "Running"]
            self.samples += 1
            self.max_running = max(self.max_running, len(running))
            if len(running) > 1:
                self.overlaps += 1
                self.overlap_seen.append(running)
            time.sleep(0.02)

    def __enter__(self) -> CopySampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _copy_running(sim: SimulatedHyperV, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if any(j["State"] == "Running" and j["BytesCopied"] > 0 for j in sim.host.copy_jobs()):
            return True
        time.sleep(0.05)
    return False


def _all_provisioned(kube: Kube, names: list[str]) -> bool:
    return all(((kube.get_vm(NAMESPACE, n) or {}).get("status") or {}).get("phase") == "Provisioned" for n in names)


def _queue_positions(kube: Kube, names: list[str]) -> set[int]:
    seen: set[int] = set()
    for n in names:
        position = (((kube.get_vm(NAMESPACE, n) or {}).get("status") or {}).get("copy") or {}).get("queuePosition")
        if position:
            seen.add(int(position))
    return seen


@pytest.mark.timeout(600)
def test_kills_and_two_processes_never_run_two_copies_on_a_one_slot_host(
    slow_sim: SimulatedHyperV, one_slot_host: str, kube: Kube, running_operator: OperatorProcess,
    tmp_path: Path,
) -> None:
    rng = random.Random(10)
    tag = uuid.uuid4().hex[:5]
    kills = 0
    positions: set[int] = set()
    second = OperatorProcess(running_operator.kubeconfig, tmp_path / "second-operator.log",
                             drift_interval=running_operator.drift_interval,
                             host_probe_interval=running_operator.host_probe_interval, env=running_operator.env)
    with CopySampler(slow_sim) as sampler:
        # Phase 1: one operator, killed while a copy runs, seven VMs queued behind one slot.
        first_batch = [f"slot-{tag}-a{i}" for i in range(7)]
        for name in first_batch:
            kube.create_vm(NAMESPACE, name, "Copy", host=one_slot_host)
        while not _all_provisioned(kube, first_batch) and kills < 10:
            if not _copy_running(slow_sim, timeout=30):
                break
            positions |= _queue_positions(kube, first_batch)
            time.sleep(rng.uniform(0.0, 1.2))  # anywhere inside the running copy
            running_operator.kill()
            kills += 1
            time.sleep(rng.uniform(0.0, 0.5))
            running_operator.start()
        # Phase 2: two operator processes at once on the same VMs, each killed in turn.
        second.start()
        try:
            second_batch = [f"slot-{tag}-b{i}" for i in range(8)]
            for name in second_batch:
                kube.create_vm(NAMESPACE, name, "Copy", host=one_slot_host)
            victims = [running_operator, second]
            while not _all_provisioned(kube, second_batch) and kills < 20:
                if not _copy_running(slow_sim, timeout=30):
                    break
                positions |= _queue_positions(kube, second_batch)
                time.sleep(rng.uniform(0.0, 1.2))
                victim = victims[kills % 2]
                victim.kill()
                kills += 1
                time.sleep(rng.uniform(0.0, 0.5))
                victim.start()
            for name in [*first_batch, *second_batch]:
                kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=240)
        finally:
            second.stop()
            print(f"\nsecond operator log: {second.log_path}")
    print(f"\nkill test: {kills} kills, {sampler.samples} samples, {sampler.overlaps} overlapping samples, "
          f"max running copies {sampler.max_running}")
    assert kills >= 8  # each kill lands while a copy runs; how many fit depends on the copies' timing
    assert sampler.overlaps == 0, f"copies running at once: {sampler.overlap_seen[:3]}"
    assert sampler.max_running == 1
    assert positions, "queued VMs show their place in line"
    host = kube.get_host(NAMESPACE, one_slot_host)
    assert (host.get("status") or {}).get("copySlots") in ([], None)  # every slot given back
    assert (host.get("status") or {}).get("copyQueue") in ([], None)


def _ready_vms_on_one_connection(control_plane: ControlPlane, sim: SimulatedHyperV, kube: Kube,
                                 tag: str) -> dict[str, str]:
    """Two Ready VMs on a host with ONE WinRM connection for VM work: while one drift check holds it,
    the other waits for it in the client. Returns {name: vmId}."""
    host = f"hv-oneconn-{tag}"
    objects = host_objects(NAMESPACE, host, sim)
    objects[-1]["spec"]["maxConnections"] = 1
    apply_objects(control_plane, objects)
    names = [f"term-{tag}-{i}" for i in range(2)]
    for name in names:
        kube.create_vm(NAMESPACE, name, "Differencing", host=host)
    ids = {}
    for name in names:
        # Ready (the guest's heartbeat seen) and no change handler under way: from here on, only the
        # drift timers talk to the host about these VMs. (kopf cancels change handlers on stop, before
        # they write anything: the stop must meet drift checks.)
        vm = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Ready") or {}).get("status") == "True"
                          and "hyperv-operator.io/reconcile" not in (o["metadata"].get("annotations") or {}),
                          timeout=90, what="Ready with no change handler under way")
        ids[name] = vm["status"]["vmId"]
    time.sleep(1.0)  # let the last status writes land
    return ids


def _sigterm_with_drift_in_flight(sim: SimulatedHyperV, process: OperatorProcess, release_after: float,
                                  vm_ids: Iterable[str]) -> tuple[float, list[tuple[float, str]]]:
    """Stop `process` while one drift round trip is held on the host and the other VM's drift check
    waits behind it for the one connection; the host answers `release_after` s after the SIGTERM
    (inside kopf's 5 s before it cancels leftover timers, so whatever the stop does to these checks
    reaches the API server). Returns the SIGTERM's time and every Get-VM the host ran (time, params)."""
    release, reached = threading.Event(), threading.Event()
    seen: list[tuple[float, str]] = []
    hook = hostview.CommandHook()
    sim.host.on_command(hook)

    def record(command: str, params: dict[str, Any], when: str) -> None:
        if when == "before" and hostview.command_is(command, "Get-VM"):
            seen.append((time.monotonic(), str(params)))

    hook.set(record)
    # A drift check's round trip reads the VM with Get-VM -Id: the next one of these VMs is held on the
    # host (only theirs: other VMs on the same host run on shells of their own, as on Windows).
    ours = {v.lower() for v in vm_ids}
    sim.host.hold("Get-VM", release, reached=reached, timeout=60,
                  when=lambda params: str(params.get("Id") or "").lower() in ours)
    try:
        assert reached.wait(timeout=process.drift_interval * 3), "no drift check reached the host"
        # Every other VM's drift timer fires within one interval and queues for the connection.
        time.sleep(process.drift_interval + 1.0)
        stopped_at = time.monotonic()
        threading.Timer(release_after, release.set).start()
        process.stop(timeout=40)
    finally:
        release.set()
        hook.clear()
    return stopped_at, seen


def _assert_ready_as_before(kube: Kube, before: dict[str, dict[str, Any]]) -> None:
    for name, status_before in before.items():
        vm = kube.get_vm(NAMESPACE, name) or {}
        assert condition(vm, "Ready") == condition({"status": status_before}, "Ready"), f"{name}: {vm.get('status')}"
        for word in ("closed", "replaced"):
            assert word not in str(vm["status"].get("message")) and word not in str(vm["status"].get("lastError"))
        assert vm["status"].get("lastError") == status_before.get("lastError")
        assert vm["status"].get("retry") == status_before.get("retry")


def test_sigterm_lets_the_drift_checks_under_way_finish_and_leaves_every_ready_condition_as_it_was(
    control_plane: ControlPlane, slow_sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess,
) -> None:
    """The steps running at SIGTERM (one on the host, one waiting for the connection) finish their
    host commands before the connections close (--shutdown-grace, 20 s): both reach the host after
    the SIGTERM. Closing at once instead leaves the waiting one to meet a closed client."""
    ids = _ready_vms_on_one_connection(control_plane, slow_sim, kube, uuid.uuid4().hex[:5])
    before = {n: dict((kube.get_vm(NAMESPACE, n) or {})["status"]) for n in ids}
    stopped_at, seen = _sigterm_with_drift_in_flight(slow_sim, running_operator, release_after=1.0,
                                                     vm_ids=ids.values())
    _assert_ready_as_before(kube, before)
    after_stop = [params for at, params in seen if at > stopped_at]
    for name, vm_id in ids.items():
        assert any(vm_id in params for params in after_stop), \
            f"{name}: its drift check under way at SIGTERM never reached the host; Get-VM after it: {after_stop}"


def test_sigterm_past_the_grace_writes_nothing_on_the_drift_checks_it_cuts_short(
    control_plane: ControlPlane, slow_sim: SimulatedHyperV, kube: Kube, operator: OperatorProcess, tmp_path: Path,
) -> None:
    """With a 0.5 s grace the connections close while a drift round trip is held on the host and
    another check waits for the connection: that one meets the closed client and must write nothing
    (before: Ready=False "the WinRM client ... is closed" on healthy VMs)."""
    operator.stop()
    short = OperatorProcess(operator.kubeconfig, tmp_path / "operator.log", drift_interval=operator.drift_interval,
                            host_probe_interval=operator.host_probe_interval, env=operator.env,
                            extra_args=("--shutdown-grace", "0.5"))
    short.start()
    try:
        ids = _ready_vms_on_one_connection(control_plane, slow_sim, kube, uuid.uuid4().hex[:5])
        before = {n: dict((kube.get_vm(NAMESPACE, n) or {})["status"]) for n in ids}
        _sigterm_with_drift_in_flight(slow_sim, short, release_after=2.0, vm_ids=ids.values())
        _assert_ready_as_before(kube, before)
    finally:
        short.stop()
        print(f"\noperator log (0.5 s grace): {short.log_path}")
        operator.start()


@pytest.mark.timeout(400)
def test_a_disk_full_copy_recovers_once_space_is_freed(
    slow_sim: SimulatedHyperV, one_slot_host: str, kube: Kube, running_operator: OperatorProcess,
) -> None:
    name = f"diskfull-{uuid.uuid4().hex[:5]}"
    slow_sim.host.set_free_bytes(2 * 10**9)  # less than the 9 GB base
    try:
        kube.create_vm(NAMESPACE, name, "Copy", host=one_slot_host)
        failed = kube.wait_vm(NAMESPACE, name,
                              lambda o: bool(((o.get("status") or {}).get("copy") or {}).get("failures")),
                              timeout=120, what="a failed copy attempt")
        status = failed["status"]
        assert status["phase"] == "Copying" and "attempt 1 of" in status["message"], status
        assert "disk" in status["message"].lower()
    finally:
        slow_sim.host.set_free_bytes(10 * 10**12)
    final = kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=180)
    assert final["status"]["copy"]["percent"] == 100
    assert not [f for f in hostview.file_paths(slow_sim) if name in f and f.endswith((".partial", ".copy.json"))]


@pytest.mark.timeout(400)
def test_a_delete_on_a_vanished_host_stalls_with_the_reason_and_completes_with_the_opt_in(
    control_plane: ControlPlane, kube: Kube, operator: OperatorProcess, tmp_path: Path,
) -> None:
    gone = SimulatedHyperV(time_scale=60.0, guest_write_bytes_per_second=20e3).start()
    apply_objects(control_plane, host_objects(NAMESPACE, "hv-vanishing", gone))
    # The shared operator makes way for one that reports a stalled delete after 5 s (default 10 min).
    operator.stop()
    quick = OperatorProcess(operator.kubeconfig, tmp_path / "operator.log", drift_interval=operator.drift_interval,
                            host_probe_interval=operator.host_probe_interval, env=operator.env,
                            extra_args=("--delete-stall-after", "5"))
    quick.start()
    name = f"vanish-{uuid.uuid4().hex[:5]}"
    try:
        kube.create_vm(NAMESPACE, name, "Differencing", host="hv-vanishing")
        vm_id = kube.wait_phase(NAMESPACE, name, "Provisioned")["status"]["vmId"]
        gone.stop()  # the host is gone for good
        kube.delete_vm(NAMESPACE, name)

        def stalled(obj: dict[str, Any]) -> bool:
            c = condition(obj, "Stalled") or {}
            return c.get("status") == "True" and c.get("reason") == "DeleteHostUnreachable"

        obj = kube.wait_vm(NAMESPACE, name, stalled, timeout=120, what="Stalled DeleteHostUnreachable")
        assert "abandon-host-resources" in obj["status"]["message"]
        # The deletion has begun though it never reached the host (it said Provisioned, Ready=True).
        assert obj["status"]["phase"] == "Deleting", obj["status"]
        assert (condition(obj, "Ready") or {}).get("status") == "False"
        assert obj["status"]["retry"]["attempts"] >= 2

        def next_retry_in(o: dict[str, Any]) -> float:
            at = parse_timestamp(o["status"]["retry"]["nextRetryAt"])
            return (at - datetime.now(UTC)).total_seconds() if at else 0.0

        # The deletion's backoff grows; annotate while its next retry is far away: the opt-in acts at
        # once (the annotation is a change kopf sees, and wakes the sleeping finalizer), not then.
        obj = kube.wait_vm(NAMESPACE, name, lambda o: next_retry_in(o) > 12, timeout=120,
                           what="a next retry more than 12 s away")
        assert kube.get_vm(NAMESPACE, name) is not None  # never silently
        kube.patch_vm(NAMESPACE, name,
                      {"metadata": {"annotations": {"hyperv-operator.io/abandon-host-resources": "true"}}})
        kube.wait_gone(NAMESPACE, name, timeout=8)
        abandoned = [e for e in kube.events_for(NAMESPACE, name) if e.reason == "HostResourcesAbandoned"]
        assert abandoned and abandoned[0].type == "Warning" and vm_id in abandoned[0].message
    finally:
        quick.stop()
        print(f"\noperator log (stall after 5 s): {quick.log_path}")
        operator.start()


@pytest.mark.timeout(300)
def test_a_copy_vm_whose_base_appears_later_runs_to_provisioned(
    slow_sim: SimulatedHyperV, one_slot_host: str, kube: Kube, running_operator: OperatorProcess,
) -> None:
    """The drift timer re-checks the Failed VM and starts its copy; the VM is then in Copying with no
    change handler under way: the timer must carry it on, not leave it there."""
    name = f"late-{uuid.uuid4().hex[:5]}"
    late = f"\\\\FS\\VMSHARE\\LATE-{name.upper()}.VHDX"
    kube.create_vm(NAMESPACE, name, "Copy", host=one_slot_host, baseVhd=late)
    failed = kube.wait_phase(NAMESPACE, name, "Failed")
    assert (condition(failed, "Stalled") or {}).get("reason") == "BaseDiskNotFound"
    slow_sim.host.add_base_disk(late, 2 * 1024**3, acl_read_only=True)
    kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=120)


@pytest.mark.timeout(300)
def test_a_vm_waiting_in_line_for_a_copy_slot_costs_no_writes_while_it_waits(
    slow_sim: SimulatedHyperV, one_slot_host: str, kube: Kube, running_operator: OperatorProcess,
) -> None:
    """Issue 9: a VM in line waits in the operator, without polling kopf retries (each one a progress
    annotation and a "touch" patch every 2 s), and takes the slot as soon as it frees: from apply to
    Provisioned behind two copies it costs at most the writes of a VM that never waited."""
    import kubernetes

    from hyperv_operator import api

    tag = uuid.uuid4().hex[:5]
    ahead = [f"line-{tag}-a", f"line-{tag}-b"]
    last = f"line-{tag}-c"
    listing: Any = kube.objects.list_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.VM_PLURAL)
    for name in ahead:
        kube.create_vm(NAMESPACE, name, "Copy", host=one_slot_host, readiness="Running")
    # The handlers of VMs created together run in any order: create the last one only once one of the
    # two ahead is in line behind the other, so it is behind both whichever ran first.
    deadline = time.monotonic() + 60
    while not any(((((kube.get_vm(NAMESPACE, n) or {}).get("status") or {}).get("copy") or {}).get("queued"))
                  for n in ahead):
        assert time.monotonic() < deadline, "neither VM ahead queued behind the other on a one-slot host"
        time.sleep(0.1)
    kube.create_vm(NAMESPACE, last, "Copy", host=one_slot_host, readiness="Running")
    versions: list[dict[str, Any]] = []
    watch: Any = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
    for event in watch.stream(kube.objects.list_namespaced_custom_object, api.GROUP, api.VERSION, NAMESPACE,
                              api.VM_PLURAL, field_selector=f"metadata.name={last}",
                              resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=240):
        obj = event["object"]
        versions.append(obj)
        reconciling = condition(obj, "Reconciling")
        if (obj.get("status") or {}).get("phase") == "Provisioned" and reconciling and reconciling["status"] == "False":
            watch.stop()
    queued = [v for v in versions if ((v.get("status") or {}).get("copy") or {}).get("queued")]
    writes = len(versions) - 1  # the first is the create
    print(f"\nVM behind two copies: {writes} writes from apply to Provisioned, {len(queued)} while in line")
    assert versions[-1]["status"]["phase"] == "Provisioned"
    assert queued, "the VM waited in line (behind two 2-second copies on a one-slot host)"
    assert len(queued) <= 2, [sorted((v["metadata"].get("annotations") or {}).keys()) for v in queued]
    assert writes <= 10
    for name in [*ahead, last]:
        kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=120)


def test_an_operator_whose_port_was_taken_meanwhile_starts_on_new_ports(
    running_operator: OperatorProcess, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Harness: a port found free can be taken before the operator binds it (another process's
    connection draws it as its source port); the start is tried again on new ports."""
    import socket

    from hyperv_operator.envtest import operator_process as op_module

    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    real = op_module.free_port
    handed: list[int] = []

    def first_taken() -> int:
        port = taken.getsockname()[1] if not handed else real()
        handed.append(port)
        return port

    monkeypatch.setattr(op_module, "free_port", first_taken)
    other = OperatorProcess(running_operator.kubeconfig, tmp_path / "port-taken.log",
                            drift_interval=running_operator.drift_interval,
                            host_probe_interval=running_operator.host_probe_interval, env=running_operator.env,
                            peering=None)
    try:
        other.start()
        assert other.starts == 2 and other.metrics_port != taken.getsockname()[1]
        assert "Address already in use" in other.log_text()
    finally:
        other.stop()
        taken.close()
