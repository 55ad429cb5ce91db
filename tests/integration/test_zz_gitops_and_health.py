"""kstatus and Argo CD verdicts on real objects the operator wrote, metrics, and the RBAC proof.

Named to run last: the RBAC check reads the log of everything the operator did in the session (in one
process; with parallel workers it sees its worker's operator so far, and the shared `operator` fixture
repeats the check on every worker's whole log when the session ends).
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

from hyperv_operator.envtest.controlplane import repo_root
from hyperv_operator.envtest.operator_process import OperatorProcess
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube
from tests.support.argocd import argocd_health
from tests.support.kstatus import kstatus_verdict

CAPTURE_DIR = Path(__file__).parent.parent / "fixtures" / "captured"
VM_HEALTH_LUA = repo_root() / "manifests" / "argocd" / "virtualmachine-health.lua"


def _capture_phases(kube: Kube, name: str, timeout: float = 90) -> dict[str, dict[str, Any]]:
    """Poll the real object and keep the first snapshot of every phase it passes through."""
    seen: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = kube.get_vm(NAMESPACE, name)
        phase = ((obj or {}).get("status") or {}).get("phase", "<none>")
        seen.setdefault(phase, obj or {})
        if phase in ("Provisioned", "Failed"):
            seen[phase] = obj or {}
            break
        time.sleep(0.05)
    return seen


def test_kstatus_and_argocd_verdicts_on_real_objects_in_each_phase(
    kube: Kube, running_operator: OperatorProcess
) -> None:
    name = f"verdicts-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Quick")
    snapshots = _capture_phases(kube, name)
    assert "Provisioned" in snapshots
    assert len(snapshots) >= 3, f"captured only {list(snapshots)}"
    CAPTURE_DIR.mkdir(parents=True, exist_ok=True)
    # Before the operator's first status write the object has no status, which kstatus itself
    # reads as Current (a known kstatus property for objects without conditions); judge from the
    # first status on.
    snapshots.pop("<none>", None)
    for phase, obj in snapshots.items():
        verdict, _ = kstatus_verdict(obj)
        health = argocd_health(obj, VM_HEALTH_LUA)
        if phase == "Provisioned":
            assert verdict == "Current", (phase, obj.get("status"))
            assert health["status"] == "Healthy", health
        else:
            assert verdict == "InProgress", (phase, obj.get("status"))
            assert health["status"] == "Progressing", (phase, health)
        (CAPTURE_DIR / f"quick-{phase}.json").write_text(json.dumps(obj, indent=1, sort_keys=True, default=str))


def test_failed_and_powered_off_verdicts(kube: Kube, running_operator: OperatorProcess) -> None:
    failed = f"verdict-failed-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, failed, "Copy", baseVhd="\\\\FS\\VMSHARE\\ABSENT.VHDX")
    obj = kube.wait_phase(NAMESPACE, failed, "Failed")
    assert kstatus_verdict(obj)[0] == "Failed"
    assert argocd_health(obj, VM_HEALTH_LUA)["status"] == "Degraded"
    off = f"verdict-off-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, off, "Differencing", powerState="Off")
    obj = kube.wait_vm(
        NAMESPACE,
        off,
        lambda o: (o.get("status") or {}).get("phase") == "Provisioned" and kstatus_verdict(o)[0] == "Current",
        what="provisioned and current",
    )
    assert obj["status"]["powerState"] == "Off"
    assert argocd_health(obj, VM_HEALTH_LUA)["status"] == "Suspended"


def test_metrics_endpoint_serves_the_documented_metrics(running_operator: OperatorProcess) -> None:
    text = running_operator.metrics_text()
    for metric in (
        "hyperv_operator_provisions_total",
        "hyperv_operator_phase_duration_seconds",
        "hyperv_operator_time_to_running_seconds",
        "hyperv_operator_time_to_independent_seconds",
        "hyperv_operator_copies_in_flight",
        "hyperv_operator_copy_bytes_total",
        "hyperv_operator_host_reachable",
        "hyperv_operator_winrm_call_duration_seconds",
    ):
        assert metric in text, f"{metric} missing from /metrics"
    assert 'hyperv_operator_provisions_total{outcome="provisioned",strategy="Quick"}' in text
    assert 'hyperv_operator_host_reachable{host="hv01",namespace="hv-test"} 1.0' in text


def test_operator_never_hit_forbidden_with_the_manifests_rbac(operator: OperatorProcess) -> None:
    log = operator.log_text()
    assert "start #1" in log
    assert "forbidden" not in log.lower(), [line for line in log.splitlines() if "forbidden" in line.lower()][:5]
