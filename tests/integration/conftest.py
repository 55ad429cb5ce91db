"""The running stack for operator integration tests: control plane + RBAC + simulated host over
WinRM/HTTPS + the operator as a separate process authenticated as its ServiceAccount."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from hyperv_operator.envtest.controlplane import ControlPlane
from hyperv_operator.envtest.kdc import KDC
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import (
    SimulatedHyperV,
    apply_objects,
    ensure_namespace,
    host_objects,
    install_operator_rbac,
)
from tests.integration import hostview
from tests.integration.kube import Kube

NAMESPACE = "hv-test"
DRIFT_INTERVAL = 5.0
"""The shared operator's drift timer. Every settled VM of the session is re-observed this often, and
dozens stay for the whole session: at 1.5 s that background load slowed the later tests (measured on
tests/integration/test_crash_and_delete.py: 392 s at 1.5 s, 262 s at 5 s on 2 shared cores)."""
TIME_SCALE = 60.0
"""Simulated seconds per wall second: the 9 GB base copies (120 s of host time) in ~2 s of wall time."""


@pytest.fixture(scope="session")
def sim() -> Iterator[SimulatedHyperV]:
    # Dozens of VMs stay running for the whole session on a clock running x60: guests that write
    # 1.5 MB/s each would fill a 2 TB share within the run, so they write less on a bigger share.
    simulated = SimulatedHyperV(
        time_scale=TIME_SCALE, guest_write_bytes_per_second=20e3, free_bytes=20 * 10**12
    ).start()
    yield simulated
    simulated.stop()


@pytest.fixture(scope="session")
def kube(control_plane: ControlPlane) -> Kube:
    return Kube(control_plane.kubeconfig)


@pytest.fixture(scope="session")
def operator(
    control_plane: ControlPlane, sim: SimulatedHyperV, kdc: KDC, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    install_operator_rbac(control_plane)
    ensure_namespace(control_plane, NAMESPACE)
    apply_objects(control_plane, host_objects(NAMESPACE, "hv01", sim))
    # Outside pytest's rotating basetemp, so the log of a failed run survives later runs.
    log = Path(tempfile.mkdtemp(prefix="hyperv-operator-it-")) / "operator.log"
    # The operator finds the test realm's KDC through KRB5_CONFIG, as a pod would through /etc/krb5.conf.
    process = OperatorProcess(
        control_plane.operator_kubeconfig, log, drift_interval=DRIFT_INTERVAL, host_probe_interval=3.0, env=kdc.env
    )
    process.start()
    yield process
    process.stop()
    print(f"\noperator log: {log} ({process.starts} starts)")
    # The RBAC proof over everything this stack's operator did in the session. With parallel workers
    # (`make test`) every worker has its own stack, and test_zz_gitops_and_health.py sees only the
    # log of its worker's operator up to that point: checking each log at the end keeps the proof
    # whole. A failure here is reported as an error of the worker's last test.
    forbidden = [line for line in process.log_text().splitlines() if "forbidden" in line.lower()]
    assert not forbidden, f"the operator hit Forbidden with the manifests' RBAC ({log}): {forbidden[:5]}"


@pytest.fixture
def running_operator(operator: OperatorProcess) -> OperatorProcess:
    """The shared operator, restarted first if a previous test killed it."""
    if not operator.running:
        operator.start()
    return operator


@pytest.fixture(scope="session")
def _session_command_hook(sim: SimulatedHyperV) -> hostview.CommandHook:
    hook = hostview.CommandHook()
    sim.host.on_command(hook)
    return hook


@pytest.fixture
def command_hook(_session_command_hook: hostview.CommandHook) -> Iterator[hostview.CommandHook]:
    yield _session_command_hook
    _session_command_hook.clear()


@pytest.fixture(scope="session")
def kdc() -> Iterator[KDC]:
    """A throwaway MIT Kerberos realm on loopback (krb5kdc from Debian's krb5-kdc), started on first use:
    the operator's user principal (password and keytab) and the simulated host's HTTP/localhost keytab."""
    realm = KDC(realm="HV.TEST").start()
    realm.add_principal("hvoperator", password="Kerb-Passw0rd-it", keytab=True)
    realm.add_service("HTTP/localhost")
    print(f"\nKDC started in {realm.startup_seconds:.2f}s")
    yield realm
    realm.stop()
