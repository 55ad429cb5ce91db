"""HyperVHost probing end to end: the shared host is Reachable with its facts; a wrong password, a
wrong CA and a closed port each give Reachable=False with a message naming the cause; a VM on a host
that rejects the credentials does not provision and says why. No secret ever reaches the log."""

from __future__ import annotations

import secrets
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hyperv_operator.envtest.controlplane import ControlPlane, free_port
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV, apply_objects, host_objects
from hyperv_operator.simulator.tls import generate_tls
from tests.integration import hostview
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

pytestmark = pytest.mark.integration


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _wait_host(kube: Kube, name: str, predicate: Callable[[dict[str, Any]], bool], *, what: str,
               timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = kube.get_host(NAMESPACE, name)
        if predicate(obj):
            return obj
        time.sleep(0.3)
    raise AssertionError(f"HyperVHost {NAMESPACE}/{name}: timed out waiting for {what}; status: {obj.get('status')}")


def _reachable(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: (condition(o, "Reachable") or {}).get("status") == status


def _unreachable_message(kube: Kube, name: str) -> str:
    obj = _wait_host(kube, name, _reachable("False"), what="Reachable=False")
    reachable = condition(obj, "Reachable")
    assert reachable is not None
    assert reachable["reason"] in {"Unreachable", "HostMisconfigured"}
    assert "hostName" not in obj["status"] and "freeBytes" not in obj["status"]
    return str(reachable["message"])


def _assert_no_secret_in_log(operator: OperatorProcess, *passwords: str) -> None:
    log = operator.log_text()
    assert log, "the operator log is empty"
    for password in passwords:
        assert password not in log, "a password appears in the operator log"


def test_shared_host_is_reachable_with_its_facts(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    obj = _wait_host(kube, "hv01", lambda o: _reachable("True")(o) and bool((o.get("status") or {}).get("freeBytes")),
                     what="Reachable=True with facts")
    status = obj["status"]
    reachable = condition(obj, "Reachable")
    assert reachable is not None and reachable["reason"] == "Probed"
    assert status["hostName"] == "HV01"
    assert status["hyperVVersion"] == "2.0.0.0"
    assert isinstance(status["freeBytes"], int)
    assert 0 < status["freeBytes"] <= sim.free_bytes
    assert abs(status["freeBytes"] - sim.host.free_bytes()) < 200 * 10**9  # VMs grow; same order of magnitude
    assert status["lastProbeTime"]
    _assert_no_secret_in_log(running_operator, sim.password)


def test_wrong_password_is_reported_as_an_authentication_failure(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    name = _name("hv-badpw")
    wrong = "wrong-" + secrets.token_urlsafe(10)
    apply_objects(control_plane, host_objects(NAMESPACE, name, sim, password=wrong))
    message = _unreachable_message(kube, name)
    assert "authentication failed" in message.lower()
    assert "401" in message and "hvadmin" in message
    assert wrong not in message and sim.password not in message
    _assert_no_secret_in_log(running_operator, wrong, sim.password)


def test_wrong_ca_is_reported_as_a_certificate_verification_failure(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    name = _name("hv-badca")
    other = generate_tls(Path(tempfile.mkdtemp(prefix="other-ca-")))
    apply_objects(control_plane, host_objects(NAMESPACE, name, sim, ca_pem=other.ca_cert.read_bytes()))
    message = _unreachable_message(kube, name).lower()
    assert "certificate verification failed" in message
    assert "authentication" not in message
    _assert_no_secret_in_log(running_operator, sim.password)


def test_closed_port_is_reported_as_connection_refused(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    name = _name("hv-closed")
    port = free_port()
    apply_objects(control_plane, host_objects(NAMESPACE, name, sim, port=port))
    message = _unreachable_message(kube, name).lower()
    assert "connection refused" in message
    assert f"127.0.0.1:{port}" in message
    _assert_no_secret_in_log(running_operator, sim.password)


def test_vm_on_a_host_that_rejects_the_credentials_stalls_then_resumes_when_fixed(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    host = _name("hv-badpw-vm")
    wrong = "wrong-" + secrets.token_urlsafe(10)
    apply_objects(control_plane, host_objects(NAMESPACE, host, sim, password=wrong))
    _unreachable_message(kube, host)
    vm_name = _name("rejected")
    files_before = hostview.file_paths(sim)
    vms_before = len(sim.host.vms())
    auth_failures_before = sim.server.auth_failures
    created = kube.create_vm(NAMESPACE, vm_name, "Differencing", host=host)
    uid = created["metadata"]["uid"]

    def explained(o: dict[str, Any]) -> bool:
        stalled = condition(o, "Stalled") or {}
        return stalled.get("status") == "True"

    obj = kube.wait_vm(NAMESPACE, vm_name, explained, what="a failure with a reason", timeout=60)
    status = obj["status"]
    stalled = condition(obj, "Stalled")
    ready = condition(obj, "Ready")
    assert stalled is not None and stalled["status"] == "True"
    assert ready is not None and ready["status"] == "False"
    assert status["phase"] == "Pending"  # stalled where it stopped, not failed for good
    assert stalled["reason"] == "HostAccessDenied"
    assert "authentication failed" in stalled["message"].lower()
    assert "authentication failed" in status["message"].lower()
    assert host in stalled["message"]
    assert not status.get("vmId")
    assert not status.get("createdFiles")
    reasons = {e.reason for e in kube.events_for(NAMESPACE, vm_name)}
    assert "HostAccessDenied" in reasons
    # nothing reached the host: the simulated WinRM endpoint refused every request
    assert sim.server.auth_failures > auth_failures_before
    assert hostview.vms_tagged(sim, uid) == []
    assert len(sim.host.vms()) == vms_before
    assert hostview.file_paths(sim) == files_before
    _assert_no_secret_in_log(running_operator, wrong, sim.password)

    # fixing the Secret resumes the VM (the operator retries a host-access stall every 30 s)
    apply_objects(control_plane, host_objects(NAMESPACE, host, sim))
    _wait_host(kube, host, _reachable("True"), what="Reachable=True after fixing the password")
    kube.wait_phase(NAMESPACE, vm_name, "Provisioned", timeout=90)
    kube.delete_vm(NAMESPACE, vm_name)
    kube.wait_gone(NAMESPACE, vm_name, timeout=60)
    assert hostview.vms_tagged(sim, uid) == []
    _assert_no_secret_in_log(running_operator, wrong, sim.password)


def test_host_without_the_hyperv_module_says_so_and_is_not_unreachable(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    """CommandNotFound ends "...try again." and used to be retried as transient, so the probe failed
    and the host showed Unreachable; it is permanent, the probe lists the missing commands."""
    _wait_host(kube, "hv01", _reachable("True"), what="Reachable=True")
    sim.host.set_hyperv_module(False)
    try:
        obj = _wait_host(kube, "hv01",
                         lambda o: (condition(o, "Reachable") or {}).get("reason") == "HyperVModuleMissing",
                         what="Reachable=False HyperVModuleMissing", timeout=90)
        reachable = condition(obj, "Reachable")
        assert reachable is not None and reachable["status"] == "False"
        assert "Hyper-V\\Get-VMHost" in reachable["message"] and "WinRM reachable" in reachable["message"]
    finally:
        sim.host.set_hyperv_module(True)
    _wait_host(kube, "hv01", _reachable("True"), what="Reachable=True again", timeout=90)
