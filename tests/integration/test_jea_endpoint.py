"""The operator through a simulated JEA endpoint (NoLanguage, the shipped role) over real WinRM/HTTPS."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest

from hyperv_operator.envtest.stack import BASE_VHD, VM_ROOT, SimulatedHyperV
from hyperv_operator.hyperv import cmdlets, jea, probe, scripts
from hyperv_operator.hyperv.errors import HostError
from hyperv_operator.hyperv.winrm import WinRMClient, WinRMSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatedHyperV]:
    stack = SimulatedHyperV(base_size=64 * 1024**2, jea_configurations=(jea.CONFIGURATION_NAME,)).start()
    yield stack
    stack.stop()


def _client(sim: SimulatedHyperV, configuration: str, *, restricted: bool | None = None) -> WinRMClient:
    return WinRMClient(WinRMSettings(
        server="127.0.0.1", port=sim.port, auth="basic", username=sim.username, password=sim.password,
        ca_bundle=str(sim.tls.ca_cert), configuration_name=configuration, restricted=restricted,
        read_timeout=10, operation_timeout=8))


def test_background_copy_runs_as_the_role_function(sim: SimulatedHyperV) -> None:
    client = _client(sim, jea.CONFIGURATION_NAME)
    try:
        folder = VM_ROOT + "\\jea-copy"
        out = asyncio.run(client.run([
            cmdlets.new_directory(folder),
            scripts.start_background_copy(BASE_VHD, folder + "\\disk.vhdx", folder + "\\disk.vhdx.partial",
                                          folder + "\\copy.json"),
        ]))
        assert any(o.get("ProcessId") for o in out), out
        assert [j["Destination"] for j in sim.host.copy_jobs()] == [folder + "\\disk.vhdx"]
        sent = [c for c in sim.server.received_commands if c.name == "Start-HvopBackgroundCopy"]
        assert sent and not sent[-1].is_script
        assert all(name != "Worker" for name, _ in sent[-1].parameters)
        status = asyncio.run(client.run([cmdlets.test_path(folder + "\\copy.json")]))
        assert status[0].value is True
        assert json.loads(sim.host.files()[folder + "\\copy.json"]["Text"])["state"] in ("Running", "Completed")
    finally:
        client.close_sync()


def test_probe_works_through_the_endpoint(sim: SimulatedHyperV) -> None:
    client = _client(sim, jea.CONFIGURATION_NAME)
    try:
        found = client.probe_sync("C")
        assert found.missing_commands == ()
        assert found.hyperv_version
    finally:
        client.close_sync()
    assert probe.PROBE_CMDLETS <= jea.ROLE_COMMANDS


def test_script_text_is_refused_by_the_endpoint(sim: SimulatedHyperV) -> None:
    client = _client(sim, jea.CONFIGURATION_NAME, restricted=False)
    try:
        with pytest.raises(HostError) as info:
            asyncio.run(client.run([scripts.start_background_copy(BASE_VHD, "C:\\x", "C:\\x.p", "C:\\x.json")]))
        assert info.value.fq_error_id == "ScriptsNotAllowed"
        with pytest.raises(HostError) as info:
            asyncio.run(client.run([cmdlets.get_vhd(BASE_VHD)]))  # module-qualified
        assert info.value.fq_error_id == "CommandNotFoundException"
    finally:
        client.close_sync()
    assert not any(j["Destination"] == "C:\\x" for j in sim.host.copy_jobs())
