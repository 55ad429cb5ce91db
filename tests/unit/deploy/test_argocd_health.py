"""manifests/argocd/*.lua run in a Lua 5.1 runtime (lupa) on objects in each state."""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.support.argocd import LUA_BY_KIND, argocd_health
from tests.support.gitops_objects import cond, host, ready, reconciling, stalled, vm


def test_no_status_is_progressing() -> None:
    assert argocd_health(vm(None))["status"] == "Progressing"
    assert argocd_health(vm("Pending", conditions=[]))["status"] == "Progressing"


def test_generation_behind_is_progressing() -> None:
    obj = ready()
    obj["metadata"]["generation"] = 2
    assert argocd_health(obj) == {"status": "Progressing",
                                  "message": "Waiting for the operator to observe generation 2"}
    del obj["status"]["observedGeneration"]
    assert argocd_health(obj)["status"] == "Progressing"


@pytest.mark.parametrize("phase", ["Pending", "CreatingDisk", "CreatingVM", "Checkpointing", "Starting",
                                   "Reparenting", "Merging"])
def test_reconciling_is_progressing_with_its_message(phase: str) -> None:
    assert argocd_health(reconciling(phase, f"{phase} now")) == {"status": "Progressing", "message": f"{phase} now"}


def test_copy_progress_is_shown() -> None:
    obj = reconciling("Copying", "copying the base")
    obj["status"]["copy"] = {"percent": 37, "bytesCopied": 37, "bytesTotal": 100}
    assert argocd_health(obj) == {"status": "Progressing", "message": "copying the base (copy 37%)"}


def test_stalled_is_degraded_with_the_condition_message() -> None:
    assert argocd_health(stalled("base disk \\\\FS\\x.vhdx not found")) == {
        "status": "Degraded", "message": "base disk \\\\FS\\x.vhdx not found"}


def test_stalled_wins_over_reconciling() -> None:
    obj = vm("Copying", conditions=[cond("Reconciling", "True"), cond("Stalled", "True", message="no")])
    assert argocd_health(obj)["status"] == "Degraded"


def test_ready_and_independent_is_healthy() -> None:
    health = argocd_health(ready("Quick"))
    assert health["status"] == "Healthy"
    assert "independent of the base disk" in health["message"]
    assert argocd_health(ready("Copy"))["status"] == "Healthy"


def test_ready_but_dependent_says_so() -> None:
    health = argocd_health(ready("Differencing", independent_at=None))
    assert health["status"] == "Healthy"
    assert "depends on the base disk \\\\FS\\VMSHARE\\BASE.VHDX" in health["message"]


def test_independent_condition_wins_over_timings() -> None:
    obj = ready("Quick")
    obj["status"]["conditions"].append(cond("Independent", "False", "NotYetMerged", "merging"))
    assert "depends on the base disk" in argocd_health(obj)["message"]


def test_off_on_purpose_is_suspended() -> None:
    assert argocd_health(ready(power="Off", spec_power="Off")) == {
        "status": "Suspended", "message": "Powered off on purpose (spec.powerState: Off)"}


def test_off_requested_but_still_running_is_not_suspended() -> None:
    assert argocd_health(ready(power="Running", spec_power="Off"))["status"] == "Healthy"
    obj = reconciling("Provisioned", "shutting down")
    obj["spec"]["powerState"] = "Off"
    assert argocd_health(obj)["status"] == "Progressing"


def test_off_unexpectedly_is_not_suspended() -> None:
    obj = vm("Provisioned", powerState="Off",
             conditions=[cond("Ready", "False", "VmOff", "VM is off but should run"), cond("Reconciling", "False"),
                         cond("Stalled", "False")])
    assert argocd_health(obj) == {"status": "Degraded", "message": "VM is off but should run"}


def test_ready_unknown_is_progressing() -> None:
    obj = vm("Pending", conditions=[cond("Ready", "Unknown", "Probing", "checking the host")])
    assert argocd_health(obj) == {"status": "Progressing", "message": "checking the host"}


def test_hypervhost_health() -> None:
    assert argocd_health(host("True")) == {"status": "Healthy", "message": "Reachable; Hyper-V 10.0.20348"}
    assert argocd_health(host("True", "WinRM reachable at hv01", version=None)) == {
        "status": "Healthy", "message": "WinRM reachable at hv01"}
    assert argocd_health(host("False", "connection refused")) == {"status": "Degraded",
                                                                  "message": "connection refused"}
    assert argocd_health(host(None))["status"] == "Progressing"
    assert argocd_health(host("Unknown", "probing"))["status"] == "Progressing"


def test_script_uses_only_what_argo_cd_provides(tmp_path: Path) -> None:
    script = tmp_path / "bad.lua"
    script.write_text('local f = io.open("/etc/passwd")\nreturn {status="Healthy"}\n')
    with pytest.raises(Exception, match="io"):
        argocd_health(ready(), script)
    script.write_text('return {status="Fine"}\n')
    with pytest.raises(ValueError, match="unknown health status"):
        argocd_health(ready(), script)


def test_scripts_exist_for_both_kinds() -> None:
    assert set(LUA_BY_KIND) == {"VirtualMachine", "HyperVHost"}
    assert all(path.is_file() for path in LUA_BY_KIND.values())
