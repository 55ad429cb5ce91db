"""Two operator replicas on one kopf peering (as manifests/ deploys them): one acts, one stands by,
and the standby finishes the work when the active one is SIGKILLed in the middle of base copies.

Its own control plane and simulated host: the session's shared operator runs --standalone and would
act on these VMs too. Both replicas run `hyperv-operator run` with the production default priority
(by start time: the older replica acts), authenticated as the operator's ServiceAccount, so the
peering RBAC in manifests/ is exercised as well.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from hyperv_operator.envtest.controlplane import ControlPlane, repo_root, running_control_plane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import (
    BASE_VHD,
    SimulatedHyperV,
    apply_objects,
    ensure_namespace,
    host_objects,
    install_operator_rbac,
    peers,
)
from tests.integration import hostview
from tests.integration.kube import Kube
from tests.integration.test_provisioning import _assert_final_host_state

pytestmark = pytest.mark.integration

NAMESPACE = "hv-standby"
LIFETIME = 5
"""--peering-lifetime here (production: 60). kopf then sends a keep-alive every second
(max(1, lifetime - 5..10 s)), and a standby resumes once the active one's last keep-alive is older
than the lifetime: so the takeover is bounded by about LIFETIME + 1 s plus the restart of the watches."""
BASE_SIZE = 600 * 10**6
"""At the simulator's 75 MB/s, in real time (time scale 1: the operator paces copy polls by the
host's clock), a copy takes 8 s: longer than the takeover, so the standby meets the copies still
running on the host and must wait for them, not start them again."""
VMS = 3
"""Three Copy VMs on a host with two copy slots: two copies run when the active replica dies, the
third waits for a slot."""


def _logged_at(log: str, needle: str) -> float:
    """When the last start's log line containing `needle` was written (the log's wall-clock stamp)."""
    last_start = log.rsplit("===== operator start", 1)[-1]
    line = next(line for line in last_start.splitlines() if needle in line)
    return datetime.strptime(line[1:24], "%Y-%m-%d %H:%M:%S,%f").timestamp()


@dataclass
class Recorder:
    """Every command the simulated host runs, with the test process's monotonic clock."""

    calls: list[tuple[float, str, dict[str, Any], str]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, command: str, params: dict[str, Any], when: str) -> None:
        with self.lock:
            self.calls.append((time.monotonic(), command, params, when))

    def started(self, short: str, needle: str) -> list[tuple[float, str, dict[str, Any], str]]:
        with self.lock:
            return [c for c in self.calls
                    if c[3] == "before" and hostview.command_is(c[1], short) and needle in str(c[2])]

    def first_after(self, t: float) -> float | None:
        with self.lock:
            return next((c[0] for c in self.calls if c[3] == "before" and c[0] > t), None)


@dataclass
class Pair:
    plane: ControlPlane
    sim: SimulatedHyperV
    kube: Kube
    recorder: Recorder
    active: OperatorProcess
    standby: OperatorProcess


def _replica(plane: ControlPlane, logdir: Path, identity: str) -> OperatorProcess:
    return OperatorProcess(plane.operator_kubeconfig, logdir / f"{identity}.log", peering="hyperv-operator",
                           peering_lifetime=LIFETIME, identity=identity)


def _wait(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    with running_control_plane() as plane:
        install_operator_rbac(plane)
        sim = SimulatedHyperV(base_size=BASE_SIZE, guest_write_bytes_per_second=20e3).start()
        recorder = Recorder()
        sim.host.on_command(recorder)
        ensure_namespace(plane, NAMESPACE)
        apply_objects(plane, host_objects(NAMESPACE, "hv01", sim, max_concurrent_copies=2))
        logdir = Path(tempfile.mkdtemp(prefix="hyperv-operator-standby-"))
        active, standby = _replica(plane, logdir, "replica-a"), _replica(plane, logdir, "replica-b")
        try:
            active.start()
            _wait(lambda: "replica-a" in peers(plane), 30, "replica-a's keep-alive")
            # Started later: lower default priority, so it stands by behind replica-a. kopf starts a
            # peering replica paused and resumes it only once the peering shows no live replica of
            # higher priority, so it never acts before it has seen replica-a.
            standby.start()
            _wait(lambda: "replica-b" in peers(plane), 30, "replica-b's keep-alive")
            yield Pair(plane, sim, Kube(plane.kubeconfig), recorder, active, standby)
        finally:
            active.stop()
            standby.stop()
            sim.stop()
            print(f"\nreplica logs: {logdir}")


def test_standby_takes_over_mid_copy_without_duplicate_host_work(pair: Pair) -> None:
    sim, kube, recorder = pair.sim, pair.kube, pair.recorder
    before = peers(pair.plane)
    # The production default (no --priority): the older replica has the higher priority.
    assert before["replica-a"]["priority"] > before["replica-b"]["priority"]
    assert before["replica-a"]["lifetime"] == LIFETIME
    base_before = sim.host.disk_fingerprint(BASE_VHD)

    prefix = f"ha-{uuid.uuid4().hex[:5]}"
    names = [f"{prefix}-{i}" for i in range(VMS)]
    for name in names:
        kube.create_vm(NAMESPACE, name, "Copy")

    def copying() -> list[dict[str, Any]]:
        return [j for j in sim.host.copy_jobs() if prefix in j["Destination"] and j["State"] == "Running"
                and 0 < j["BytesCopied"] < j["BytesTotal"]]

    _wait(lambda: len(copying()) == 2, 60, "two copies running on the host")
    # Only one replica acts: every host round trip so far is the active one's, and the standby
    # never resumed.
    assert "Resuming operations" not in pair.standby.log_text()
    assert pair.standby.winrm_round_trips() == 0
    assert pair.active.winrm_round_trips() > 0
    killed_at = time.monotonic()
    pair.active.kill()
    in_flight = copying()
    assert len(in_flight) == 2, "the kill came after a copy finished: not mid-copy"

    _wait(lambda: recorder.first_after(killed_at) is not None, 60, "the standby's first host command")
    at_takeover = copying()  # within ~0.2 s of the standby's first command
    finals = [kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=120) for name in names]
    first_command = recorder.first_after(killed_at)
    assert first_command is not None
    takeover = first_command - killed_at
    print(f"\ntakeover: first host command from the standby {takeover:.2f} s after SIGKILL "
          f"(--peering-lifetime={LIFETIME})")
    assert takeover <= LIFETIME + 5, takeover
    # The copies the dead replica started were still running when the standby took over: it waited
    # for them instead of starting them again (one StartBackgroundCopy per VM, below).
    started_by_dead = {job["Destination"] for job in in_flight}
    assert started_by_dead & {job["Destination"] for job in at_takeover}, "copies had finished before the takeover"
    assert "Resuming operations" in pair.standby.log_text()
    assert pair.standby.winrm_round_trips() > 0

    for name, final in zip(names, finals, strict=True):
        _assert_final_host_state(sim, final, "Copy")  # exactly one VM tagged with the object's uid
        copies = recorder.started("StartBackgroundCopy", name)
        assert len(copies) == 1, f"{name}: the base was copied {len(copies)} times"
        created = recorder.started("New-VM", name)
        assert len(created) == 1, f"{name}: New-VM ran {len(created)} times"
    assert sim.host.disk_fingerprint(BASE_VHD) == base_before
    # The standby, now active, dropped the dead replica's entry from the peering (kopf's autoclean).
    _wait(lambda: "replica-a" not in peers(pair.plane), 30, "the dead replica's peering entry to be cleaned")


def test_graceful_stop_hands_over_at_once(pair: Pair) -> None:
    """A rolling update: a newer replica joins as the standby, the acting one gets SIGTERM mid-copy."""
    sim, kube, recorder = pair.sim, pair.kube, pair.recorder
    acting = pair.standby if not pair.active.running else pair.active
    assert acting.running
    logdir = acting.log_path.parent
    newer = _replica(pair.plane, logdir, "replica-c")
    newer.start()
    try:
        _wait(lambda: "replica-c" in peers(pair.plane), 30, "replica-c's keep-alive")
        prefix = f"roll-{uuid.uuid4().hex[:5]}"
        names = [f"{prefix}-{i}" for i in range(2)]
        for name in names:
            kube.create_vm(NAMESPACE, name, "Copy")
        _wait(lambda: sum(prefix in j["Destination"] and j["State"] == "Running" and j["BytesCopied"] > 0
                          for j in sim.host.copy_jobs()) == 2, 60, "two copies running on the host")
        assert newer.winrm_round_trips() == 0
        assert "Resuming operations" not in newer.log_text()
        term_at, wall_term_at = time.monotonic(), time.time()
        acting.stop()
        exited_at = time.monotonic()
        finals = [kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=120) for name in names]
        # One replica acts at a time also while handing over: the leaving one finished its host work
        # in flight before it left the peering, and only then did the newer one resume.
        drained = _logged_at(acting.log_text(), "no host work in flight; leaving the peering")
        resumed = _logged_at(newer.log_text(), "Resuming operations")
        drain_took = max(drained - wall_term_at, 0.0)
        print(f"\ngraceful hand-over: old replica drained its host work {drain_took:.2f} s after SIGTERM, "
              f"the new one resumed {resumed - drained:.3f} s after that (the old process exited after "
              f"{exited_at - term_at:.2f} s)")
        assert drained <= resumed
        # Far below the lifetime: the leaving replica removed its keep-alive, nobody waited for it to expire.
        assert resumed - drained < 1.0
        assert newer.winrm_round_trips() > 0
        for name, final in zip(names, finals, strict=True):
            _assert_final_host_state(sim, final, "Copy")
            assert len(recorder.started("StartBackgroundCopy", name)) == 1
            assert len(recorder.started("New-VM", name)) == 1
    finally:
        newer.stop()


def test_a_replica_without_its_peering_object_says_so_and_stays_paused(pair: Pair) -> None:
    # Runs last in this module: the peering object is deleted (as if its first apply had failed).
    peering_file = repo_root() / "manifests" / "peering" / "clusterkopfpeering.yaml"
    pair.plane.kubectl("delete", "-f", str(peering_file))
    lost = _replica(pair.plane, pair.active.log_path.parent, "replica-lost")
    lost.start()
    try:
        _wait(lambda: "ClusterKopfPeering 'hyperv-operator' does not exist" in lost.log_text(), 30,
              "the missing peering object to be reported")
        time.sleep(2)
        assert lost.winrm_round_trips() == 0
        assert "Resuming operations" not in lost.log_text()
        # Once the object exists, kopf sees it and the replica (alone now) acts.
        pair.plane.kubectl("apply", "--server-side", "-f", str(peering_file))
        _wait(lambda: "Resuming operations" in lost.log_text(), 30, "the replica to resume")
    finally:
        lost.stop()
