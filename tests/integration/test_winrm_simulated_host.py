"""WinRMClient -> WSManServer (HTTPS, Basic, CA bundle) -> the real SimulatedHost."""

from __future__ import annotations

import asyncio
import threading
import time
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


def test_each_reply_leaves_in_one_write_on_a_nodelay_socket(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bytes on the wire: every HTTP reply of the simulated WinRM server is ONE send (status line,
    headers and body together) on a socket with TCP_NODELAY. Headers and body in two sends on a
    Nagle socket wait for the client's delayed ACK: ~40 ms per request that real WinRM does not add."""
    import socket
    import socketserver
    import threading

    from hyperv_operator.simulator.wsman import server as server_module

    sends: list[bytes] = []
    nodelay: list[int] = []
    guard = threading.Lock()
    real_write = socketserver._SocketWriter.write  # type: ignore[attr-defined]
    real_setup = server_module._Handler.setup

    ports: list[int] = []  # this test's server only: the session's simulated host serves the operator meanwhile

    def counting_write(self: object, data: bytes) -> int:
        sock = getattr(self, "_sock", None)
        if sock is not None and ports and sock.getsockname()[1] in ports:
            with guard:
                sends.append(bytes(data))
        return int(real_write(self, data))

    def recording_setup(self: server_module._Handler) -> None:
        real_setup(self)
        if ports and self.connection.getsockname()[1] in ports:
            with guard:
                nodelay.append(self.connection.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))

    monkeypatch.setattr(socketserver._SocketWriter, "write", counting_write)  # type: ignore[attr-defined]
    monkeypatch.setattr(server_module._Handler, "setup", recording_setup)

    host = host_module.SimulatedHost()
    host.add_folder("\\\\FS\\VMSHARE")
    tls = generate_tls(tmp_path_factory.mktemp("tls-wire"))
    server = WSManServer(host, username="hvadmin", password="pw").start(tls=tls.server_pair)
    ports.append(server.port)
    c = WinRMClient(
        WinRMSettings(
            server="127.0.0.1", port=server.port, auth="basic", username="hvadmin", password="pw",
            ca_bundle=str(tls.ca_cert), read_timeout=10, operation_timeout=8,
        )
    )
    try:
        for _ in range(3):
            asyncio.run(c.run([cmdlets.get_all_vms()]))
    finally:
        c.close_sync()
        server.stop()
    assert server.request_count >= 8  # open the pool (2) + 3 pipelines (2 each)
    assert len(sends) == server.request_count, [s[:40] for s in sends]
    assert all(s.startswith(b"HTTP/1.1 ") for s in sends)
    bodies = [s.split(b"\r\n\r\n", 1)[1] for s in sends]
    assert all(b"Envelope" in b for b in bodies)  # the body travelled in the same write as the headers
    assert nodelay and all(nodelay), nodelay


@pytest.fixture
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WSManServer, WinRMClient]]:
    host = host_module.SimulatedHost()
    host.add_folder("\\\\FS\\VMSHARE")
    tls = generate_tls(tmp_path_factory.mktemp("tls-pools"))
    server = WSManServer(host, username="hvadmin", password="pw").start(tls=tls.server_pair)
    c = WinRMClient(
        WinRMSettings(
            server="127.0.0.1", port=server.port, auth="basic", username="hvadmin", password="pw",
            ca_bundle=str(tls.ca_cert), read_timeout=10, operation_timeout=8, max_connections=3,
        )
    )
    yield server, c
    c.close_sync()
    server.stop()


def test_a_batch_goes_on_after_a_failed_statement_as_on_windows(fresh: tuple[WSManServer, WinRMClient]) -> None:
    """Windows runs a batch's next statement after a statement-terminating error (PowerShell.cs
    BatchInvocationWorkItem): on the wire the pipeline Completes with the failures in the error stream
    and the others' output in the output stream. The client raises the first failure."""
    from pypsrp.powershell import PowerShell, PSInvocationState, RunspacePool
    from pypsrp.wsman import WSMan

    from hyperv_operator.hyperv.winrm import add_statements

    server, client = fresh
    share = "\\\\FS\\VMSHARE"
    batch = [cmdlets.new_directory(share + "\\a"), cmdlets.get_vhd(share + "\\missing.vhdx"),
             cmdlets.new_directory(share + "\\b"), cmdlets.get_vhd(share + "\\other.vhdx")]
    wsman = WSMan("127.0.0.1", port=server.port, ssl=True, auth="basic", username="hvadmin", password="pw",
                  cert_validation=False, no_proxy=True)
    with RunspacePool(wsman) as pool:
        ps = PowerShell(pool)
        add_statements(ps, batch)
        output = ps.invoke()
        assert ps.state == PSInvocationState.COMPLETED and not ps.had_errors
        assert len(ps.streams.error) == 2
        assert len(output) == 2  # the two folders New-Item made
    flags = asyncio.run(client.run([cmdlets.test_paths([share + "\\a", share + "\\b", share + "\\c"])]))
    assert [f.value for f in flags] == [True, True, False]
    with pytest.raises(PermanentHostError) as info:
        asyncio.run(client.run([cmdlets.new_directory(share + "\\c"), cmdlets.get_vhd(share + "\\missing.vhdx"),
                                cmdlets.get_vhd(share + "\\other.vhdx")]))
    assert "missing.vhdx" in f"{info.value.message} {info.value.target}"
    flags = asyncio.run(client.run([cmdlets.test_paths([share + "\\c"])]))
    assert [f.value for f in flags] == [True]


def test_calls_overlap_on_several_shells_and_a_probe_passes_busy_vm_work(
    fresh: tuple[WSManServer, WinRMClient],
) -> None:
    """3 VM calls at once open 3 shells (one per RunspacePool) and run side by side; a probe sent
    while all 3 are held by a slow host still answers first, on its own reserved shell."""
    server, c = fresh

    async def scenario() -> tuple[list[str], int]:
        server.delay_next(1.5, n=3)  # the 3 VM calls' first requests are held by the host
        order: list[str] = []

        async def vm(i: int) -> None:
            await c.run([cmdlets.get_all_vms()])
            order.append(f"vm{i}")

        tasks = [asyncio.create_task(vm(i)) for i in range(3)]
        while server.request_count < 3:
            await asyncio.sleep(0.01)
        probe = await c.probe()
        order.append("probe" if probe.host_name else "probe-empty")
        await asyncio.gather(*tasks)
        return order, len(server.shells)

    order, shells = asyncio.run(scenario())
    assert order[0] == "probe", order
    assert c.max_in_use == 3 and c.pools_opened == 4  # 3 VM shells + the probe's
    assert shells == 4


def test_a_command_slow_on_one_shell_does_not_hold_another_shells_pipeline(
    fresh: tuple[WSManServer, WinRMClient],
) -> None:
    """On Windows each WinRM shell is a host process of its own (wsmprovhost.exe), so a cmdlet that
    takes long in one session does not hold another session's pipeline (before, the simulated host
    ran one pipeline at a time across all shells: one slow drift check stalled every VM's work)."""
    server, c = fresh
    c.run_sync([cmdlets.test_path("C:\\warm")])  # one shell open and idle
    release, reached = threading.Event(), threading.Event()
    assert isinstance(server.executor, host_module.SimulatedHost)
    server.executor.hold("Get-VM", release, reached=reached, timeout=10)
    slow = threading.Thread(target=lambda: c.run_sync([cmdlets.get_all_vms()]), daemon=True)
    slow.start()
    try:
        assert reached.wait(5)
        started = time.monotonic()
        [flag] = c.run_sync([cmdlets.test_path("C:\\x")])  # on the other shell
        took = time.monotonic() - started
    finally:
        release.set()
        slow.join(10)
    assert flag.value is False
    assert took < 3, f"the second shell's pipeline waited {took:.1f} s for the held one"


def test_a_closed_client_is_a_retry_never_a_permanent_failure(fresh: tuple[WSManServer, WinRMClient]) -> None:
    """A HyperVHost or Secret edit closes the host's client while VMs still use it: their calls
    (queued, in flight or later) must come back as transient errors, never as PermanentHostError."""
    from hyperv_operator.hyperv.errors import ClientClosedError, TransientHostError

    server, c = fresh

    async def scenario() -> list[BaseException | object]:
        await c.run([cmdlets.get_all_vms()])  # pools open
        server.delay_next(0.5, n=1)
        in_flight = asyncio.create_task(c.run([cmdlets.get_all_vms()]))
        while server.request_count < 3:
            await asyncio.sleep(0.01)
        await c.close()
        after = c.run([cmdlets.get_all_vms()])
        return list(await asyncio.gather(in_flight, after, return_exceptions=True))

    results = asyncio.run(scenario())
    for result in results:
        assert isinstance(result, ClientClosedError), results
        assert isinstance(result, TransientHostError) and not isinstance(result, PermanentHostError)


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


@pytest.fixture
def impatient(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[WSManServer, WinRMClient]]:
    """One VM connection and a short read timeout, so the next call must reuse the same slot."""
    host = host_module.SimulatedHost()
    host.add_folder("\\\\FS\\VMSHARE")
    tls = generate_tls(tmp_path_factory.mktemp("tls-timeout"))
    server = WSManServer(host, username="hvadmin", password="pw").start(tls=tls.server_pair)
    c = WinRMClient(
        WinRMSettings(
            server="127.0.0.1", port=server.port, auth="basic", username="hvadmin", password="pw",
            ca_bundle=str(tls.ca_cert), read_timeout=1.5, operation_timeout=1, max_connections=1,
        )
    )
    yield server, c
    c.close_sync()
    server.stop()


def test_a_reply_lost_to_a_read_timeout_retires_the_connection(impatient: tuple[WSManServer, WinRMClient]) -> None:
    """The host answers a Receive after the client's read timeout: the output in that answer is gone
    (a Receive without an OperationID is never replayed, MS-WSMV 3.1.4.1.39), so the pipeline can
    never be completed on that shell. The call fails as a retryable read timeout at once, the client
    never asks that pipeline for more (a second Receive would get the reply's continuation: pypsrp's
    `FragmentError: Fragment Id: 3 != Expected 0`), the abandoned shell is deleted on the host, and
    every later call runs on a fresh shell and gets exactly its own output."""
    from hyperv_operator.hyperv.errors import HostUnreachableError

    server, c = impatient
    files = {f"{FOLDER}\\f{i}.txt": (f"file {i} " * 40_000).encode() for i in range(3)}  # ~300 KB each

    async def write_all() -> None:
        await c.run([cmdlets.new_directory(FOLDER)])
        for path, content in files.items():
            await c.run([cmdlets.write_file(path, content)])

    asyncio.run(write_all())
    [first_shell] = list(server.shells)
    big = f"{FOLDER}\\f0.txt"
    taken = threading.Event()
    server.delay_next_output_reply(4.0, taken=taken)
    with pytest.raises(HostUnreachableError) as caught:
        asyncio.run(c.run([cmdlets.read_text_file(big)]))
    assert taken.is_set()
    assert caught.value.fq_error_id == "WinRMReadTimeout", caught.value
    lost = server.received[-1].pipeline_id
    # Command + the one Receive whose answer came too late; no Receive re-sent on that pipeline.
    assert server.pipeline_requests[str(lost).upper()] == 2, server.pipeline_requests

    async def read_all() -> list[list[object]]:
        results = []
        for path in [*files, *files]:
            [text] = await c.run([cmdlets.read_text_file(path)])
            results.append([path, text.value])
        return results

    for path, text in asyncio.run(read_all()):
        assert text == files[str(path)].decode(), f"{path} got another reply"
    deadline = time.monotonic() + 5
    while first_shell in server.shells and time.monotonic() < deadline:
        time.sleep(0.05)
    assert first_shell not in server.shells, "the abandoned shell was left open on the host"
    assert len(server.shells) == 1 and c.pools_opened == 2


def test_concurrent_calls_each_get_their_own_reply_around_a_lost_one(
    impatient: tuple[WSManServer, WinRMClient],
) -> None:
    """Six reads of six different files on three shells at once, one answer lost to a read timeout:
    that call alone fails (retryable), every other call returns its own file, and the next round on
    the same client succeeds in full."""
    from dataclasses import replace

    from hyperv_operator.hyperv.errors import HostUnreachableError

    server, single = impatient
    c = WinRMClient(replace(single.settings, max_connections=3))
    files = {f"{FOLDER}\\c{i}.txt": (f"content {i} " * 15_000).encode() for i in range(6)}  # ~150 KB each

    async def write_all() -> None:
        await c.run([cmdlets.new_directory(FOLDER)])
        await asyncio.gather(*(c.run([cmdlets.write_file(p, b)]) for p, b in files.items()))

    async def read_all() -> list[object]:
        return list(await asyncio.gather(*(c.run([cmdlets.read_text_file(p)]) for p in files),
                                         return_exceptions=True))

    try:
        asyncio.run(write_all())
        server.delay_next_output_reply(4.0)
        first = asyncio.run(read_all())
        second = asyncio.run(read_all())
    finally:
        c.close_sync()
    failed = [r for r in first if isinstance(r, BaseException)]
    assert len(failed) == 1 and isinstance(failed[0], HostUnreachableError), first
    assert failed[0].fq_error_id == "WinRMReadTimeout"
    for path, result in zip(files, first, strict=True):
        if not isinstance(result, BaseException):
            assert isinstance(result, list) and result[0].value == files[path].decode(), f"{path} got another reply"
    for path, result in zip(files, second, strict=True):
        assert isinstance(result, list) and result[0].value == files[path].decode(), (path, result)
    assert c.pools_retired == 1


def test_a_cancelled_call_keeps_its_shell_until_its_reply_is_complete(
    impatient: tuple[WSManServer, WinRMClient],
) -> None:
    """The handler awaiting a call is cancelled while its reply is on the way (a slow answer, still
    within the read timeout): the next call on the only connection waits for that reply to finish
    and then gets its own output, never the cancelled call's."""
    server, c = impatient
    files = {f"{FOLDER}\\k{i}.txt": (f"kept {i} " * 20_000).encode() for i in range(2)}
    first, second = files

    async def scenario() -> str:
        await c.run([cmdlets.new_directory(FOLDER)])
        for path, content in files.items():
            await c.run([cmdlets.write_file(path, content)])
        taken = threading.Event()
        server.delay_next_output_reply(0.5, taken=taken)  # well below the 1.5 s read timeout
        cancelled = asyncio.create_task(c.run([cmdlets.read_text_file(first)]))
        while not taken.is_set():
            await asyncio.sleep(0.01)
        cancelled.cancel()
        [text] = await c.run([cmdlets.read_text_file(second)])
        assert cancelled.cancelled()
        return str(text.value)

    assert asyncio.run(scenario()) == files[second].decode()
    assert c.pools_opened == 1 and c.pools_retired == 0
