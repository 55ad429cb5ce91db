"""`conformance` against the in-process simulated host: failures are reported, cleanup always complete."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hyperv_operator.conformance import FAILED, HELD, Conformance
from hyperv_operator.simulator import inprocess
from hyperv_operator.simulator.host import SimulatedHost

SHARE = "\\\\FS\\VMSHARE"


def _host() -> SimulatedHost:
    host = SimulatedHost(time_scale=50)
    host.add_folder(SHARE)
    return host


def _leftovers(host: SimulatedHost) -> list[str]:
    return [v["Name"] for v in host.vms()] + [p for p in [*host.files(), *host.folders()] if "hvop-conformance-" in p]


def test_a_failing_assumption_is_reported_and_everything_is_removed() -> None:
    host = _host()
    # twice: in New-VM's statement, then alone once the operator looked again
    host.fail_next("Hyper-V\\Checkpoint-VM", "AccessDenied", count=2)
    conformance = Conformance(inprocess.InProcessClient(host), SHARE, poll_cap=0.05, strategy_timeout=30)
    results = asyncio.run(conformance.run())
    verdicts = {r.check: r.verdict for r in results}
    assert verdicts["Quick provisions"] == FAILED
    assert verdicts["Differencing provisions"] == HELD
    assert asyncio.run(conformance.cleanup(timeout=30)) == []
    assert _leftovers(host) == []


# The engine runs through consecutive phases in one step, so a step ends (and can be interrupted)
# where it waits on the host: the copies, the merge, or a VM just provisioned.
@pytest.mark.parametrize("phase", ["Provisioned", "Copying", "CopyingBase", "Merging"])
def test_interrupted_at_any_phase_cleanup_removes_everything(phase: str) -> None:
    host = _host()

    def stop_at(strategy: str, status: dict[str, Any]) -> None:
        if status.get("phase") == phase:
            raise KeyboardInterrupt

    conformance = Conformance(inprocess.InProcessClient(host), SHARE, poll_cap=0.05, strategy_timeout=30,
                              on_step=stop_at)
    with pytest.raises(KeyboardInterrupt):
        asyncio.run(conformance.run())
    assert _leftovers(host) != []
    assert asyncio.run(conformance.cleanup(timeout=30)) == []
    assert _leftovers(host) == []


def test_a_missing_folder_is_refused_and_nothing_is_created() -> None:
    host = _host()
    folders = host.folders()
    conformance = Conformance(inprocess.InProcessClient(host), SHARE + "\\nope", poll_cap=0.05)
    with pytest.raises(ValueError, match="does not exist"):
        asyncio.run(conformance.run())
    assert asyncio.run(conformance.cleanup(timeout=5)) == []
    assert host.folders() == folders
