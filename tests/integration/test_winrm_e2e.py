"""End to end: the production WinRMClient (pypsrp) -> WSManServer over real HTTPS on loopback -> executor."""

from __future__ import annotations

import asyncio
import datetime
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from hyperv_operator.hyperv import cmdlets, scripts
from hyperv_operator.hyperv.commands import SWITCH, Int64, Statement, UInt64, cmd, pipe
from hyperv_operator.hyperv.errors import HostUnreachableError, PermanentHostError, TransientHostError
from hyperv_operator.hyperv.winrm import WinRMClient, WinRMSettings
from hyperv_operator.simulator.errors import CmdletError
from hyperv_operator.simulator.tls import TLSFiles, generate_tls
from hyperv_operator.simulator.wsman import WSManServer
from tests.unit.winrm.fake_executor import CREATED, VM_ID, FakeExecutor

pytestmark = pytest.mark.integration

USER = "hvadmin"
PASSWORD = "S3cret-pa55"
INJECTION = "x'; Remove-Item C:\\ -Recurse; '"


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TLSFiles:
    return generate_tls(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def executor() -> FakeExecutor:
    return FakeExecutor()


@pytest.fixture(scope="module")
def server(executor: FakeExecutor, tls: TLSFiles) -> Iterator[WSManServer]:
    srv = WSManServer(executor, username=USER, password=PASSWORD).start(tls=tls.server_pair)
    yield srv
    srv.stop()


def settings(server: WSManServer, tls: TLSFiles, **overrides: object) -> WinRMSettings:
    values: dict[str, object] = dict(
        server="127.0.0.1",
        port=server.port,
        ssl=True,
        auth="basic",
        username=USER,
        password=PASSWORD,
        ca_bundle=str(tls.ca_cert),
        connection_timeout=3,
        read_timeout=4,
        operation_timeout=3,
        reconnection_backoff=0.1,
    )
    values.update(overrides)
    return WinRMSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(server: WSManServer, tls: TLSFiles) -> Iterator[WinRMClient]:
    c = WinRMClient(settings(server, tls))
    yield c
    c.close_sync()


def run(client: WinRMClient, *statements: Statement) -> list:  # type: ignore[type-arg]
    return asyncio.run(client.run(list(statements)))


def test_outputs_round_trip_with_types(client: WinRMClient) -> None:
    [vm] = run(client, cmdlets.get_vm_by_id(VM_ID))
    assert vm.type_names[0] == "Microsoft.HyperV.PowerShell.VirtualMachine"
    assert vm.is_a("VirtualMachine")
    assert vm["Id"] == VM_ID  # Guid -> str
    assert vm["State"] == "Running"
    assert vm["MemoryStartup"] == 4 * 1024**3
    assert vm["ProcessorCount"] == 2
    assert vm["CreationTime"] == CREATED
    assert isinstance(vm["CreationTime"], datetime.datetime)
    assert vm["Tags"] == ["a", "b"]
    assert vm["Nothing"] is None
    assert vm["Drive"].properties == {"Path": "C:\\VMs\\vm1.vhdx"}
    [exists] = run(client, cmdlets.test_path("C:\\x"))
    assert exists.value is True
    assert exists.type_names == ("System.Boolean",)


def test_batch_is_one_pipeline_and_two_requests(client: WinRMClient, server: WSManServer) -> None:
    run(client, cmdlets.test_path("C:\\warm"))  # opens the pool
    before = server.request_count
    pipelines = len(server.received)
    out = run(client, cmdlets.test_path("C:\\a"), cmdlets.get_vm_by_id(VM_ID), cmdlets.read_text_file("C:\\s.json"))
    assert [o.value for o in out if not o.properties] == [True, '{"state": "Running"}']
    assert server.request_count - before == 2  # Command + Receive
    assert len(server.received) == pipelines + 1
    received = server.received[-1]
    assert len(received.statements) == 3
    assert server.pipeline_requests[received.pipeline_id] == 2
    assert client.pools_opened == 1


def test_parameters_arrive_typed_and_literal(client: WinRMClient, server: WSManServer, executor: FakeExecutor) -> None:
    statement = pipe(
        cmd(
            "Echo",
            Path=INJECTION,
            Size=UInt64(2**40),
            Memory=Int64(8 * 1024**3),
            Count=3,
            Flag=False,
            Force=SWITCH,
            Names=("a", "b'c"),
        )
    )
    run(client, statement)
    [received] = server.received[-1].statements
    command = received.commands[0]
    assert command.name == "Echo" and not command.is_script
    assert command.parameters == (
        ("Path", INJECTION),
        ("Size", UInt64(2**40)),
        ("Memory", Int64(8 * 1024**3)),
        ("Count", 3),
        ("Flag", False),
        ("Force", SWITCH),
        ("Names", ("a", "b'c")),
        ("ErrorAction", "Stop"),
    )
    # the executor sees the same statement without the common parameter
    assert executor.batches[-1] == [statement]


def test_injection_path_reaches_host_as_one_literal_parameter(client: WinRMClient, server: WSManServer) -> None:
    run(client, cmdlets.new_directory(INJECTION))
    command = server.received_commands[-1]
    assert command.name == "Microsoft.PowerShell.Management\\New-Item"
    assert command.parameter("Path") == INJECTION
    assert [c.name for c in server.received_commands if "Remove-Item" in c.name] == []


def test_fixed_script_travels_as_script_with_parameters(client: WinRMClient, server: WSManServer) -> None:
    [out] = run(client, scripts.start_background_copy("\\\\fs\\b.vhdx", "C:\\d.vhdx", "C:\\d.partial", "C:\\s.json"))
    assert out["ProcessId"] == 4711
    command = server.received_commands[-1]
    assert command.is_script and command.name == scripts.START_BACKGROUND_COPY
    assert scripts.script_name(command.name) == "StartBackgroundCopy"
    assert command.parameter("Worker") == scripts.COPY_WORKER
    assert command.parameter("ErrorAction") is None  # scripts set $ErrorActionPreference themselves


def test_cmdlet_error_maps_to_permanent_error_with_host_fields(client: WinRMClient) -> None:
    with pytest.raises(PermanentHostError) as info:
        run(client, cmdlets.get_vm_by_id("00000000-0000-0000-0000-000000000000"))
    err = info.value
    assert err.message == "Hyper-V was unable to find a virtual machine with id '00000000-0000-0000-0000-000000000000'."
    assert err.category == "ObjectNotFound"
    assert err.fq_error_id == "InvalidParameter,Microsoft.HyperV.PowerShell.Commands.GetVM"
    assert err.target == "00000000-0000-0000-0000-000000000000"
    assert err.exception_type == "Microsoft.HyperV.PowerShell.VirtualizationException"
    assert "Get-VM" in err.command
    # the pool survives a cmdlet error
    run(client, cmdlets.test_path("C:\\x"))
    assert client.pools_opened == 1


def test_object_in_use_is_transient(client: WinRMClient, executor: FakeExecutor) -> None:
    executor.fail_next(
        CmdletError(
            "The operation cannot be performed while the object is in use.",
            category="ResourceBusy",
            fq_error_id="ObjectInUse,Microsoft.Vhd.PowerShell.Commands.NewVhd",
            target="C:\\base.vhdx",
        )
    )
    with pytest.raises(TransientHostError) as info:
        run(client, cmdlets.new_differencing_vhd("C:\\c.vhdx", "C:\\base.vhdx"))
    assert not isinstance(info.value, HostUnreachableError)
    assert info.value.category == "ResourceBusy"
    assert info.value.target == "C:\\base.vhdx"


def test_command_not_found_is_permanent(client: WinRMClient) -> None:
    with pytest.raises(PermanentHostError) as info:
        run(client, pipe(cmd("Hyper-V\\Get-Nothing")))
    assert info.value.fq_error_id == "CommandNotFoundException"
    assert info.value.exception_type == "System.Management.Automation.CommandNotFoundException"


def test_int32_overflow_fails_the_pipeline(client: WinRMClient, server: WSManServer) -> None:
    with pytest.raises(PermanentHostError) as info:
        run(client, cmdlets.stop_process(3_000_000_000))  # a bare int travels as <I32>
    assert "too large or too small for an Int32" in info.value.message
    assert info.value.category == "InvalidData"
    assert server.received[-1].error
    run(client, cmdlets.test_path("C:\\x"))  # the pool is still fine


def test_wrong_password_is_a_clear_auth_error(server: WSManServer, tls: TLSFiles) -> None:
    client = WinRMClient(settings(server, tls, password="wrong-password"))
    with pytest.raises(PermanentHostError) as info:
        run(client, cmdlets.test_path("C:\\x"))
    message = str(info.value)
    assert f"authentication failed for user '{USER}'" in message
    assert "HTTP 401" in message
    assert "wrong-password" not in message and PASSWORD not in message
    assert info.value.category == "AuthenticationError"


def test_wrong_ca_is_a_clear_tls_error(server: WSManServer, tmp_path: Path) -> None:
    other = generate_tls(tmp_path / "other")
    client = WinRMClient(settings(server, other))
    with pytest.raises(PermanentHostError) as info:
        run(client, cmdlets.test_path("C:\\x"))
    assert str(info.value).startswith("TLS certificate verification failed for https://127.0.0.1:")
    assert info.value.category == "SecurityError"


def test_closed_port_is_a_clear_connection_error(tls: TLSFiles) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = WinRMClient(
        WinRMSettings(
            server="127.0.0.1",
            port=port,
            auth="basic",
            username=USER,
            password=PASSWORD,
            ca_bundle=str(tls.ca_cert),
            connection_timeout=2,
            read_timeout=3,
            operation_timeout=2,
        )
    )
    with pytest.raises(HostUnreachableError) as info:
        run(client, cmdlets.test_path("C:\\x"))
    assert str(info.value) == f"connection refused at 127.0.0.1:{port}"


def test_dropped_connection_rebuilds_the_pool(client: WinRMClient, server: WSManServer) -> None:
    run(client, cmdlets.test_path("C:\\x"))
    server.drop_next()
    with pytest.raises(HostUnreachableError) as info:
        run(client, cmdlets.test_path("C:\\x"))
    assert "closed or reset without an answer" in str(info.value)
    [out] = run(client, cmdlets.test_path("C:\\x"))
    assert out.value is True
    assert client.pools_opened == 2


def test_read_timeout_rebuilds_the_pool(server: WSManServer, tls: TLSFiles) -> None:
    client = WinRMClient(settings(server, tls, read_timeout=1.5, operation_timeout=1))
    try:
        run(client, cmdlets.test_path("C:\\x"))
        server.delay_next(2.5)  # the next request is the Command
        with pytest.raises(HostUnreachableError) as info:
            run(client, cmdlets.test_path("C:\\x"))
        assert "timed out after 1.5s" in str(info.value)
        [out] = run(client, cmdlets.test_path("C:\\x"))
        assert out.value is True
        assert client.pools_opened == 2
    finally:
        client.close_sync()


def test_lost_shell_is_rebuilt_transparently(client: WinRMClient, server: WSManServer) -> None:
    run(client, cmdlets.test_path("C:\\x"))
    server.shells.clear()  # e.g. WinRM restarted on the host
    [out] = run(client, cmdlets.test_path("C:\\x"))
    assert out.value is True
    assert client.pools_opened == 2


def test_concurrent_calls_share_at_most_max_connections_pools(server: WSManServer, tls: TLSFiles) -> None:
    """6 calls at once on a host with maxConnections 2: two RunspacePools, opened once and reused."""
    client = WinRMClient(replace(settings(server, tls), max_connections=2))

    async def many() -> list[list]:  # type: ignore[type-arg]
        return await asyncio.gather(*(client.run([cmdlets.test_path(f"C:\\{i}")]) for i in range(6)))

    try:
        for _ in range(2):
            results = asyncio.run(many())
            assert all(r[0].value is True for r in results)
        assert client.pools_opened == 2 and client.max_in_use == 2
    finally:
        client.close_sync()


def test_probe_tolerates_missing_commands(client: WinRMClient) -> None:
    probe = asyncio.run(client.probe())
    assert probe.host_name == "HV01"
    assert probe.logical_processors == 16
    assert probe.hyperv_version is None and probe.free_bytes is None
    assert set(probe.missing_commands) == {
        "Microsoft.PowerShell.Core\\Get-Module",
        "Microsoft.PowerShell.Management\\Get-PSDrive",
    }


def test_unknown_configuration_is_permanent(server: WSManServer, tls: TLSFiles) -> None:
    client = WinRMClient(settings(server, tls, configuration_name="HyperVOperatorJEA"))
    with pytest.raises(PermanentHostError) as info:
        run(client, cmdlets.test_path("C:\\x"))
    assert "HyperVOperatorJEA session configuration" in str(info.value)


def test_basic_over_plain_http(executor: FakeExecutor) -> None:
    with WSManServer(executor, username=USER, password=PASSWORD).start() as srv:
        client = WinRMClient(
            WinRMSettings(
                server="127.0.0.1",
                port=srv.port,
                ssl=False,
                auth="basic",
                username=USER,
                password=PASSWORD,
                allow_unencrypted=True,
                read_timeout=4,
                operation_timeout=3,
            )
        )
        [out] = run(client, cmdlets.test_path("C:\\x"))
        assert out.value is True
        client.close_sync()
        assert srv.shells == {}  # close() deleted the shell


def test_ntlm_with_message_encryption_over_http(executor: FakeExecutor) -> None:
    with WSManServer(executor, username=USER, password=PASSWORD, ntlm=True).start() as srv:
        client = WinRMClient(
            WinRMSettings(
                server="127.0.0.1",
                port=srv.port,
                ssl=False,
                auth="ntlm",
                username=USER,
                password=PASSWORD,
                read_timeout=4,
                operation_timeout=3,
            )
        )
        try:
            [vm] = run(client, cmdlets.get_vm_by_id(VM_ID))
            assert vm["Name"] == "vm1"
            assert srv.received_commands[-1].parameter("Id") == VM_ID
            assert srv.encrypted_requests >= 4  # Create, Receive, Command, Receive all wrapped
        finally:
            client.close_sync()
        bad = WinRMClient(
            WinRMSettings(
                server="127.0.0.1",
                port=srv.port,
                ssl=False,
                auth="ntlm",
                username=USER,
                password="nope",
                read_timeout=4,
                operation_timeout=3,
            )
        )
        with pytest.raises(PermanentHostError) as info:
            run(bad, cmdlets.test_path("C:\\x"))
        assert "authentication failed" in str(info.value)
