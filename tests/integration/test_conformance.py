"""`hyperv-operator conformance` against the simulated host over real WinRM/HTTPS (no Kubernetes)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from hyperv_operator.conformance import FAILED, HELD, Conformance, format_table
from hyperv_operator.envtest.stack import SHARE, SimulatedHyperV
from hyperv_operator.hyperv import jea
from hyperv_operator.hyperv.winrm import WinRMClient, WinRMSettings

pytestmark = pytest.mark.integration


@pytest.fixture
def sim() -> Iterator[SimulatedHyperV]:
    # A slow simulated copy, so the status file is read while the worker still writes it.
    stack = SimulatedHyperV(base_size=64 * 1024**2, time_scale=4, copy_bytes_per_second=1e6,
                            jea_configurations=(jea.CONFIGURATION_NAME,)).start()
    yield stack
    stack.stop()


def _leftovers(sim: SimulatedHyperV) -> list[str]:
    scratch = [p for p in [*sim.host.files(), *sim.host.folders()] if "hvop-conformance-" in p.lower()]
    return [f"VM {v['Name']}" for v in sim.host.vms()] + scratch


@pytest.mark.parametrize("configuration", ["Microsoft.PowerShell", jea.CONFIGURATION_NAME])
def test_conformance_holds_on_the_simulated_host_and_cleans_up(sim: SimulatedHyperV, configuration: str) -> None:
    client = WinRMClient(WinRMSettings(
        server="127.0.0.1", port=sim.port, auth="basic", username=sim.username, password=sim.password,
        ca_bundle=str(sim.tls.ca_cert), configuration_name=configuration, read_timeout=10, operation_timeout=8))
    conformance = Conformance(client, SHARE, poll_cap=0.25, strategy_timeout=120)
    try:
        results = asyncio.run(conformance.run())
        assert _leftovers(sim) != [], "the run created nothing?"
    finally:
        problems = asyncio.run(conformance.cleanup())
        client.close_sync()
    table = format_table(results)
    assert [r for r in results if r.verdict != HELD] == [], table
    checks = {r.check for r in results}
    for expected in ("Quick: checkpoint beside its parent", "Quick: online re-parent (-LeafPath)", "Quick: merge",
                     "Copy: status file readable while written", "stop (powerState Off)",
                     "not found: Get-VM -Id <unknown>", "Differencing provisions", "Copy provisions"):
        assert expected in checks, table
    assert problems == []
    assert _leftovers(sim) == []
    if configuration == jea.CONFIGURATION_NAME:
        assert not any(c.is_script for c in sim.server.received_commands)


def _cli(sim: SimulatedHyperV, *extra: str) -> subprocess.Popen[str]:
    env = {**os.environ, "HV_PASSWORD": sim.password}
    return subprocess.Popen(
        [sys.executable, "-m", "hyperv_operator.cli", "conformance", "--address", "127.0.0.1", "--port",
         str(sim.port), "--auth", "basic", "--username", sim.username, "--ca-bundle", str(sim.tls.ca_cert),
         "--folder", SHARE, "--poll", "0.25", "--timeout", "120", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_passes_and_prints_the_table(sim: SimulatedHyperV) -> None:
    proc = _cli(sim)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, out + err
    assert "Quick: online re-parent (-LeafPath)" in out and FAILED not in out
    assert _leftovers(sim) == []


@pytest.mark.parametrize(("sig", "when"), [(signal.SIGINT, "Checkpoint-VM"), (signal.SIGTERM, "StartBackgroundCopy")])
def test_interrupted_run_removes_everything_it_created(sim: SimulatedHyperV, sig: signal.Signals, when: str) -> None:
    proc = _cli(sim)
    deadline = time.monotonic() + 120
    while not any(name.rsplit("\\", 1)[-1] == when for name, _ in sim.host.call_log()):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run never reached " + when
        time.sleep(0.02)
    assert sim.host.vms(), "interrupt while scratch VMs exist"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, out + err
    assert "interrupted: cleaning up" in err
    assert _leftovers(sim) == [], out + err
