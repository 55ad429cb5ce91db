"""Secrets through the real API server's audit log: the operator reads a host's Secrets once, then
serves every reconcile step from its watch-fed cache; an edited Secret replaces the host's connection
(the probe sees the new password) without another GET."""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from hyperv_operator.envtest.controlplane import ControlPlane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV, apply_objects, host_objects
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

pytestmark = pytest.mark.integration


def _secret_gets(plane: ControlPlane, name: str | None = None) -> int:
    return sum(
        1
        for e in plane.audit_events()
        if e.get("verb") == "get"
        and (e.get("objectRef") or {}).get("resource") == "secrets"
        and (name is None or (e.get("objectRef") or {}).get("name") == name)
    )


def _wait_host(kube: Kube, name: str, predicate: Callable[[dict[str, Any]], bool], what: str) -> None:
    deadline = time.monotonic() + 60
    obj: dict[str, Any] = {}
    while time.monotonic() < deadline:
        obj = kube.get_host(NAMESPACE, name)
        if predicate(obj):
            return
        time.sleep(0.2)
    raise AssertionError(f"HyperVHost {name}: timed out waiting for {what}; status {obj.get('status')}")


def _reachable(status: str) -> Callable[[dict[str, Any]], bool]:
    return lambda o: (condition(o, "Reachable") or {}).get("status") == status


def test_reconcile_steps_read_no_secret(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    _wait_host(kube, "hv01", _reachable("True"), "Reachable=True")  # the host's Secrets are cached now
    before = _secret_gets(control_plane)
    name = f"sc-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing", cpus=2)
    kube.wait_phase(NAMESPACE, name, "Provisioned")
    time.sleep(1.0)  # the audit backend writes asynchronously
    assert _secret_gets(control_plane) - before == 0  # was: 2 GETs per step (credentials + CA)
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)


def test_a_secret_edit_reaches_the_host_without_another_get(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    host = f"hv-edit-{uuid.uuid4().hex[:6]}"
    credentials = f"{host}-credentials"
    apply_objects(control_plane, host_objects(NAMESPACE, host, sim))
    _wait_host(kube, host, _reachable("True"), "Reachable=True")
    gets = _secret_gets(control_plane, credentials)
    assert gets == 1
    wrong = "wrong-" + secrets.token_urlsafe(8)
    apply_objects(control_plane, host_objects(NAMESPACE, host, sim, password=wrong)[:1])  # the Secret only
    _wait_host(kube, host, _reachable("False"), "Reachable=False after the password edit")
    apply_objects(control_plane, host_objects(NAMESPACE, host, sim)[:1])
    _wait_host(kube, host, _reachable("True"), "Reachable=True after the fix")
    time.sleep(1.0)
    assert _secret_gets(control_plane, credentials) == gets  # the watch carried both edits
