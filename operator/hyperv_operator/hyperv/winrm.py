"""The production Hyper-V client: pypsrp (WinRM / PSRP) to a Windows host, or to the simulator.

One pypsrp `RunspacePool` per client, opened lazily on the first call and reused across calls; a
`threading.Lock` serialises its use (pypsrp is not thread-safe) and every call runs through
`asyncio.to_thread`, so kopf's event loop never blocks. A pool broken by a timeout, a reset or a
WinRM fault is discarded and rebuilt on the next call (pypsrp issue #21).

Every command travels structured (`add_cmdlet` / `add_script` + `add_parameter`): user values are
typed CLIXML arguments and never PowerShell text. `Int64`/`UInt64` are tagged `<I64>`/`<U64>`,
switches have no value, cmdlets get `-ErrorAction Stop`, statements are separated with
`add_statement`. A batch is one pipeline: one Command and (for a quick pipeline) one Receive =
2 HTTP requests per `run()` once the pool is open (opening costs 2 more: Create + Receive).

Failures map to `hyperv.errors`: ErrorRecords through `errors.classify`; transport problems to
`HostUnreachableError` (refused, timeout, reset: transient) or `PermanentHostError` (authentication
failed, TLS verification failed, bad settings), each with a sentence naming the reason. Passwords
never appear in messages or logs.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import re
import threading
import time
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from hyperv_operator.hyperv.commands import (
    HostObject,
    Int64,
    ParameterValue,
    Statement,
    Switch,
    UInt64,
)
from hyperv_operator.hyperv.errors import (
    HostError,
    HostUnreachableError,
    PermanentHostError,
    TransientHostError,
    classify,
)

log = logging.getLogger(__name__)

AUTH_METHODS = frozenset({"negotiate", "kerberos", "ntlm", "credssp", "basic", "certificate"})
ENCRYPTION_MODES = frozenset({"auto", "always", "never"})
_ENCRYPTING_AUTHS = frozenset({"negotiate", "kerberos", "ntlm", "credssp"})

# ErrorCategory enum (System.Management.Automation.ErrorCategory), index = value.
_ERROR_CATEGORIES = [
    "NotSpecified",
    "OpenError",
    "CloseError",
    "DeviceError",
    "DeadlockDetected",
    "InvalidArgument",
    "InvalidData",
    "InvalidOperation",
    "InvalidResult",
    "InvalidType",
    "MetadataError",
    "NotImplemented",
    "NotInstalled",
    "ObjectNotFound",
    "OperationStopped",
    "OperationTimeout",
    "SyntaxError",
    "ParserError",
    "PermissionDenied",
    "ResourceBusy",
    "ResourceExists",
    "ResourceUnavailable",
    "ReadError",
    "WriteError",
    "FromStdErr",
    "SecurityError",
    "ProtocolError",
    "ConnectionError",
    "AuthenticationError",
    "LimitsExceeded",
    "QuotaExceeded",
    "NotEnabled",
]

_WSMAN_TIMED_OUT = 2150858793
_WSMAN_SHELL_NOT_FOUND = 2150858843


@dataclass(frozen=True)
class WinRMSettings:
    """How to reach one Hyper-V host over WinRM."""

    server: str
    port: int | None = None
    """Default 5986 with ssl, 5985 without."""
    ssl: bool = True
    auth: str = "negotiate"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cert_pem: str | None = None
    """certificate auth: client certificate (PEM path)."""
    key_pem: str | None = None
    """certificate auth: its private key (PEM path)."""
    ca_bundle: str | None = None
    """PEM CA bundle to verify the host's certificate; overrides `cert_validation` when set."""
    cert_validation: bool = True
    configuration_name: str = "Microsoft.PowerShell"
    """The PSSession configuration (a JEA endpoint name for least privilege)."""
    connection_timeout: float = 30
    read_timeout: float = 30
    operation_timeout: float = 20
    """WS-Management OperationTimeout: how long one Receive may wait; must be below read_timeout."""
    encryption: str = "auto"
    allow_unencrypted: bool = False
    """Plain HTTP without message encryption (Basic/certificate over http) needs this explicit opt-in."""
    reconnection_retries: int = 0
    reconnection_backoff: float = 2.0
    """pypsrp retries a Receive that hit a read timeout after sleeping backoff*(2^n-1) seconds."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (5986 if self.ssl else 5985)

    @property
    def endpoint(self) -> str:
        host = f"[{self.server}]" if ":" in self.server else self.server
        return f"{'https' if self.ssl else 'http'}://{host}:{self.effective_port}/wsman"

    def validate(self) -> None:
        problems: list[str] = []
        if not self.server:
            problems.append("server is empty")
        if self.auth not in AUTH_METHODS:
            problems.append(f"auth must be one of {', '.join(sorted(AUTH_METHODS))}, not {self.auth!r}")
        if self.encryption not in ENCRYPTION_MODES:
            problems.append(f"encryption must be auto, always or never, not {self.encryption!r}")
        if self.operation_timeout >= self.read_timeout:
            problems.append(
                f"operation_timeout ({self.operation_timeout}s) must be below read_timeout ({self.read_timeout}s)"
            )
        if self.connection_timeout <= 0 or self.operation_timeout <= 0:
            problems.append("timeouts must be positive")
        if self.auth == "certificate":
            if not self.ssl:
                problems.append("certificate auth needs ssl")
            if not self.cert_pem or not self.key_pem:
                problems.append("certificate auth needs cert_pem and key_pem")
        elif self.auth in ("basic", "ntlm", "credssp") and (not self.username or self.password is None):
            problems.append(f"{self.auth} auth needs username and password")
        if not self.ssl:
            wraps = self.auth in _ENCRYPTING_AUTHS and self.encryption != "never"
            if not wraps and not self.allow_unencrypted:
                problems.append(
                    "plain HTTP without message encryption sends everything in clear text: use ssl, an encrypting "
                    "auth (negotiate/kerberos/ntlm/credssp), or set allow_unencrypted explicitly"
                )
        elif self.encryption == "always" and self.auth not in _ENCRYPTING_AUTHS:
            problems.append(f"message encryption is not available with {self.auth} auth")
        if problems:
            raise ValueError("invalid WinRM settings for " + self.server + ": " + "; ".join(problems))

    def wsman_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for `pypsrp.wsman.WSMan`."""
        encryption = self.encryption
        if not self.ssl and self.auth not in _ENCRYPTING_AUTHS:
            encryption = "never"  # allowed by validate() only with allow_unencrypted
        kwargs: dict[str, Any] = {
            "server": self.server,
            "port": self.effective_port,
            "ssl": self.ssl,
            "auth": self.auth,
            "username": self.username,
            "password": self.password,
            "cert_validation": self.ca_bundle if self.ca_bundle else self.cert_validation,
            "connection_timeout": self.connection_timeout,
            "read_timeout": self.read_timeout,
            "operation_timeout": self.operation_timeout,
            "encryption": encryption,
            "reconnection_retries": self.reconnection_retries,
            "reconnection_backoff": self.reconnection_backoff,
            "no_proxy": True,
        }
        if self.auth == "certificate":
            kwargs["certificate_pem"] = self.cert_pem
            kwargs["certificate_key_pem"] = self.key_pem
        return kwargs


@dataclass(frozen=True)
class HostProbe:
    """What a cheap check of a host found (see `WinRMClient.probe`)."""

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


# --- statements -> pypsrp -------------------------------------------------------------------------


def wire_value(value: ParameterValue) -> Any:
    """A contract parameter value -> what pypsrp serializes as the right CLIXML type."""
    from pypsrp.serializer import TaggedValue

    if isinstance(value, Int64):
        return TaggedValue("I64", value.value)
    if isinstance(value, UInt64):
        return TaggedValue("U64", value.value)
    if isinstance(value, tuple):
        return [str(v) for v in value]
    if isinstance(value, (str, bool, int)):
        return value
    raise TypeError(f"unsupported parameter value type {type(value).__name__}")


def add_statements(ps: Any, statements: Sequence[Statement]) -> None:
    """Append the statements to a pypsrp `PowerShell`, one statement after the other."""
    for index, statement in enumerate(statements):
        if not statement.commands:
            raise ValueError("empty statement")
        if index:
            ps.add_statement()
        for command in statement.commands:
            if command.is_script:
                ps.add_script(command.name)
            else:
                ps.add_cmdlet(command.name)
            for name, value in command.parameters:
                if isinstance(value, Switch):
                    ps.add_parameter(name)
                else:
                    ps.add_parameter(name, wire_value(value))
            if not command.is_script and command.parameter("ErrorAction") is None:
                ps.add_parameter("ErrorAction", "Stop")


# --- pypsrp -> HostObject -------------------------------------------------------------------------


def _strip_deserialized(types: Sequence[str]) -> tuple[str, ...]:
    return tuple(t[len("Deserialized.") :] if t.startswith("Deserialized.") else t for t in types)


def parse_dotnet_datetime(text: str) -> datetime.datetime | str:
    """CLIXML <DT> text ('2024-01-02T03:04:05.1234567Z') -> datetime; unparsable text is returned as is."""
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$", text.strip())
    if not match:
        return text
    base, fraction, zone = match.groups()
    micro = (fraction or ".0")[1:7].ljust(6, "0")
    iso = f"{base}.{micro}" + ("+00:00" if zone == "Z" else (zone or ""))
    try:
        return datetime.datetime.fromisoformat(iso)
    except ValueError:
        return text


def _datetime_properties(obj: Any) -> set[str]:
    raw = getattr(obj, "_xml", None)
    if not raw:
        return set()
    try:
        element = ET.fromstring(raw)  # noqa: S314 - text pypsrp itself already parsed from the host
    except ET.ParseError:
        return set()
    names = set()
    for section in ("Props", "MS"):
        for child in element.findall(section):
            for prop in child:
                if prop.tag == "DT" and "N" in prop.attrib:
                    names.add(prop.attrib["N"])
    return names


def _is_enum(obj: Any) -> bool:
    return "System.Enum" in (getattr(obj, "types", None) or [])


def plain_value(value: Any) -> Any:
    """A deserialized pypsrp value -> the plain Python the HostObject contract promises."""
    from pypsrp.complex_objects import GenericComplexObject

    if isinstance(value, GenericComplexObject):
        primitive, inner = _extended_primitive(value)
        if primitive:
            return inner
        if _is_enum(value):
            return str(value.to_string) if value.to_string is not None else None
        return to_host_object(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [plain_value(v) for v in value]
    if isinstance(value, dict):
        return {plain_value(k): plain_value(v) for k, v in value.items()}
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    to_string = getattr(value, "_to_string", None)  # other pypsrp ComplexObjects (enums, ...)
    return str(to_string) if to_string is not None else str(value)


_PRIMITIVE_TYPES: dict[type, str] = {
    str: "System.String",
    bool: "System.Boolean",
    int: "System.Int32",
    float: "System.Double",
    uuid.UUID: "System.Guid",
}


def _extended_primitive(obj: Any) -> tuple[bool, Any]:
    """(True, value) for an Extended Primitive Object: a primitive carrying ETS notes, sent as
    `<Obj><S>text</S><MS>notes</MS></Obj>` without type names (MS-PSRP 2.2.5.2.5). Every string
    from Get-Content arrives this way (notes PSPath, PSChildName, ..., ReadCount); pypsrp 0.9 gives a
    GenericComplexObject whose `property_sets` holds the primitive (pypsrp issue #105)."""
    sets = getattr(obj, "property_sets", None) or []
    if (len(sets) == 1 and not obj.types and not obj.adapted_properties
            and isinstance(sets[0], (str, bool, int, float))):
        return True, sets[0]
    return False, None


def to_host_object(obj: Any) -> HostObject:
    from pypsrp.complex_objects import GenericComplexObject

    if isinstance(obj, GenericComplexObject):
        primitive, value = _extended_primitive(obj)
        if primitive:
            notes = {name: plain_value(v) for name, v in obj.extended_properties.items()}
            return HostObject((_PRIMITIVE_TYPES[type(value)],), notes, value=value)
        types = _strip_deserialized(obj.types)
        if _is_enum(obj):
            return HostObject(types, {}, value=obj.to_string)
        dates = _datetime_properties(obj)
        properties: dict[str, Any] = {}
        for source in (obj.adapted_properties, obj.extended_properties):
            for name, value in source.items():
                if name in dates and isinstance(value, str):
                    properties[name] = parse_dotnet_datetime(value)
                else:
                    properties[name] = plain_value(value)
        return HostObject(types, properties)
    type_name = _PRIMITIVE_TYPES.get(type(obj), "System.Object" if obj is not None else "")
    return HostObject((type_name,) if type_name else (), {}, value=plain_value(obj))


# --- error mapping --------------------------------------------------------------------------------


def _category_name(value: Any) -> str:
    if isinstance(value, int) and 0 <= value < len(_ERROR_CATEGORIES):
        return _ERROR_CATEGORIES[value]
    return str(value or "")


def _failing_statement(activity: str, statements: Sequence[Statement]) -> str:
    if activity:
        for statement in statements:
            for command in statement.commands:
                if not command.is_script and command.name.rsplit("\\", 1)[-1].lower() == activity.lower():
                    return str(statement)
    if len(statements) == 1:
        return str(statements[0])
    return " ; ".join(str(s) for s in statements)


def error_from_record(record: Any, statements: Sequence[Statement]) -> HostError:
    """A pypsrp ErrorRecord -> a classified HostError carrying the host's own message and fields."""
    exception = getattr(record, "exception", None)
    message = ""
    exception_type = ""
    if exception is not None:
        props = {**getattr(exception, "extended_properties", {}), **getattr(exception, "adapted_properties", {})}
        message = str(props.get("Message") or "")
        types = _strip_deserialized(getattr(exception, "types", []) or [])
        exception_type = types[0] if types else ""
    if not message:
        message = str(getattr(record, "_to_string", None) or getattr(record, "message", None) or "unknown error")
    target_object = getattr(record, "target_object", None)
    target = str(plain_value(target_object)) if target_object not in (None, "") else ""
    target = target or str(getattr(record, "target_name", "") or "")
    activity = str(getattr(record, "activity", "") or getattr(record, "command_name", "") or "")
    return classify(
        message,
        fq_error_id=str(getattr(record, "fq_error", "") or ""),
        category=_category_name(getattr(record, "category", None)),
        target=target,
        exception_type=exception_type,
        command=_failing_statement(activity, statements),
    )


def _tls_detail(text: str) -> str:
    match = re.search(r"certificate verify failed: ([^()'\"]+)", text)
    if match:
        return match.group(1).strip()
    match = re.search(r"(hostname '[^']+' doesn't match[^'\"]*|Hostname mismatch[^'\"]*)", text)
    return match.group(1).strip() if match else "the host's certificate is not trusted"


def transport_error(err: BaseException, settings: WinRMSettings, *, during: str) -> HostError:
    """A pypsrp/requests exception -> HostUnreachableError or PermanentHostError with a human reason."""
    import requests
    from pypsrp.exceptions import AuthenticationError, WinRMTransportError, WSManFaultError

    where = f"{settings.server}:{settings.effective_port}"
    text = str(err)
    if isinstance(err, AuthenticationError) or (isinstance(err, WinRMTransportError) and err.code == 401):
        user = settings.username or "(current user)"
        return PermanentHostError(
            f"authentication failed for user '{user}' with {settings.auth} auth at {settings.endpoint} (HTTP 401)",
            category="AuthenticationError",
            fq_error_id="WinRMAuthenticationFailed",
        )
    if isinstance(err, requests.exceptions.SSLError):
        if "CERTIFICATE_VERIFY_FAILED" in text or "certificate verify failed" in text or "match" in text:
            return PermanentHostError(
                f"TLS certificate verification failed for {settings.endpoint}: {_tls_detail(text)}",
                category="SecurityError",
                fq_error_id="WinRMTLSVerificationFailed",
            )
        return HostUnreachableError(
            f"TLS handshake with {settings.endpoint} failed: {_short(text)}",
            category="ConnectionError",
            fq_error_id="WinRMTLSHandshakeFailed",
        )
    if isinstance(err, requests.exceptions.ConnectTimeout):
        return HostUnreachableError(
            f"connection to {where} timed out after {settings.connection_timeout:g}s",
            category="OperationTimeout",
            fq_error_id="WinRMConnectTimeout",
        )
    if isinstance(err, (requests.exceptions.ReadTimeout, TimeoutError)):
        return HostUnreachableError(
            f"timed out after {settings.read_timeout:g}s waiting for {settings.endpoint} to answer ({during})",
            category="OperationTimeout",
            fq_error_id="WinRMReadTimeout",
        )
    if isinstance(err, requests.exceptions.ConnectionError):
        lowered = text.lower()
        if "refused" in lowered:
            reason = f"connection refused at {where}"
            fq = "WinRMConnectionRefused"
        elif "name or service not known" in lowered or "nodename nor servname" in lowered or "getaddrinfo" in lowered:
            reason = f"cannot resolve host name '{settings.server}'"
            fq = "WinRMNameResolution"
        elif "no route" in lowered or "unreachable" in lowered:
            reason = f"no route to {where}"
            fq = "WinRMNoRoute"
        else:
            reason = f"connection to {settings.endpoint} was closed or reset without an answer ({during})"
            fq = "WinRMConnectionReset"
        return HostUnreachableError(reason, category="ConnectionError", fq_error_id=fq)
    if isinstance(err, WSManFaultError):
        reason = (err.reason or "").strip()
        fault = f"WinRM fault {err.code} from {settings.endpoint}: {reason}"
        if err.code == 5 or "access is denied" in reason.lower():
            return PermanentHostError(fault, category="PermissionDenied", fq_error_id=f"WSManFault{err.code}")
        if "session configuration" in reason.lower() or "resource uri" in reason.lower():
            return PermanentHostError(fault, category="NotInstalled", fq_error_id=f"WSManFault{err.code}")
        return TransientHostError(fault, category="ConnectionError", fq_error_id=f"WSManFault{err.code}")
    if isinstance(err, WinRMTransportError):
        return HostUnreachableError(
            f"{settings.endpoint} answered HTTP {err.code} ({during})",
            category="ConnectionError",
            fq_error_id=f"WinRMHTTP{err.code}",
        )
    return TransientHostError(
        f"WinRM session with {settings.endpoint} failed ({during}): {type(err).__name__}: {_short(text)}",
        category="ConnectionError",
        fq_error_id="WinRMSessionBroken",
    )


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --- the client -----------------------------------------------------------------------------------


class WinRMClient:
    """`HyperVClient` over WinRM with one lazily opened, reused RunspacePool."""

    def __init__(self, settings: WinRMSettings) -> None:
        settings.validate()
        self.settings = settings
        self._lock = threading.Lock()
        self._pool: Any = None
        self._wsman: Any = None
        self.pools_opened = 0
        """How many RunspacePools this client has opened (a rebuilt pool counts again)."""
        self._closed = False

    def __repr__(self) -> str:
        return f"WinRMClient({self.settings.endpoint}, auth={self.settings.auth}, user={self.settings.username!r})"

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        batch = list(statements)
        if not batch:
            return []
        return await asyncio.to_thread(self.run_sync, batch)

    async def close(self) -> None:
        await asyncio.to_thread(self.close_sync)

    async def probe(self, drive: str = "C") -> HostProbe:
        return await asyncio.to_thread(self.probe_sync, drive)

    # -- synchronous core (also usable from threads) --

    def run_sync(self, statements: Sequence[Statement]) -> list[HostObject]:
        from pypsrp.exceptions import WSManFaultError
        from pypsrp.powershell import PowerShell

        with self._lock:
            if self._closed:
                raise PermanentHostError(f"the WinRM client for {self.settings.endpoint} is closed")
            for attempt in (1, 2):
                pool = self._ensure_pool()
                ps = PowerShell(pool)
                add_statements(ps, statements)
                try:
                    ps.begin_invoke()
                except WSManFaultError as err:
                    # The host answered with a fault: the pipeline was not created. A shell the host has
                    # forgotten (idle timeout, WinRM restart) is rebuilt once, transparently.
                    self._discard_pool(f"Command rejected: {err}")
                    if attempt == 1 and err.code == _WSMAN_SHELL_NOT_FOUND:
                        continue
                    raise transport_error(err, self.settings, during="starting the pipeline") from err
                except Exception as err:
                    self._discard_pool(f"Command failed: {type(err).__name__}")
                    raise transport_error(err, self.settings, during="starting the pipeline") from err
                try:
                    ps.end_invoke()
                except Exception as err:
                    self._discard_pool(f"Receive failed: {type(err).__name__}")
                    raise transport_error(err, self.settings, during="waiting for the pipeline") from err
                finally:
                    pool.pipelines.pop(ps.id, None)
                errors = list(ps.streams.error)
                if ps.had_errors or errors:
                    if not errors:
                        raise TransientHostError(
                            "the pipeline failed without an error record", command=" ; ".join(map(str, statements))
                        )
                    record = errors[-1] if ps.had_errors else errors[0]
                    raise error_from_record(record, statements)
                return [to_host_object(o) for o in ps.output]
        raise AssertionError("unreachable")  # pragma: no cover

    def close_sync(self) -> None:
        with self._lock:
            self._closed = True
            pool, wsman = self._pool, self._wsman
            self._pool = self._wsman = None
            if pool is not None:
                try:
                    pool.close()
                except Exception as err:  # closing is best effort
                    log.debug("closing the RunspacePool on %s failed: %s", self.settings.endpoint, err)
            if wsman is not None:
                wsman.close()

    def probe_sync(self, drive: str = "C") -> HostProbe:
        from hyperv_operator.hyperv import probe as probe_cmds

        started = time.monotonic()
        statements = probe_cmds.probe_statements(drive)
        results: list[list[HostObject] | None]
        try:
            outputs = self.run_sync(statements)
            results = probe_cmds.split_outputs(outputs)
        except PermanentHostError as err:
            if not err.fq_error_id.startswith("CommandNotFoundException"):
                raise
            results = []
            for statement in statements:  # find out which ones exist, one at a time
                try:
                    results.append(self.run_sync([statement]))
                except PermanentHostError as inner:
                    if not inner.fq_error_id.startswith("CommandNotFoundException"):
                        raise
                    results.append(None)
        return probe_cmds.build_probe(
            self.settings.endpoint, drive, statements, results, latency=time.monotonic() - started
        )

    # -- pool management --

    def _ensure_pool(self) -> Any:
        if self._pool is not None:
            return self._pool
        from pypsrp.powershell import RunspacePool
        from pypsrp.wsman import WSMan

        try:
            wsman = WSMan(**self.settings.wsman_kwargs())
        except ValueError as err:
            raise PermanentHostError(f"invalid WinRM settings for {self.settings.endpoint}: {err}") from err
        pool = RunspacePool(wsman, configuration_name=self.settings.configuration_name)
        try:
            pool.open()
        except Exception as err:
            wsman.close()
            log.info("opening a RunspacePool on %s failed: %s", self.settings.endpoint, type(err).__name__)
            raise transport_error(err, self.settings, during="opening the session") from err
        self._pool, self._wsman = pool, wsman
        self.pools_opened += 1
        log.info("opened a RunspacePool on %s (%s)", self.settings.endpoint, self.settings.configuration_name)
        return pool

    def _discard_pool(self, why: str) -> None:
        """Forget a pool that may be broken; the next call opens a new one. No network I/O here: the
        host drops the abandoned shell after its idle timeout."""
        log.info("discarding the RunspacePool on %s: %s", self.settings.endpoint, why)
        wsman = self._wsman
        self._pool = self._wsman = None
        if wsman is not None:
            try:
                wsman.close()
            except Exception:  # the session may already be half-closed
                log.debug("closing the HTTP session failed", exc_info=True)
