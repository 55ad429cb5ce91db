"""With ~10% of host requests failing transiently, every strategy still reaches Provisioned.

Faults are seeded (reproducible draws, though the interleaving of three concurrent VMs is not):
- the simulated host fails 10% of pipelines (one WinRM round trip each: observe batches and actions)
  at one of their commands with ObjectInUse (ResourceBusy) or "The operation has timed out."
  (OperationTimeout); the faulted command changes nothing, the statements before it ran;
- the WinRM endpoint drops 2% of HTTP requests unanswered (connection reset), including Receives
  whose pipeline already ran: the reply is lost, not the effect;
- and, so that every mutating step is retried at least once whatever the draws, the first call of
  each mutating command the strategies use fails once with ObjectInUse.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition
from tests.integration.test_provisioning import STRATEGIES, _assert_final_host_state

pytestmark = pytest.mark.integration

BATCH_FAULT_RATE = 0.10
DROP_RATE = 0.02
SEED = 20250101
MUTATING = ("Hyper-V\\New-VHD", "Hyper-V\\New-VM", "Hyper-V\\Set-VM", "Hyper-V\\Start-VM", "Hyper-V\\Checkpoint-VM",
            "Hyper-V\\Set-VHD", "Hyper-V\\Remove-VMSnapshot", "Microsoft.PowerShell.Management\\Remove-Item",
            "StartBackgroundCopy")


class Faults:
    """Counts what the injector did while it was on."""

    def __init__(self, sim: SimulatedHyperV) -> None:
        self.sim = sim
        self._faults_before = len(sim.host.random_faults)
        self._drops_before = sim.server.dropped_requests
        self._commands_before = len(sim.host.call_log())

    @property
    def command_faults(self) -> list[tuple[str, str]]:
        return self.sim.host.random_faults[self._faults_before:]

    @property
    def dropped_requests(self) -> int:
        return self.sim.server.dropped_requests - self._drops_before

    @property
    def commands(self) -> int:
        return len(self.sim.host.call_log()) - self._commands_before


@pytest.fixture
def faults(sim: SimulatedHyperV) -> Iterator[Faults]:
    """A seeded random fault injector on the shared simulated host; always turned off afterwards."""
    counter = Faults(sim)
    sim.host.set_fault_rate(BATCH_FAULT_RATE, seed=SEED, kinds=("ObjectInUse", "Transient"), per="batch")
    sim.server.set_drop_rate(DROP_RATE, seed=SEED)
    for command in MUTATING:
        sim.host.fail_next(command, "ObjectInUse")
    try:
        yield counter
    finally:
        sim.host.clear_faults()
        sim.server.set_drop_rate(0.0)


@pytest.mark.timeout(600)
def test_all_strategies_reach_provisioned_with_ten_percent_transient_failures(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, faults: Faults
) -> None:
    vms_before = len(sim.host.vms())
    names = {strategy: f"faulty-{strategy.lower()}-{uuid.uuid4().hex[:6]}" for strategy in STRATEGIES}
    for strategy, name in names.items():
        kube.create_vm(NAMESPACE, name, strategy, cpus=2)
    finals: dict[str, dict[str, Any]] = {}
    for strategy, name in names.items():
        # Provisioned and Ready (the guest's heartbeat answers: spec.readiness Heartbeat, the default)
        obj = kube.wait_vm(NAMESPACE, name, lambda o: (o.get("status") or {}).get("phase") == "Failed" or (
                           (o.get("status") or {}).get("phase") == "Provisioned"
                           and (condition(o, "Ready") or {}).get("status") == "True"),
                           timeout=300, what="Provisioned and Ready (or Failed)")
        assert obj["status"]["phase"] == "Provisioned", f"{strategy}: {obj['status'].get('message')}"
        finals[strategy] = obj

    # stop injecting before looking at the host (the checks below run cmdlets on it too)
    pending = sim.host.pending_faults()
    sim.host.clear_faults()
    sim.server.set_drop_rate(0.0)
    assert pending == [], f"mutating commands never retried: {pending}"
    injected = len(faults.command_faults) + faults.dropped_requests
    print(f"\nfault injection: {len(faults.command_faults)} command faults in {faults.commands} commands, "
          f"{faults.dropped_requests} dropped HTTP requests; faulted: "
          f"{sorted({name for name, _ in faults.command_faults})}")
    assert injected > 0
    assert faults.command_faults, "no command fault was injected"

    for strategy, obj in finals.items():
        _assert_final_host_state(sim, obj, strategy)
        assert (condition(obj, "Ready") or {}).get("status") == "True"
        assert (condition(obj, "Stalled") or {}).get("status") == "False"
    assert len(sim.host.vms()) == vms_before + len(STRATEGIES), "a retried step created an extra VM"
    warnings = {e.reason for name in names.values() for e in kube.events_for(NAMESPACE, name) if e.type == "Warning"}
    assert warnings & {"HostBusy", "HostUnreachable"}, f"no retry was visible in the events: {warnings}"
