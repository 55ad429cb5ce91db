"""Access denied is not "not found": a base the host may not read stalls with the second-hop reason."""

from __future__ import annotations

from dataclasses import replace

from hyperv_operator.provisioning.planner import plan, retryable_failure

from .helpers import BASE, LAYOUT, NOW, REF, condition, observe, spec, status


def test_denied_base_stalls_with_the_second_hop_reason_and_both_fixes() -> None:
    obs = replace(observe(files=()), denied=frozenset({BASE.lower()}))
    r = plan(spec("Copy"), status(), obs, NOW, vm=REF, layout=LAYOUT)
    assert r.action is None
    stalled = condition(r.status, "Stalled")
    assert (stalled["status"], stalled["reason"]) == ("True", "BaseDiskAccessDenied")
    message = stalled["message"]
    assert BASE in message and "second hop" in message and "not missing" in message
    assert "auth: credssp" in message and "Enable-SmbDelegation -SmbServer" in message
    assert retryable_failure(r.status)  # re-checked once the host is fixed


def test_missing_base_without_access_denied_stays_base_disk_not_found() -> None:
    r = plan(spec("Copy"), status(), observe(files=()), NOW, vm=REF, layout=LAYOUT)
    assert condition(r.status, "Stalled")["reason"] == "BaseDiskNotFound"
