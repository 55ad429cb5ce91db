"""WinRMClient -> WSManServer (HTTPS, Basic, CA bundle) -> the real SimulatedHost."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.commands import SWITCH
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


def test_copy_status_file_is_read_over_the_wire(client: WinRMClient) -> None:
    """Get-Content -Raw output is an extended primitive (string + provider notes) on the wire; the
    client must hand the planner the string (it used to drop it: the copy always looked absent)."""
    from hyperv_operator.hyperv.commands import cmd, pipe
    from hyperv_operator.provisioning.observation import CopyJob, kind_of

    path = FOLDER + "\\wire\\vm.vhdx.copy.json"
    text = '{"state":"Running","bytesCopied":5,"bytesTotal":10,"processId":4120}'
    new_file = cmd("Microsoft.PowerShell.Management\\New-Item", Path=path, ItemType="File", Value=text, Force=SWITCH)
    asyncio.run(client.run([pipe(new_file)]))
    [out] = asyncio.run(client.run([cmdlets.read_text_file(path)]))
    assert kind_of(out) == "string" and out.value == text
    assert out.properties["PSChildName"] == "vm.vhdx.copy.json"
    job = CopyJob.parse(out.value)
    assert job is not None and job.state == "Running" and job.process_id == 4120
    [flag] = asyncio.run(client.run([cmdlets.test_path(path)]))
    assert flag.value is True and kind_of(flag) == "bool"
