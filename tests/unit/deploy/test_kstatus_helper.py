"""tests/support/kstatus.py: the kstatus rules on a VirtualMachine in each state."""

from __future__ import annotations

from typing import Any

import pytest
from tests.support.gitops_objects import cond, host, ready, reconciling, stalled, vm
from tests.support.kstatus import CURRENT, FAILED, IN_PROGRESS, TERMINATING, kstatus_verdict


def test_no_status_yet_is_current_as_in_kstatus() -> None:
    # kstatus has no rule for a custom resource without status: it is Current. (Flux would not wait.)
    assert kstatus_verdict(vm(None)) == (CURRENT, "Resource is current")


def test_generation_not_observed_is_in_progress() -> None:
    obj = ready()
    obj["metadata"]["generation"] = 3
    obj["status"]["observedGeneration"] = 2
    assert kstatus_verdict(obj) == (IN_PROGRESS,
                                    "VirtualMachine generation is 3, but latest observed generation is 2")


def test_missing_observed_generation_skips_the_generation_check() -> None:
    obj = ready()
    del obj["status"]["observedGeneration"]
    assert kstatus_verdict(obj)[0] == CURRENT


@pytest.mark.parametrize("phase", ["Pending", "CreatingDisk", "Copying", "CreatingVM", "Checkpointing", "Starting",
                                   "CopyingBase", "Reparenting", "Merging"])
def test_reconciling_phases_are_in_progress(phase: str) -> None:
    assert kstatus_verdict(reconciling(phase, f"{phase}: working")) == (IN_PROGRESS, f"{phase}: working")


def test_stalled_is_failed_with_its_message() -> None:
    assert kstatus_verdict(stalled("base disk not found")) == (FAILED, "base disk not found")


@pytest.mark.parametrize("obj", [ready("Quick"), ready("Differencing", independent_at=None),
                                 ready(power="Off", spec_power="Off")])
def test_ready_is_current(obj: dict[str, Any]) -> None:
    assert kstatus_verdict(obj) == (CURRENT, "Resource is current")


def test_ready_false_without_reconciling_or_stalled_is_still_current() -> None:
    # kstatus ignores Ready: only Reconciling/Stalled (abnormal-true) and generations count.
    obj = vm("Provisioned", conditions=[cond("Ready", "False", "VmOff", "VM stopped unexpectedly")])
    assert kstatus_verdict(obj)[0] == CURRENT


def test_first_matching_condition_wins() -> None:
    obj = vm("Merging", conditions=[cond("Stalled", "True", message="stuck"), cond("Reconciling", "True")])
    assert kstatus_verdict(obj) == (FAILED, "stuck")
    obj["status"]["conditions"].reverse()
    assert kstatus_verdict(obj)[0] == IN_PROGRESS


def test_deletion_wins_over_everything() -> None:
    obj = stalled("x")
    obj["metadata"]["deletionTimestamp"] = "2026-01-01T12:00:00Z"
    assert kstatus_verdict(obj) == (TERMINATING, "Resource scheduled for deletion")


def test_non_integer_generation_is_an_error_as_in_kstatus() -> None:
    obj = ready()
    obj["status"]["observedGeneration"] = "1"
    with pytest.raises(ValueError, match="observedGeneration"):
        kstatus_verdict(obj)


def test_hypervhost_with_only_reachable_is_current() -> None:
    assert kstatus_verdict(host("False", "refused"))[0] == CURRENT


def test_crd_rule() -> None:
    crd: dict[str, Any] = {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
           "metadata": {"name": "x", "generation": 1}, "status": {"conditions": []}}
    assert kstatus_verdict(crd) == (IN_PROGRESS, "Install in progress")
    crd["status"]["conditions"] = [{"type": "NamesAccepted", "status": "True"},
                                   {"type": "Established", "status": "True"}]
    assert kstatus_verdict(crd) == (CURRENT, "CRD is established")
    crd["status"]["conditions"] = [{"type": "NamesAccepted", "status": "False", "message": "clash"}]
    assert kstatus_verdict(crd) == (FAILED, "clash")
