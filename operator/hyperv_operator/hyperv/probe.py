"""The host probe: three cheap, read-only commands batched into one pipeline.

    Hyper-V\\Get-VMHost                                  -> ComputerName, VirtualMachinePath,
                                                           VirtualHardDiskPath, LogicalProcessorCount,
                                                           MemoryCapacity (Microsoft.HyperV.PowerShell.VMHost)
    Microsoft.PowerShell.Core\\Get-Module -Name Hyper-V   -> PSModuleInfo (Name, Version); the module is
                                                           loaded by the Get-VMHost before it
    Microsoft.PowerShell.Management\\Get-PSDrive -Name C -PSProvider FileSystem
                                                        -> PSDriveInfo (Name, Root, Free, Used)

A host (or simulator) that lacks one of them answers CommandNotFound; the probe then runs them one by
one and reports the missing ones instead of failing.

This module depends on the command contract only (never on the WinRM client), so any `HyperVClient`
can be probed: `probe_client` uses a client's own `probe` (the WinRM client's reserved connection)
or else sends the same statements through its `run`.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from hyperv_operator.hyperv.client import HyperVClient
from hyperv_operator.hyperv.commands import HostObject, Statement, cmd, pipe
from hyperv_operator.hyperv.errors import PermanentHostError


@dataclass(frozen=True)
class HostProbe:
    """What a cheap check of a host found."""

    endpoint: str
    host_name: str | None = None
    hyperv_version: str | None = None
    virtual_machine_path: str | None = None
    virtual_hard_disk_path: str | None = None
    logical_processors: int | None = None
    memory_bytes: int | None = None
    drive: str | None = None
    free_bytes: int | None = None
    missing_commands: tuple[str, ...] = ()
    """Probe commands the host does not know (CommandNotFound); their fields stay None."""
    latency_seconds: float = 0.0

CORE = "Microsoft.PowerShell.Core\\"
MGMT = "Microsoft.PowerShell.Management\\"
HYPERV = "Hyper-V\\"

PROBE_CMDLETS: frozenset[str] = frozenset({HYPERV + "Get-VMHost", CORE + "Get-Module", MGMT + "Get-PSDrive"})


def get_vm_host() -> Statement:
    return pipe(cmd(HYPERV + "Get-VMHost"))


def get_hyperv_module() -> Statement:
    return pipe(cmd(CORE + "Get-Module", Name="Hyper-V"))


def get_drive(drive: str) -> Statement:
    return pipe(cmd(MGMT + "Get-PSDrive", Name=drive.rstrip(":\\/"), PSProvider="FileSystem"))


def probe_statements(drive: str) -> list[Statement]:
    return [get_vm_host(), get_hyperv_module(), get_drive(drive)]


def split_outputs(outputs: Sequence[HostObject]) -> list[list[HostObject] | None]:
    """Assign a batched probe's outputs to its three statements by type."""
    hosts = [o for o in outputs if o.is_a("VMHost")]
    modules = [o for o in outputs if o.is_a("PSModuleInfo")]
    drives = [o for o in outputs if o.is_a("PSDriveInfo")]
    return [hosts, modules, drives]


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None


def build_probe(
    endpoint: str,
    drive: str,
    statements: Sequence[Statement],
    results: Sequence[list[HostObject] | None],
    *,
    latency: float,
) -> HostProbe:
    missing = tuple(s.commands[0].name for s, r in zip(statements, results, strict=False) if r is None)
    padded = list(results) + [None] * (3 - len(results))
    host = padded[0][0] if padded[0] else None
    module = padded[1][0] if padded[1] else None
    drive_info = padded[2][0] if padded[2] else None
    return HostProbe(
        endpoint=endpoint,
        host_name=_str(host.get("ComputerName")) if host else None,
        hyperv_version=_str(module.get("Version")) if module else None,
        virtual_machine_path=_str(host.get("VirtualMachinePath")) if host else None,
        virtual_hard_disk_path=_str(host.get("VirtualHardDiskPath")) if host else None,
        logical_processors=_int(host.get("LogicalProcessorCount")) if host else None,
        memory_bytes=_int(host.get("MemoryCapacity")) if host else None,
        drive=drive.rstrip(":\\/"),
        free_bytes=_int(drive_info.get("Free")) if drive_info else None,
        missing_commands=missing,
        latency_seconds=latency,
    )


def _command_not_found(err: PermanentHostError) -> bool:
    return err.fq_error_id.startswith("CommandNotFoundException")


def probe_sync(run: Callable[[Sequence[Statement]], list[HostObject]], endpoint: str, drive: str = "C") -> HostProbe:
    """The probe over a synchronous `run`: one batch; one statement at a time only if the host lacks a command."""
    started = time.monotonic()
    statements = probe_statements(drive)
    results: list[list[HostObject] | None]
    try:
        results = split_outputs(run(statements))
    except PermanentHostError as err:
        if not _command_not_found(err):
            raise
        results = []
        for statement in statements:  # find out which ones exist, one at a time
            try:
                results.append(run([statement]))
            except PermanentHostError as inner:
                if not _command_not_found(inner):
                    raise
                results.append(None)
    return build_probe(endpoint, drive, statements, results, latency=time.monotonic() - started)


async def probe_async(
    run: Callable[[Sequence[Statement]], Awaitable[list[HostObject]]], endpoint: str, drive: str = "C"
) -> HostProbe:
    """`probe_sync` over an asynchronous `run` (any `HyperVClient`)."""
    started = time.monotonic()
    statements = probe_statements(drive)
    results: list[list[HostObject] | None]
    try:
        results = split_outputs(await run(statements))
    except PermanentHostError as err:
        if not _command_not_found(err):
            raise
        results = []
        for statement in statements:
            try:
                results.append(await run([statement]))
            except PermanentHostError as inner:
                if not _command_not_found(inner):
                    raise
                results.append(None)
    return build_probe(endpoint, drive, statements, results, latency=time.monotonic() - started)


async def probe_client(client: HyperVClient, endpoint: str, drive: str = "C") -> HostProbe:
    """Probe any client: its own `probe` when it has one (WinRM: a connection VM work cannot take),
    otherwise the same read-only batch through `run`. Never "reachable" without a round trip."""
    own: Callable[..., Awaitable[Any]] | None = getattr(client, "probe", None)
    if own is not None:
        result = await own(drive)
        if isinstance(result, HostProbe):
            return result
    return await probe_async(client.run, endpoint, drive)
