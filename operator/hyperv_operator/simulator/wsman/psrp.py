"""The PSRP side of the simulated WinRM host: psrpcore's server objects in front of a cmdlet executor.

One `ShellSession` per WinRS shell (= one PSRP RunspacePool). A CREATE_PIPELINE message is decoded
by psrpcore, rebuilt into the operator's `Statement`s of `Command`s (typed values, exactly as they
arrived on the wire) and run by the executor on a worker thread; its `HostObject`s are written back
as PSRP objects, a `CmdletError` becomes a failed pipeline carrying an ErrorRecord the way Windows
sends a terminating error (PIPELINE_STATE Failed + ExceptionAsErrorRecord).

Common parameters (`-ErrorAction`, `-Verbose`, ...) are accepted for every command and stripped
before the executor sees the statements; they stay visible in the received-command log.
"""

from __future__ import annotations

import collections
import datetime
import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from psrpcore import (
    CreatePipelineEvent,
    GetAvailableRunspacesEvent,
    GetCommandMetadataEvent,
    PSRPPayload,
    ResetRunspaceStateEvent,
    ServerPipeline,
    ServerRunspacePool,
    SetMaxRunspacesEvent,
    SetMinRunspacesEvent,
    StreamType,
)
from psrpcore.types import (
    ErrorCategory,
    ErrorCategoryInfo,
    ErrorRecord,
    NETException,
    PSInt64,
    PSInvocationState,
    PSNoteProperty,
    PSObject,
    PSString,
    PSUInt64,
)

from hyperv_operator.hyperv.commands import (
    SWITCH,
    Command,
    HostObject,
    Int64,
    ParameterValue,
    Statement,
    UInt64,
)
from hyperv_operator.simulator.errors import BatchError, CmdletError
from hyperv_operator.simulator.identity import SessionIdentity, acting_as

log = logging.getLogger(__name__)

COMMON_PARAMETERS = frozenset(
    name.lower()
    for name in (
        "ErrorAction",
        "WarningAction",
        "InformationAction",
        "ProgressAction",
        "Verbose",
        "Debug",
        "ErrorVariable",
        "WarningVariable",
        "InformationVariable",
        "OutVariable",
        "OutBuffer",
        "PipelineVariable",
    )
)
"""PowerShell's common parameters: every cmdlet accepts them, so the server strips them."""


class Executor(Protocol):
    def execute(self, statements: Sequence[Statement]) -> list[HostObject]: ...


class WireValueError(Exception):
    """A value on the wire that .NET would refuse to deserialize or bind."""

    def __init__(self, message: str, *, exception_type: str, category: str, fq_error_id: str) -> None:
        super().__init__(message)
        self.message = message
        self.exception_type = exception_type
        self.category = category
        self.fq_error_id = fq_error_id


# --- wire -> contract ----------------------------------------------------------------------------


def convert_value(value: Any) -> ParameterValue:
    """A deserialized psrpcore parameter value -> the contract's ParameterValue."""
    if value is None:
        return SWITCH
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, PSInt64):
        return Int64(int(value))
    if isinstance(value, PSUInt64):
        return UInt64(int(value))
    if isinstance(value, int):
        return int(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)  # <BA>: a byte[]
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return tuple(str(convert_value(v)) if not isinstance(v, str) else str(v) for v in value)
    if isinstance(value, uuid.UUID):
        return str(value)
    # Anything else (float, hashtable, ...) is not part of the contract: pass its text.
    return str(value)


def statements_from_pipeline(commands: Sequence[Any]) -> list[Statement]:
    """psrpcore `Command`s (with end_of_statement markers) -> the contract's Statements."""
    statements: list[Statement] = []
    current: list[Command] = []
    for raw in commands:
        params: list[tuple[str, ParameterValue]] = []
        for name, value in raw.parameters:
            if name is None:
                raise WireValueError(
                    f"A positional parameter cannot be found that accepts argument '{value}'.",
                    exception_type="System.Management.Automation.ParameterBindingException",
                    category="InvalidArgument",
                    fq_error_id="PositionalParameterNotFound",
                )
            params.append((str(name), convert_value(value)))
        current.append(Command(str(raw.command_text), tuple(params), is_script=bool(raw.is_script)))
        if raw.end_of_statement:
            statements.append(Statement(tuple(current)))
            current = []
    if current:
        statements.append(Statement(tuple(current)))
    return statements


def strip_common_parameters(statements: Sequence[Statement]) -> list[Statement]:
    return [
        Statement(
            tuple(
                Command(
                    c.name, tuple((k, v) for k, v in c.parameters if k.lower() not in COMMON_PARAMETERS), c.is_script
                )
                for c in s.commands
            )
        )
        for s in statements
    ]


# --- contract -> wire ----------------------------------------------------------------------------


def to_ps_value(value: Any) -> Any:
    """A HostObject property value -> something psrpcore serializes like Windows would."""
    if isinstance(value, HostObject):
        return host_object_to_ps(value)
    if isinstance(value, (list, tuple)):
        return [to_ps_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_ps_value(v) for k, v in value.items()}
    if isinstance(value, datetime.datetime) and value.tzinfo is None:
        return value.replace(tzinfo=datetime.UTC)
    return value


EXTENDED_NOTES = frozenset({
    "PSPath", "PSParentPath", "PSChildName", "PSDrive", "PSProvider", "PSIsContainer", "ReadCount", "Mode",
    "BaseName", "Target", "LinkType", "VersionInfo", "Used", "Free",
})
"""Members PowerShell adds through its Extended Type System (provider notes, script properties): they
travel in <MS>, not with the .NET object's own (adapted) properties in <Props> (MS-PSRP 2.2.5.2.9)."""

_PRIMITIVE_TYPE_NAMES = frozenset({"System.String", "System.Boolean", "System.Int32", "System.Int64"})


def host_object_to_ps(obj: HostObject) -> Any:
    """HostObject -> what psrpcore serializes as Windows PowerShell 5.1 would.

    - a primitive without properties: a bare primitive (<S>, <B>, ...);
    - a primitive WITH properties (a string from Get-Content carrying PSPath, ...): an Extended
      Primitive Object, <Obj><S>text</S><MS>notes</MS></Obj> with no type names and no adapted
      properties (MS-PSRP 2.2.5.2.5 and 2.2.5.1);
    - anything else: an <Obj> with its type names, adapted properties in <Props>, ETS members in <MS>.
    """
    if obj.value is not None and not isinstance(obj.value, HostObject) and (
        not obj.properties or (obj.type_names and obj.type_names[0] in _PRIMITIVE_TYPE_NAMES)
    ):
        if not obj.properties:
            return to_ps_value(obj.value)
        if not isinstance(obj.value, str):
            raise TypeError(f"extended primitive of type {type(obj.value).__name__} is not modelled")
        text = PSString(obj.value)
        for name, value in obj.properties.items():
            text.PSObject.extended_properties.append(PSNoteProperty(name, value=to_ps_value(value)))
        return text
    ps = PSObject()
    ps.PSObject.type_names = list(obj.type_names) or ["System.Management.Automation.PSCustomObject", "System.Object"]
    if ps.PSObject.type_names[-1] != "System.Object":
        ps.PSObject.type_names.append("System.Object")
    file_info = obj.is_a("FileSystemInfo")
    for name, value in obj.properties.items():
        target = ps.PSObject.extended_properties if name in EXTENDED_NOTES else ps.PSObject.adapted_properties
        wire = to_ps_value(value)
        if file_info and name == "Length" and isinstance(value, int):
            wire = PSInt64(value)  # FileInfo.Length is a long: <I64>, whatever its size
        target.append(PSNoteProperty(name, value=wire))
    if obj.value is not None:
        ps.PSObject.to_string = str(obj.value)
    elif "FullName" in obj.properties and obj.is_a("FileSystemInfo"):
        ps.PSObject.to_string = str(obj.properties["FullName"])  # FileInfo.ToString(): the path it was opened with
    return ps


class _WindowsCategoryInfo(ErrorCategoryInfo):
    """ErrorCategoryInfo whose text is formatted like .NET's CategoryInfo.GetMessage()."""

    def __str__(self) -> str:
        return (
            f"{self.Category.name}: ({self.TargetName or ''}:{self.TargetType or ''}) "
            f"[{self.Activity or ''}], {self.Reason or ''}"
        )


def _activity_for(fq_error_id: str, statements: Sequence[Statement]) -> str:
    """The failing cmdlet's name (ErrorCategory_Activity), guessed from the FullyQualifiedErrorId."""
    names = [c.name.rsplit("\\", 1)[-1] for s in statements for c in s.commands if not c.is_script]
    suffix = fq_error_id.rsplit(",", 1)[-1].rsplit(".", 1)[-1].lower()
    for name in names:
        if name.replace("-", "").lower() == suffix:
            return name
    return names[0] if names else ""


def build_error_record(
    message: str,
    *,
    category: str,
    fq_error_id: str,
    target: str,
    exception_type: str,
    activity: str,
) -> ErrorRecord:
    exception = NETException(Message=message, HResult=-2146233087)
    type_names = [exception_type] if exception_type and exception_type != "System.Exception" else []
    type_names += ["System.SystemException", "System.Exception", "System.Object"]
    exception.PSObject.type_names = type_names
    exception.PSObject.to_string = f"{exception_type or 'System.Exception'}: {message}"
    try:
        cat = ErrorCategory[category]
    except KeyError:
        cat = ErrorCategory.NotSpecified
    info = _WindowsCategoryInfo(
        Category=cat,
        Activity=activity,
        Reason=(exception_type or "Exception").rsplit(".", 1)[-1],
        TargetName=target,
        TargetType="String" if target else "",
    )
    return ErrorRecord(
        Exception=exception,
        CategoryInfo=info,
        TargetObject=target or None,
        FullyQualifiedErrorId=fq_error_id,
    )


# --- sessions ------------------------------------------------------------------------------------


@dataclass
class ReceivedPipeline:
    """What arrived for one pipeline: the statements exactly as decoded (common parameters included)."""

    shell_id: str
    pipeline_id: str
    statements: tuple[Statement, ...] = ()
    error: str = ""
    received_at: float = field(default_factory=time.time)
    """Wall-clock arrival (the bench's --trace puts the host's pipelines on the API writes' time line)."""


@dataclass
class PipelineSession:
    pipeline: ServerPipeline
    command_id: str
    started: bool = False
    finished: bool = False
    requests: int = 0
    received: ReceivedPipeline | None = None
    outputs: list[Any] = field(default_factory=list)


class ShellSession:
    """One shell = one PSRP RunspacePool. All psrpcore access happens under `self.cond`."""

    def __init__(
        self,
        shell_id: str,
        resource_uri: str,
        executor: Executor,
        execute_lock: threading.Lock,
        on_received: Callable[[ReceivedPipeline], None],
    ) -> None:
        self.shell_id = shell_id
        self.resource_uri = resource_uri
        self.pool = ServerRunspacePool()
        self.cond = threading.Condition()
        self.queues: dict[uuid.UUID | None, collections.deque[bytes]] = collections.defaultdict(collections.deque)
        self.pipelines: dict[str, PipelineSession] = {}
        self.created = datetime.datetime.now(datetime.UTC)
        self._executor = executor
        self._execute_lock = execute_lock
        self._on_received = on_received
        self.identity: SessionIdentity | None = None
        """Who opened the shell (set by the WinRM server); pipelines run as this identity."""

    # -- data in --

    def feed(self, data: bytes, pipeline: PipelineSession | None = None) -> None:
        """Give received PSRP fragments to psrpcore and act on the resulting events. Holds the lock."""
        with self.cond:
            self.pool.receive_data(
                PSRPPayload(data, StreamType.default, pipeline.pipeline.pipeline_id if pipeline else None)
            )
            while True:
                try:
                    event = self.pool.next_event()
                except ValueError as err:  # e.g. an <I32> outside Int32 range: .NET refuses it too
                    self._fail_undecodable(pipeline, err)
                    continue
                if event is None:
                    break
                self._handle_event(event)
            self._flush()
            self.cond.notify_all()

    def new_pipeline(self, pipeline_id: uuid.UUID, command_id: str) -> PipelineSession:
        with self.cond:
            session = PipelineSession(ServerPipeline(self.pool, pipeline_id), command_id)
            self.pipelines[command_id.upper()] = session
            return session

    def _handle_event(self, event: Any) -> None:
        if isinstance(event, CreatePipelineEvent):
            session = self._session_for(event.pipeline_id)
            if session is None:
                return
            try:
                raw = statements_from_pipeline(event.pipeline.commands)
            except WireValueError as err:
                self._fail(session, err.message, err.category, err.fq_error_id, "", err.exception_type, [])
                return
            session.received = ReceivedPipeline(self.shell_id, session.command_id, tuple(raw))
            self._on_received(session.received)
            self._start(session, raw)
        elif isinstance(event, GetCommandMetadataEvent):
            session = self._session_for(event.pipeline_id)
            if session is not None:
                self._fail(
                    session,
                    "GetCommandMetadata is not supported by the simulated host.",
                    "NotImplemented",
                    "NotSupported",
                    "",
                    "System.NotSupportedException",
                    [],
                )
        elif isinstance(event, (SetMaxRunspacesEvent, SetMinRunspacesEvent, ResetRunspaceStateEvent)):
            self.pool.runspace_availability_response(event.ci, True)
        elif isinstance(event, GetAvailableRunspacesEvent):
            self.pool.runspace_availability_response(event.ci, 1)

    def _session_for(self, pipeline_id: uuid.UUID | None) -> PipelineSession | None:
        for session in self.pipelines.values():
            if session.pipeline.pipeline_id == pipeline_id:
                return session
        return None

    def _fail_undecodable(self, pipeline: PipelineSession | None, err: Exception) -> None:
        text = str(err)
        message = "Value was either too large or too small for an Int32." if "PSInt " in text else text
        log.info("undecodable PSRP message for pipeline %s: %s", pipeline.command_id if pipeline else "-", text)
        if pipeline is None:
            return
        pipeline.received = ReceivedPipeline(self.shell_id, pipeline.command_id, (), error=message)
        self._on_received(pipeline.received)
        self._fail(
            pipeline,
            message,
            "InvalidData",
            "System.OverflowException" if "PSInt " in text else "DeserializationFailed",
            "",
            "System.OverflowException" if "PSInt " in text else "System.Runtime.Serialization.SerializationException",
            [],
        )

    # -- execution --

    def _start(self, session: PipelineSession, raw: list[Statement]) -> None:
        session.started = True
        session.pipeline.state = PSInvocationState.Running  # Windows sends no Running state message
        statements = strip_common_parameters(raw)
        thread = threading.Thread(
            target=self._run, args=(session, statements), name=f"psrp-{session.command_id[:8]}", daemon=True
        )
        thread.start()

    def _run(self, session: PipelineSession, statements: list[Statement]) -> None:
        outputs: list[HostObject] = []
        error: CmdletError | None = None
        failed_statements: list[CmdletError] = []
        try:
            with self._execute_lock, acting_as(self.identity):
                outputs = list(self._executor.execute(statements))
        except BatchError as err:
            # Windows: the batch ran to its end; each statement-terminating error went to the error
            # stream, the output of the others to the output stream, and the pipeline Completed.
            outputs = err.output
            failed_statements = err.errors
        except CmdletError as err:
            error = err
        except Exception as err:  # a bug in the executor still comes back as an ErrorRecord
            log.exception("executor failed")
            error = CmdletError(
                str(err) or type(err).__name__,
                category="NotSpecified",
                fq_error_id=type(err).__name__,
                exception_type="System.Management.Automation.RuntimeException",
            )
        with self.cond:
            if session.finished:  # stopped meanwhile
                return
            if error is not None:
                self._fail(
                    session,
                    error.message,
                    error.category,
                    error.fq_error_id,
                    error.target,
                    error.exception_type,
                    statements,
                )
            else:
                try:
                    for obj in outputs:
                        session.pipeline.write_output(host_object_to_ps(obj))
                    for failure in failed_statements:
                        record = build_error_record(
                            failure.message, category=failure.category, fq_error_id=failure.fq_error_id,
                            target=failure.target, exception_type=failure.exception_type,
                            activity=_activity_for(failure.fq_error_id, statements))
                        session.pipeline.write_error(record.Exception, record.CategoryInfo, record.TargetObject,
                                                     record.FullyQualifiedErrorId)
                    session.pipeline.complete()
                except Exception as err:
                    log.exception("cannot serialize outputs")
                    session.pipeline.state = PSInvocationState.Running
                    self._fail(
                        session,
                        f"Cannot serialize output: {err}",
                        "InvalidResult",
                        "SerializationFailed",
                        "",
                        "System.Runtime.Serialization.SerializationException",
                        statements,
                    )
                session.finished = True
            self._flush()
            self.cond.notify_all()

    def _fail(
        self,
        session: PipelineSession,
        message: str,
        category: str,
        fq_error_id: str,
        target: str,
        exception_type: str,
        statements: Sequence[Statement],
    ) -> None:
        record = build_error_record(
            message,
            category=category,
            fq_error_id=fq_error_id,
            target=target,
            exception_type=exception_type,
            activity=_activity_for(fq_error_id, statements),
        )
        session.pipeline._change_state(PSInvocationState.Failed, record)
        session.finished = True
        self._flush()

    def stop(self, session: PipelineSession) -> None:
        with self.cond:
            if not session.finished and session.pipeline.state == PSInvocationState.Running:
                session.pipeline.stop()
            session.finished = True
            self._flush()
            self.cond.notify_all()

    def terminate(self, session: PipelineSession) -> None:
        with self.cond:
            session.finished = True
            self.pipelines.pop(session.command_id.upper(), None)
            self.pool.pipeline_table.pop(session.pipeline.pipeline_id, None)
            self.queues.pop(session.pipeline.pipeline_id, None)
            self.cond.notify_all()

    # -- data out --

    def _flush(self) -> None:
        """Move psrpcore's send buffer into per-target queues (pool or pipeline)."""
        while True:
            payload = self.pool.data_to_send(32 * 1024)
            if payload is None:
                return
            self.queues[payload.pipeline_id].append(payload.data)

    def take(self, pipeline: PipelineSession | None, max_bytes: int) -> list[bytes]:
        """Queued fragments for the pool or a pipeline (caller holds the lock)."""
        queue = self.queues.get(pipeline.pipeline.pipeline_id if pipeline else None)
        chunks: list[bytes] = []
        total = 0
        while queue and (not chunks or total + len(queue[0]) <= max_bytes):
            chunk = queue.popleft()
            chunks.append(chunk)
            total += len(chunk)
        return chunks

    def has_data(self, pipeline: PipelineSession | None) -> bool:
        return bool(self.queues.get(pipeline.pipeline.pipeline_id if pipeline else None))
