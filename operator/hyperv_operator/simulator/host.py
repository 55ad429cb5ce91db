"""The simulated Hyper-V host: runs statements (pipelines of typed commands) against the in-memory
model, like a PowerShell runspace with `-ErrorAction Stop`, plus hooks for tests and the demo.

Time: simulated seconds = (clock() - start) * time_scale. All durations and throughputs are in
simulated time; tests pass a fake clock and advance it, nothing sleeps except `set_latency`.

Every statement runs its commands in order; each command runs under the host's (re-entrant) lock,
after the model has been brought to the current simulated time. A failed statement does not stop
the batch (as on Windows, see `execute`); a statement's first failing command ends that statement
(`CommandError`, a `CmdletError` that also carries the failing command's text), and once the batch is
through a `BatchError` carries every failure.
Commands are logged (`call_log`) and announced to `on_command` callbacks as they are reached;
a callback that raises aborts the batch after the command's effects (a dying operator).
Faults (`fail_next`) are consumed when a command with that name is about to run, after its
parameters bound; a faulted command changes nothing — except `DiskFull` on the background copy
script, which (like a real full disk) lets the copy start and fail half-way: status Failed.
`set_fault_rate` adds seeded random faults on top: each matching command fails with probability
`rate` (`random_faults` lists them).
"""

from __future__ import annotations

import hashlib
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from hyperv_operator.hyperv.commands import Command, HostObject, Statement
from hyperv_operator.hyperv.scripts import script_name
from hyperv_operator.simulator import identity
from hyperv_operator.simulator.cmdlets import (
    LEGACY_SCRIPT_IDS,
    POWERSHELL_EXE,
    SCRIPTS,
    Cmdlet,
    Context,
    bind_named,
    bind_pipeline,
    check_complete,
    not_recognized,
    primitive,
    resolve,
    unknown_script,
)
from hyperv_operator.simulator.errors import CmdletError, run_batch
from hyperv_operator.simulator.model import (
    DEFAULT_VIRTUAL_SIZE,
    DISK_FULL_MESSAGE,
    DYNAMIC_BLOCK_SIZE,
    HYPERV_EXCEPTION,
    IO_EXCEPTION,
    FileNode,
    HostModel,
    MiB,
    ModelError,
    Vhd,
    Volume,
    canonical_path,
    leaf_name,
    new_guid,
    parent_path,
)

FAULT_KINDS = ("ObjectInUse", "DiskFull", "AccessDenied", "Transient", "SharingViolation")
MAX_RECEIVED_OBJECT_MB = 10
"""A remoting endpoint's default MaximumReceivedObjectSizeMB (about_Session_Configurations); a larger
parameter value fails the whole command (dpaulson45/ExchangeLogCollector#29 shows the trace)."""


def _value_bytes(value: object) -> int:
    if isinstance(value, str):
        return 2 * len(value)  # UTF-16 in the deserialized object
    if isinstance(value, (tuple, list)):
        return sum(_value_bytes(v) for v in value)
    return 8

CommandCallback = Callable[[str, dict[str, object], str], None]


class CommandError(CmdletError):
    """A CmdletError raised by `SimulatedHost.execute`, with the failing command's text."""

    def __init__(self, error: CmdletError, *, command: str) -> None:
        super().__init__(error.message, category=error.category, fq_error_id=error.fq_error_id,
                         target=error.target, exception_type=error.exception_type)
        self.command = command


def _split_name(name: str) -> tuple[str | None, str]:
    module, _, short = name.rpartition("\\")
    return (module.lower() or None), short.lower()


class SimulatedHost:
    def __init__(
        self,
        *,
        clock: Callable[[], float] = time.monotonic,
        time_scale: float = 1.0,
        copy_bytes_per_second: float = 75e6,
        merge_bytes_per_second: float = 300e6,
        guest_write_bytes_per_second: float = 1.5e6,
        host_name: str = "HV01",
        free_bytes: int = 2 * 10**12,
        shutdown_seconds: float = 5.0,
        epoch: datetime | None = None,
        sleep: Callable[[float], None] = time.sleep,
        offload_bytes_per_second: float | None = None,
    ) -> None:
        self._clock = clock
        self._start = clock()
        self._scale = time_scale
        self._sleep = sleep
        self._lock = threading.RLock()
        self._model = HostModel(
            epoch=epoch or datetime.now(UTC), copy_bytes_per_second=copy_bytes_per_second,
            merge_bytes_per_second=merge_bytes_per_second, guest_write_bytes_per_second=guest_write_bytes_per_second,
            host_name=host_name, free_bytes=free_bytes, shutdown_seconds=shutdown_seconds)
        if offload_bytes_per_second is not None:
            self._model.offload_rate = offload_bytes_per_second
        self._log: list[tuple[str, dict[str, object]]] = []
        self._faults: list[list[Any]] = []  # [module|None, short name, kind, remaining]
        self._latency: dict[tuple[str | None, str], float] = {}
        self._holds: list[tuple[tuple[str | None, str], threading.Event, threading.Event | None, float,
                                Callable[[dict[str, object]], bool] | None]] = []
        self._callbacks: list[CommandCallback] = []
        self._fault_rate = 0.0
        self._fault_rng = random.Random(0)
        self._fault_kinds: tuple[str, ...] = ("ObjectInUse",)
        self._fault_commands: set[tuple[str | None, str]] | None = None
        self._fault_per = "command"
        self._batch = threading.local()  # per-batch mode: position of the current command, target
        self.second_hop: identity.SecondHop | None = None
        """When set, WinRM sessions reach file servers only with a delegated credential (see `identity`)."""
        self._create_returns: list[int] = []
        self.random_faults: list[tuple[str, str]] = []
        """(qualified command, kind) of every fault injected by `set_fault_rate`, in order."""

    # --- running commands ----------------------------------------------------------------------

    def simulated_seconds(self) -> float:
        return (self._clock() - self._start) * self._scale

    def execute(self, statements: Sequence[Statement]) -> list[HostObject]:
        """Run a batch as Windows does: after a failed statement the next one still runs (PowerShell.cs
        BatchInvocationWorkItem; see errors.run_batch). Once the batch is through, a BatchError carries
        every failure (it is the first) and the output of the statements that succeeded."""
        self._draw_batch_fault(statements)
        return run_batch(statements, self._run_statement)

    def _run_statement(self, statement: Statement) -> list[HostObject]:
        items: list[HostObject] | None = None
        for index, command in enumerate(statement.commands):
            name = self._display_name(command)
            params: dict[str, object] = dict(command.parameters)
            self._batch.position = getattr(self._batch, "position", -1) + 1
            delay = self._latency_for(name)
            if delay > 0:
                self._sleep(delay)
            self._wait_for_release(name, params)
            self._batch.block = (0.0, None)
            with self._lock:
                self._model.advance(self.simulated_seconds())
                self._log.append((name, dict(params)))
                for callback in list(self._callbacks):
                    callback(name, dict(params), "before")
                try:
                    self._check_size(command)
                    items = self._run_command(command, None if index == 0 else (items or []))
                except CmdletError as err:
                    shown = str(command) if not command.is_script else str(command).replace("<script>", name, 1)
                    raise CommandError(err, command=shown) from None
                for callback in list(self._callbacks):
                    callback(name, dict(params), "after")
            seconds, then_fail = self._batch.block
            if seconds > 0:  # a synchronous cmdlet waiting (Stop-VM -Force): the session is held, not the host
                deadline = self.simulated_seconds() + seconds
                while self.simulated_seconds() < deadline:
                    self._sleep(max(0.001, (deadline - self.simulated_seconds()) / self._scale))
                with self._lock:
                    self._model.advance(self.simulated_seconds())
            if then_fail is not None:
                raise CommandError(then_fail, command=str(command))
        return items or []

    def _check_size(self, command: Command) -> None:
        size = sum(_value_bytes(v) for _, v in command.parameters) + _value_bytes(command.name)
        limit = MAX_RECEIVED_OBJECT_MB * 1024 * 1024
        if size > limit:
            raise CmdletError(
                "Sending data to a remote command failed with the following error message: The current deserialized "
                "object size of the data received from the remote client computer exceeded the allowed maximum object "
                f"size. The current deserialized object size is {size}. The allowed maximum object size is {limit}. "
                "For more information, see the about_Remote_Troubleshooting Help topic.",
                category="OperationStopped", fq_error_id="JobFailure",
                exception_type="System.Management.Automation.Remoting.PSRemotingTransportException")

    @staticmethod
    def _script_name(text: str) -> str | None:
        return script_name(text) or LEGACY_SCRIPT_IDS.get(hashlib.sha256(text.encode("utf-8")).hexdigest())

    @classmethod
    def _display_name(cls, command: Command) -> str:
        if command.is_script:
            return cls._script_name(command.name) or "<unknown script>"
        return command.name

    def _run_command(self, command: Command, upstream: list[HostObject] | None) -> list[HostObject]:
        spec: Cmdlet
        if command.is_script:
            sname = self._script_name(command.name)
            if sname is None or sname not in SCRIPTS:
                raise unknown_script(command.name)
            spec = SCRIPTS[sname]
        else:
            spec = resolve(command.name)
            if spec.module == "Hyper-V" and not self._model.hyperv_module:
                raise not_recognized(command.name)  # the module is not installed (seflerZ/oneclick-gpu-pv#4)
        named = bind_named(spec, command.parameters)
        bounds = []
        for item in [None] if upstream is None else upstream:
            bound = named if item is None else bind_pipeline(spec, named, item)
            check_complete(spec, bound)
            bounds.append(bound)
        ctx = Context(self._model, spec)
        if spec.type_name == "StartBackgroundCopy" and self._create_returns:
            ctx.extra["create_return"] = self._create_returns.pop(0)
        if command.is_script and spec.type_name == "StartBackgroundCopy" and not _names_powershell(command.name):
            # Win32_Process.Create of a path that names no file returns 9, Path Not Found (Create method
            # documentation); a control character cannot be in a Windows file name at all (Naming Files).
            ctx.extra["create_return"] = 9
        if bounds:
            kind = self._take_fault(spec)
            if kind is None:
                kind = self._random_fault(spec)
            if kind == "DiskFull" and spec.name in SCRIPTS:
                ctx.fault_disk_full = True
            elif kind is not None:
                raise self._fault_error(kind, spec)
        out: list[HostObject] = []
        for bound in bounds:
            if spec.name == "Test-Path" and self.second_hop is not None:
                # Test-Path answers $false for a path it may not reach, not an error, and answers each
                # path of its String[] on its own (TestPathCommand.ProcessRecord: one result per path).
                key = "LiteralPath" if bound.get("LiteralPath") else "Path"
                for path in list(bound.get(key) or []):
                    one = {**bound, key: [path]}
                    if self._second_hop_denied(one) is not None:
                        out.append(primitive(False))
                        continue
                    try:
                        out.extend(spec.impl(ctx, one))
                    except ModelError as err:
                        raise ctx.error(err) from None
                continue
            denied = self._second_hop_denied(bound)
            if denied is not None:
                raise self._unc_access_denied(spec, denied)
            try:
                out.extend(spec.impl(ctx, bound))
            except ModelError as err:
                raise ctx.error(err) from None
        if "block_seconds" in ctx.extra:
            self._batch.block = (float(ctx.extra["block_seconds"]), ctx.extra.get("then_fail"))
        return out

    def _second_hop_denied(self, bound: Any) -> str | None:
        """The first UNC path among the bound values that this session's identity cannot reach."""
        if self.second_hop is None:
            return None
        who = identity.current()
        values = bound.values() if isinstance(bound, dict) else []
        for value in values:
            for item in value if isinstance(value, (list, tuple)) else [value]:
                server = identity.unc_server(item) if isinstance(item, str) else None
                if server is not None and not self.second_hop.may_reach(who, server):
                    return str(item)
        return None

    @staticmethod
    def _unc_access_denied(spec: Cmdlet, path: str) -> CmdletError:
        if spec.module == "Hyper-V":
            return CmdletError(f"Failed to open the virtual hard disk '{path}'. General access denied error "
                               f"(0x80070005).", category="PermissionDenied",
                               fq_error_id=f"AccessDenied,{spec.type_name}", target=path,
                               exception_type=HYPERV_EXCEPTION)
        ids = {"Get-Item": "ItemExistsUnauthorizedAccessError", "Get-ChildItem": "DirUnauthorizedAccessError",
               "Get-Content": "GetContentReaderUnauthorizedAccessError",
               "New-Item": "NewItemUnauthorizedAccessError", "Remove-Item": "RemoveItemUnauthorizedAccessError"}
        return CmdletError(f"Access to the path '{path}' is denied.", category="PermissionDenied",
                           fq_error_id=f"{ids.get(spec.name, 'System.UnauthorizedAccessException')},{spec.type_name}",
                           target=path, exception_type="System.UnauthorizedAccessException")

    # --- faults, latency, callbacks ------------------------------------------------------------

    def fail_next(self, command_name: str, kind: str, count: int = 1) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; one of {FAULT_KINDS}")
        module, short = _split_name(command_name)
        with self._lock:
            self._faults.append([module, short, kind, count])

    def clear_faults(self) -> None:
        """Forget every pending `fail_next` fault and turn `set_fault_rate` off."""
        with self._lock:
            self._faults.clear()
            self._fault_rate = 0.0

    def pending_faults(self) -> list[tuple[str, str, int]]:
        """(command, kind, remaining) of the `fail_next` faults not consumed yet."""
        with self._lock:
            return [(f"{m}\\{n}" if m else n, str(k), int(r)) for m, n, k, r in self._faults if r > 0]

    def set_fault_rate(
        self,
        rate: float,
        seed: int = 0,
        kinds: Sequence[str] = ("ObjectInUse",),
        commands: Iterable[str] | None = None,
        per: str = "command",
    ) -> None:
        """From now on each command (or each of `commands`, module-qualified or not; scripts by their
        name, e.g. StartBackgroundCopy) fails with probability `rate` with one of `kinds`, drawn from a
        generator seeded with `seed`. `set_fault_rate(0)` turns it off. Explicit `fail_next` faults
        come first. Like those, a random fault is raised after binding and changes nothing.

        `per="batch"`: `rate` is per `execute` call (one pipeline / WinRM request) instead: a faulted
        batch fails at one of its matching commands, chosen uniformly; the commands before it ran."""
        if per not in ("command", "batch"):
            raise ValueError(f"per must be 'command' or 'batch', not {per!r}")
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"fault rate {rate} is not between 0 and 1")
        unknown = [k for k in kinds if k not in FAULT_KINDS]
        if unknown or not kinds:
            raise ValueError(f"unknown fault kinds {unknown or kinds!r}; use some of {FAULT_KINDS}")
        with self._lock:
            self._fault_rate = rate
            self._fault_rng = random.Random(seed)
            self._fault_kinds = tuple(kinds)
            self._fault_commands = None if commands is None else {_split_name(c) for c in commands}
            self._fault_per = per

    def _fault_applies(self, name: str) -> bool:
        if self._fault_commands is None:
            return True
        module, short = _split_name(name)
        return any(f_short == short and (f_module is None or module is None or f_module == module)
                   for f_module, f_short in self._fault_commands)

    def _draw_batch_fault(self, statements: Sequence[Statement]) -> None:
        self._batch.position = -1
        self._batch.target = None
        with self._lock:
            if self._fault_per != "batch" or self._fault_rate <= 0.0:
                return
            names = [self._display_name(c) for s in statements for c in s.commands]
            matching = [i for i, name in enumerate(names) if self._fault_applies(name)]
            if matching and self._fault_rng.random() < self._fault_rate:
                self._batch.target = (self._fault_rng.choice(matching), self._fault_rng.choice(self._fault_kinds))

    def _random_fault(self, spec: Cmdlet) -> str | None:
        if self._fault_rate <= 0.0:
            return None
        if self._fault_per == "batch":
            target = getattr(self._batch, "target", None)
            if target is None or target[0] != getattr(self._batch, "position", -1):
                return None
            self._batch.target = None
            self.random_faults.append((spec.qualified if spec.module else spec.name, target[1]))
            return str(target[1])
        if self._fault_commands is not None and not any(
            f_short == spec.name.lower() and (f_module is None or f_module == spec.module.lower())
            for f_module, f_short in self._fault_commands
        ):
            return None
        if self._fault_rng.random() >= self._fault_rate:
            return None
        kind = self._fault_rng.choice(self._fault_kinds)
        self.random_faults.append((spec.qualified if spec.module else spec.name, kind))
        return kind

    def set_latency(self, command_name: str, seconds: float) -> None:
        with self._lock:
            self._latency[_split_name(command_name)] = seconds

    def hold(self, command_name: str, release: threading.Event, *, reached: threading.Event | None = None,
             timeout: float = 60.0, when: Callable[[dict[str, object]], bool] | None = None) -> None:
        """Test control, not a Windows behaviour: the next command of that name (whose parameters
        satisfy `when`, if given) waits (wall time, outside the host's lock, like `set_latency`) until
        `release` is set or `timeout` passes; only that one. It models a host that is slow at a moment
        the test chooses (a round trip in flight while the test acts); `reached` is set when that
        command starts waiting. Shells run side by side, so a hold stalls only its own session: `when`
        picks the command of the VM the test means among other VMs' on the same host."""
        with self._lock:
            self._holds.append((_split_name(command_name), release, reached, timeout, when))

    def _wait_for_release(self, name: str, params: dict[str, object]) -> None:
        module, short = _split_name(name)
        with self._lock:
            index = next((i for i, ((f_module, f_short), _, _, _, when) in enumerate(self._holds)
                          if f_short == short and (f_module is None or module is None or f_module == module)
                          and (when is None or when(params))), None)
            if index is None:
                return
            _, release, reached, timeout, _ = self._holds.pop(index)
        if reached is not None:
            reached.set()
        release.wait(timeout)

    def on_command(self, callback: CommandCallback) -> None:
        with self._lock:
            self._callbacks.append(callback)

    def _latency_for(self, name: str) -> float:
        module, short = _split_name(name)
        with self._lock:
            for (f_module, f_short), seconds in self._latency.items():
                if f_short == short and (f_module is None or module is None or f_module == module):
                    return seconds
        return 0.0

    def _take_fault(self, spec: Cmdlet) -> str | None:
        for fault in self._faults:
            f_module, f_short, kind, remaining = fault
            if remaining > 0 and f_short == spec.name.lower() and (f_module is None or f_module == spec.module.lower()):
                fault[3] = remaining - 1
                return str(kind)
        return None

    def _fault_error(self, kind: str, spec: Cmdlet) -> CmdletError:
        hyperv = spec.module == "Hyper-V"
        if kind == "ObjectInUse":
            return CmdletError("The operation cannot be performed while the object is in use.",
                               category="ResourceBusy", fq_error_id=f"ObjectInUse,{spec.type_name}",
                               exception_type=HYPERV_EXCEPTION if hyperv else IO_EXCEPTION)
        if kind == "AccessDenied":
            return CmdletError("You do not have the required permission to complete this task. Contact the "
                               f"administrator of the authorization policy for the computer "
                               f"'{self._model.host_name}'.", category="PermissionDenied",
                               fq_error_id=f"AccessDenied,{spec.type_name}",
                               exception_type=HYPERV_EXCEPTION if hyperv else "System.UnauthorizedAccessException")
        if kind == "SharingViolation":
            # New-VHD -Differencing of a parent another New-VHD has open at the same moment (several
            # differencing disks made at once from one base): microsoft/openvmm#1600 shows the text.
            target = "the virtual hard disk"
            return CmdletError(f"Failed to create {target}.\nThe system failed to create {target}: The process "
                               "cannot access the file because it is being used by another process. (0x80070020).",
                               category="NotSpecified", fq_error_id=f"OperationFailed,{spec.type_name}",
                               exception_type=HYPERV_EXCEPTION if hyperv else IO_EXCEPTION)
        if kind == "Transient":
            return CmdletError("The operation has timed out.", category="OperationTimeout",
                               fq_error_id=f"OperationTimeout,{spec.type_name}",
                               exception_type="System.TimeoutException")
        return CmdletError(DISK_FULL_MESSAGE, category="WriteError", fq_error_id=f"IOException,{spec.type_name}",
                           exception_type=IO_EXCEPTION)

    # --- setup hooks ---------------------------------------------------------------------------

    def _now(self) -> HostModel:
        self._model.advance(self.simulated_seconds())
        return self._model

    def add_folder(self, path: str) -> None:
        with self._lock:
            self._now().ensure_folder(path, create_root=True)

    def add_switch(self, name: str) -> None:
        with self._lock:
            self._model.add_switch(name)

    def add_base_disk(self, path: str, size_bytes: int, *, acl_read_only: bool = True,
                      virtual_size: int | None = None) -> None:
        """A Dynamic .vhdx of `size_bytes` on disk (what a copy moves); virtual size 127 GiB unless
        given (or `size_bytes` rounded up to MiB if larger). Read-only attribute always set."""
        with self._lock:
            model = self._now()
            canon = canonical_path(path)
            if model.exists(canon):
                raise ValueError(f"{canon} already exists")
            parent = parent_path(canon)
            if parent is None:
                raise ValueError(f"{canon} is a root")
            model.ensure_folder(parent, create_root=True)
            size = virtual_size or max(DEFAULT_VIRTUAL_SIZE, -(-size_bytes // MiB) * MiB)
            name = leaf_name(canon).encode()
            blocks = {0: b"BOOT:" + name, 1: b"OS-1:" + name, 2: b"OS-2:" + name, 97: b"DATA:" + name}
            vhd = Vhd("Dynamic", size, DYNAMIC_BLOCK_SIZE, new_guid().upper(), new_guid(), blocks=blocks)
            model.add_file(FileNode(canon, model.now, model.now, float(size_bytes), read_only=True,
                                    acl_protected=acl_read_only, vhd=vhd))

    def add_windows_base(self, path: str, size_bytes: int, *, generalized: bool = True,
                         files: dict[str, bytes] | None = None, acl_read_only: bool = True,
                         generation: int = 2) -> None:
        """A Windows image (issue 14): `add_base_disk` plus the partitions of a Generation 2 install
        (EFI system FAT32, MSR, the Windows NTFS volume, recovery). The Windows volume has the folders
        a Windows installation has (Windows\\Panther, Windows\\System32\\Sysprep, ...); `generalized`:
        sysprepped with /generalize, so its next first boot runs Windows Setup's specialize pass.
        `files`: more files on the Windows volume by path from its root (e.g. a cached
        Windows\\Panther\\unattend.xml left by sysprep). `generation` 1: an MBR install instead (the
        System Reserved NTFS partition and the Windows partition, both Get-Partition Type IFS)."""
        self.add_base_disk(path, size_bytes, acl_read_only=acl_read_only)
        with self._lock:
            node = self._now().vhd_node(path)
            assert node.vhd is not None
            windows = Volume("NTFS", "Windows", dict(files or {}), "Basic" if generation == 2 else "IFS",
                             {"windows", "windows\\panther", "windows\\system32", "windows\\system32\\sysprep",
                              "windows\\system32\\config", "users", "program files"}, generalized)
            node.vhd.os_volumes = [Volume("FAT32", "", {}, "System", {"efi"}), Volume("", "", {}, "Reserved"),
                                   windows, Volume("NTFS", "Recovery", {}, "Recovery", {"recovery"})] \
                if generation == 2 else [Volume("NTFS", "System Reserved", {}, "IFS", {"boot"}), windows]

    def os_files(self, path: str) -> dict[str, bytes]:
        """The Windows volume's files as the disk chain from `path` presents them (issue 14)."""
        with self._lock:
            model = self._now()
            volumes = model.os_view(model.vhd_node(path)) or []
            windows = next((v for v in volumes if "windows" in v.folders), None)
            return dict(windows.files) if windows is not None else {}

    def guest_answer_file(self, vm_id: str) -> str | None:
        """Where the simulated Windows Setup found the answer file it applied (None: none)."""
        with self._lock:
            return self._now().vm(vm_id).answer_file

    # --- inspection hooks ----------------------------------------------------------------------

    def set_vm_state(self, vm_id: str, state: str) -> None:
        """A user pausing or saving the VM in Hyper-V Manager (Paused, Saved) or resuming it (Running)."""
        if state not in ("Paused", "Saved", "Running"):
            raise ValueError(state)
        with self._lock:
            model = self._now()
            vm = model.vm(vm_id)
            if vm.state not in ("Running", "Paused", "Saved"):
                raise ValueError(f"VM is {vm.state}")
            if state == "Saved":
                vm.started_at = None
            vm.state = state
            model.refresh_opens()

    def lose_storage(self, vm_id: str, lost: bool = True) -> None:
        """The VM's storage becomes unreachable (share down): State shows RunningCritical / OffCritical."""
        with self._lock:
            self._now().vm(vm_id).critical = lost

    def set_guest(self, vm_id: str, *, shutdown_service: bool | None = None,
                  shutdown_seconds: float | None = None, integration_services: bool | None = None,
                  boot_seconds: float | None = None, dhcp: bool | None = None, hostname: str | None = None,
                  os_name: str | None = None) -> None:
        """The guest: whether its shutdown integration service answers, how long it takes to shut down;
        whether it runs integration services at all (heartbeat, KVP, addresses), how long it boots,
        whether DHCP gives it an address, its hostname and OS (issue 14)."""
        with self._lock:
            vm = self._now().vm(vm_id)
            if shutdown_service is not None:
                vm.shutdown_service = shutdown_service
            if shutdown_seconds is not None:
                vm.shutdown_seconds = shutdown_seconds
            if integration_services is not None:
                vm.integration_services = integration_services
            if boot_seconds is not None:
                vm.boot_seconds = boot_seconds
            if dhcp is not None:
                vm.dhcp = dhcp
            if hostname is not None:
                vm.guest_hostname = hostname
            if os_name is not None:
                vm.guest_os = os_name

    def guest_first_boot_files(self, vm_id: str) -> dict[str, bytes]:
        """What the guest agent read from its configuration disk at first boot (issue 14), by file name."""
        with self._lock:
            return dict(self._now().vm(vm_id).first_boot_files)

    def network_adapters(self, vm_id: str) -> list[dict[str, Any]]:
        """The VM's adapters as Hyper-V holds them (issue 14): name, switch, MAC, static or not, VLAN."""
        with self._lock:
            return [{"name": a.name, "switch": a.switch_name, "mac": a.mac, "static": a.static_mac,
                     "vlan": a.vlan_id} for a in self._now().vm(vm_id).adapters]

    def set_guest_agent(self, vm_id: str, agent: str | None) -> None:
        """The guest's first-boot agent: cloud-init, cloudbase-init, or None (the base has none)."""
        with self._lock:
            self._now().vm(vm_id).guest_agent = agent

    def set_guest_defaults(self, *, boot_seconds: float | None = None, network_seconds: float | None = None) -> None:
        """Every guest's boot time and DHCP delay (issue 14)."""
        with self._lock:
            model = self._now()
            if boot_seconds is not None:
                model.guest_boot_seconds = boot_seconds
            if network_seconds is not None:
                model.guest_network_seconds = network_seconds

    def protect_folder(self, path: str) -> None:
        """An ACL on `path` that lets the host read but not create files (a read-only base share)."""
        with self._lock:
            self._model.read_only_folders.add(canonical_path(path).lower())

    def set_ui_culture(self, culture: str) -> None:
        """The host's display language ("en-US", "de-DE"): the names of its integration services."""
        from hyperv_operator.simulator.cmdlets import INTEGRATION_SERVICE_NAMES

        if culture not in INTEGRATION_SERVICE_NAMES:
            raise ValueError(f"no integration service names for {culture!r}")
        with self._lock:
            self._model.ui_culture = culture

    def set_hyperv_module(self, installed: bool) -> None:
        """Install or remove the Hyper-V PowerShell module: without it every Hyper-V\\ cmdlet is CommandNotFound."""
        with self._lock:
            self._model.hyperv_module = installed

    def hold_elsewhere(self, path: str, other_host: str = "HV02") -> None:
        """Another host on the same shared storage has this disk open (e.g. a VM there uses it)."""
        with self._lock:
            self._model.held_elsewhere[canonical_path(path).lower()] = other_host

    def firmware(self, vm_id: str) -> tuple[bool, str]:
        with self._lock:
            vm = self._now().vm(vm_id)
            return vm.secure_boot, vm.secure_boot_template

    def guest_write(self, vm_id: str, block: int, data: bytes) -> None:
        with self._lock:
            model = self._now()
            model.guest_write(model.vm(vm_id), block, data)

    def guest_view(self, vm_id: str) -> dict[int, bytes]:
        with self._lock:
            model = self._now()
            vm = model.vm(vm_id)
            if not vm.drives:
                return {}
            return model.view(model.vhd_node(vm.drives[0].path))

    def disk_fingerprint(self, path: str) -> tuple[str, str, str]:
        with self._lock:
            model = self._now()
            return model.fingerprint(model.vhd_node(path))

    def vms(self) -> list[dict[str, Any]]:
        with self._lock:
            model = self._now()
            return [{
                "Name": vm.name, "Id": vm.id, "State": model.vm_state(vm), "Status": model.vm_status(vm),
                "Uptime": model.uptime(vm), "Path": vm.path, "Notes": vm.notes, "CheckpointType": vm.checkpoint_type,
                "Generation": vm.generation, "MemoryStartup": vm.memory_startup,
                "ProcessorCount": vm.processor_count, "SwitchName": vm.switch_name,
                "HardDrives": [d.path for d in vm.drives], "Snapshots": [s.name for s in vm.snapshots],
            } for vm in model.vms.values()]

    def files(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            model = self._now()
            out: dict[str, dict[str, Any]] = {}
            for node in model.files.values():
                info: dict[str, Any] = {"Length": node.size, "IsReadOnly": node.read_only,
                                        "AclReadOnly": node.acl_protected,
                                        "Kind": "vhd" if node.vhd else "text" if node.text is not None else "file"}
                if node.text is not None:
                    info["Text"] = node.text
                if node.vhd is not None:
                    info.update(VhdType=node.vhd.vhd_type, Size=node.vhd.size, ParentPath=node.vhd.parent_path,
                                DiskIdentifier=node.vhd.disk_identifier, DataWriteGuid=node.vhd.data_write_guid,
                                ParentDataWriteGuid=node.vhd.parent_write_guid, WriteOpen=node.vhd.write_open,
                                Blocks=len(node.vhd.blocks))
                out[node.path] = info
            return out

    def folders(self) -> list[str]:
        with self._lock:
            model = self._now()
            return sorted([*model.roots.values(), *(f.path for f in model.folders.values())], key=str.lower)

    def copy_jobs(self) -> list[dict[str, Any]]:
        with self._lock:
            model = self._now()
            return [{"ProcessId": j.pid, "Source": j.source, "Destination": j.destination, "PartialPath": j.partial,
                     "StatusPath": j.status_path, "State": j.state, "BytesCopied": int(j.copied),
                     "BytesTotal": j.total, "Error": j.error, "Offloaded": j.offloaded, "HostBytes": j.host_bytes}
                    for j in model.copies.values()]

    def free_bytes(self) -> int:
        with self._lock:
            return self._now().free_bytes()

    def set_free_bytes(self, free: int) -> None:
        """Test control: the volume has `free` bytes from now on (fill it up, or free space)."""
        with self._lock:
            model = self._now()
            model.capacity = int(model.used_bytes_float()) + free

    def call_log(self) -> list[tuple[str, dict[str, object]]]:
        with self._lock:
            return [(name, dict(params)) for name, params in self._log]

    def processes(self) -> list[dict[str, Any]]:
        with self._lock:
            model = self._now()
            return [{"ProcessId": p.pid, "Name": p.name, "CommandLine": p.command_line,
                     "CreationDate": model.date(p.created)} for p in model.processes.values()]

    def enable_copy_offload(self, root: str) -> None:
        """Mark a share (`\\\\FS\\SHARE`) or volume as offload-capable (ODX storage, SMB server-side
        copy): copies with source and destination under it are offloaded."""
        with self._lock:
            self._model.offload_roots.add(canonical_path(root))

    def fail_process_create(self, return_value: int = 9) -> None:
        """The next StartBackgroundCopy's Win32_Process.Create returns `return_value` (9: path not found,
        what a bare `powershell.exe` can get, ansible/ansible#70655)."""
        with self._lock:
            self._create_returns.append(return_value)

    def coincide_next_status_read(self, order: str) -> None:
        """The next read of a running copy's status file coincides with the worker's next progress
        write (instead of by timing luck): "read-first" (Get-Content holds the file through the write)
        or "write-first" (Test-Path / Get-Content arrive while the write is under way). See
        HostModel.observe_status_read."""
        if order not in ("read-first", "write-first"):
            raise ValueError(f"order must be read-first or write-first, not {order!r}")
        with self._lock:
            self._model.status_read_collision = order

    # --- drift ---------------------------------------------------------------------------------

    def reboot(self) -> None:
        """The host restarts: every process ends (copy workers included), VMs are off, PIDs restart."""
        with self._lock:
            self._now().reboot()

    def kill_process(self, pid: int) -> None:
        """Someone (or a crash) ended a process out of band."""
        with self._lock:
            self._now().stop_process(pid)

    def stop_vm_out_of_band(self, vm_id: str) -> None:
        """Someone pulled the plug (Hyper-V Manager, a host reboot): the VM is Off at once."""
        with self._lock:
            model = self._now()
            model.stop_vm(model.vm(vm_id), turn_off=True)

    def delete_vm_out_of_band(self, vm_id: str) -> None:
        """Someone deleted the VM: turned off, configuration gone; disks and folders stay."""
        with self._lock:
            model = self._now()
            vm = model.vm(vm_id)
            model.stop_vm(vm, turn_off=True)
            model.delete_vm(vm)

    def write_disk_out_of_band(self, path: str, block: int, data: bytes) -> None:
        """Someone mounted the disk read-write outside Hyper-V's VMs (Mount-VHD, Disk Management) and wrote
        to it: the block changes, the VHDX header gets a new DataWriteGuid (so children created before no
        longer match their parent: the chain is corrupted) and the file's LastWriteTime moves. The
        read-only attribute does not stop an administrator who clears it first; it is set again after."""
        with self._lock:
            model = self._now()
            node = model.vhd_node(path)
            assert node.vhd is not None
            node.vhd.blocks[block] = data
            node.vhd.data_write_guid = new_guid()
            node.modified = model.now


_WORKER_EXE = re.compile(r"\$exe\s*=\s*Join-Path\s+\$env:SystemRoot\s+'([^']*)'", re.IGNORECASE)


def _names_powershell(script_text: str) -> bool:
    """The start script's `$exe` (Join-Path $env:SystemRoot '<relative path>') is the host's
    powershell.exe, character for character (case aside); a script without that line is not judged here."""
    found = _WORKER_EXE.search(script_text)
    if found is None:
        return True
    return f"C:\\Windows\\{found.group(1)}".lower() == POWERSHELL_EXE.lower()
