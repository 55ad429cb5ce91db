"""WinRMClient -> WSManServer (HTTPS, Basic, CA bundle) -> the real SimulatedHost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.errors import PermanentHostError
from hyperv_operator.hyperv.winrm import WinRMClient, WinRMSettings
from hyperv_operator.simulator.tls import generate_tls
from hyperv_operator.simulator.wsman import WSManServer

pytestmark = pytest.mark.integration

from hyperv_operator.simulator import host as host_module  # noqa: E402

BASE = "\\\\FS\\VMSHARE\\BASE.VHDX"
FOLDER = "\\\\FS\\VMSHARE\\VMs"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WinRMClient]:
    host = host_module.SimulatedHost()
    host.add_folder("\\\\FS\\VMSHARE")
    host.add_base_disk(BASE, 1024**3, acl_read_only=True)
    tls = generate_tls(tmp_path_factory.mktemp("tls-sim"))
    server = WSManServer(host, username="hvadmin", password="pw").start(tls=tls.server_pair)
    c = WinRMClient(
        WinRMSettings(
            server="127.0.0.1",
            port=server.port,
            auth="basic",
            username="hvadmin",
            password="pw",
            ca_bundle=str(tls.ca_cert),
            read_timeout=10,
            operation_timeout=8,
        )
    )
    yield c
    c.close_sync()
    server.stop()


def test_new_item_new_vhd_get_vhd_through_simulated_host(client: WinRMClient) -> None:
    child = FOLDER + "\\vm1\\disk.vhdx"
    out = asyncio.run(
        client.run(
            [
                cmdlets.new_directory(FOLDER + "\\vm1"),
                cmdlets.new_differencing_vhd(child, BASE),
                cmdlets.get_vhd(child),
            ]
        )
    )
    vhds = [o for o in out if o.is_a("VirtualHardDisk")]
    assert vhds, out
    assert str(vhds[-1]["Path"]).lower() == child.lower()
    assert str(vhds[-1]["ParentPath"]).lower() == BASE.lower()


def test_missing_vhd_is_a_permanent_error_with_the_host_message(client: WinRMClient) -> None:
    with pytest.raises(PermanentHostError) as info:
        asyncio.run(client.run([cmdlets.get_vhd(FOLDER + "\\nope.vhdx")]))
    assert info.value.category == "ObjectNotFound"
    assert info.value.message


def test_check_host_for_quick_names_the_base_folder_it_writes_into(client: WinRMClient) -> None:
    """Quick's checkpoint lands beside the base (Checkpoint-VM): check-host says that folder must be
    writable while the base file stays read-only, and writes nothing itself."""
    from hyperv_operator.preflight import run_checks

    checks = {c.name: c for c in asyncio.run(run_checks(client, BASE, None, "Quick"))}
    folder = checks["quick: base folder"]
    assert folder.verdict == "WARN" and "\\\\FS\\VMSHARE" in folder.detail and "read-only" in folder.detail
    assert "quick: base folder" not in {c.name for c in asyncio.run(run_checks(client, BASE, None, "Copy"))}
    missing = asyncio.run(run_checks(client, "\\\\FS\\NOPE\\BASE.VHDX", None, "Quick"))
    assert {c.name: c.verdict for c in missing}["quick: base folder"] == "FAIL"
