"""The production Hyper-V client: pypsrp (WinRM / PSRP) to a Windows host, or to the simulator.

Up to `max_connections` pypsrp `RunspacePool`s per host (one WinRM shell each), opened lazily when
calls overlap and reused across calls; each pool serves one call at a time (pypsrp is not
thread-safe), so that many pipelines run on the host at once. Calls run on the client's own thread
pool, one thread per connection (not asyncio's shared default pool), so kopf's event loop never
blocks and one host's slow calls never hold another host's threads. Probes use one more, reserved
connection and thread: VM work can never starve them.

A call that ends without its full reply (read timeout, reset, WinRM fault, a PSRP fragment out of
order, any exception between Command and the last Receive) retires its pool: the pool is detached
from its slot at once, so no other call ever receives on it, and closed (shell Delete) best effort
on a background thread, so the abandoned shell does not hold one of the user's MaxShellsPerUser
until its 2-hour idle timeout. The next call on that slot opens a fresh pool. A call whose awaiting
task is cancelled keeps its thread and connection until its reply is complete, so a pool is never
handed over mid-reply. A Receive is sent once: Windows answers a Receive without a
`wsmv:OperationID` as a new request, never as a replay (MS-WSMV 3.1.4.1.39), so pypsrp's own re-send
after a read timeout (up to 5 times, with backoff sleeps) got the continuation of the lost reply
(`FragmentError: Fragment Id: 3 != Expected 0`) or, at a message boundary, silently incomplete
output (pypsrp issue #21).

Once the client is closed (its HyperVHost or Secret changed and a new client replaced it) every
call, including one in flight, raises `ClientClosedError`: a retry with the new client, never a
failure of the VM.

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
import copy
import datetime
import logging
import queue
import re
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hyperv_operator.hyperv import probe as probe_cmds
from hyperv_operator.hyperv.commands import (
    HostObject,
    Int64,
    ParameterValue,
    Statement,
    Switch,
    UInt64,
)
from hyperv_operator.hyperv.errors import (
    PROTOCOL_DESYNC_ERRORS,
    ClientClosedError,
    HostError,
    HostUnreachableError,
    PermanentHostError,
    TransientHostError,
    classify,
)
from hyperv_operator.hyperv.probe import HostProbe

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

MAX_CONNECTIONS = 24
"""24 VM connections + 1 probe connection = 25 shells: the Microsoft.PowerShell plugin's default
MaxShellsPerUser quota (MS-WSMV 3.1.4.1.34.3.4; winrm/config/winrs allows 30, MS-WSMV 2.2.4.42).
https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-wsmv/7ffb4acd-cf01-4fbe-9e48-7746f5001957"""

_WSMAN_TIMED_OUT = 2150858793
_WSMAN_SHELL_NOT_FOUND = 2150858843

_wsman_class: Any = None


def wsman_class() -> Any:
    """pypsrp's `WSMan` with a Receive that is sent once.

    pypsrp 0.9.1 `WSMan.receive` re-sends a Receive up to 5 times after a read timeout, assuming the
    host replays the same data. Windows does not (MS-WSMV 3.1.4.1.39: without `wsmv:OperationID` a
    request is processed as new): the lost reply's output is gone and the re-sent Receive gets what
    follows it. A read timeout on a Receive therefore surfaces at once and retires the pool."""
    global _wsman_class
    if _wsman_class is None:
        from pypsrp.wsman import NAMESPACES, WSMan, WSManAction

        class _SingleReceiveWSMan(WSMan):
            def receive(
                self,
                resource_uri: str,
                resource: Any,
                option_set: Any = None,
                selector_set: Any = None,
                timeout: Any = None,
            ) -> Any:
                res = self.invoke(WSManAction.RECEIVE, resource_uri, resource, option_set, selector_set, timeout)
                return res.find("s:Body", namespaces=NAMESPACES)

        _wsman_class = _SingleReceiveWSMan
    return _wsman_class


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
    keytab: str | None = None
    """kerberos/negotiate: path of a keytab holding `username`'s keys (instead of a password)."""
    cert_pem: str | None = None
    """certificate auth: client certificate (PEM path)."""
    key_pem: str | None = None
    """certificate auth: its private key (PEM path)."""
    ca_bundle: str | None = None
    """PEM CA bundle to verify the host's certificate; overrides `cert_validation` when set."""
    cert_validation: bool = True
    configuration_name: str = "Microsoft.PowerShell"
    """The PSSession configuration (a JEA endpoint name for least privilege)."""
    restricted: bool | None = None
    """The endpoint is a JEA (NoLanguage) endpoint; None: any configuration other than Windows'
    built-in full-language ones (see `restricted_endpoint`)."""
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
    max_connections: int = 4
    """RunspacePools (WinRM shells) for VM work, plus one reserved for probes. Windows allows
    MaxShellsPerUser shells per user (winrm/config/winrs default 30, the Microsoft.PowerShell plugin's
    quota 25: MS-WSMV 2.2.4.42 and 3.1.4.1.34.3.4), so at most MAX_CONNECTIONS."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def effective_port(self) -> int:
        return self.port if self.port is not None else (5986 if self.ssl else 5985)

    @property
    def restricted_endpoint(self) -> bool:
        """Commands go out as a JEA endpoint accepts them (`hyperv.jea`): no script text, unqualified
        cmdlet names."""
        if self.restricted is not None:
            return self.restricted
        from hyperv_operator.hyperv.jea import FULL_LANGUAGE_ENDPOINTS

        return self.configuration_name.lower() not in FULL_LANGUAGE_ENDPOINTS

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
        if not 1 <= self.max_connections <= MAX_CONNECTIONS:
            problems.append(f"max_connections must be between 1 and {MAX_CONNECTIONS}, not {self.max_connections}")
        if self.connection_timeout <= 0 or self.operation_timeout <= 0:
            problems.append("timeouts must be positive")
        if self.auth == "certificate":
            if not self.ssl:
                problems.append("certificate auth needs ssl")
            if not self.cert_pem or not self.key_pem:
                problems.append("certificate auth needs cert_pem and key_pem")
        elif self.auth in ("basic", "ntlm", "credssp") and (not self.username or self.password is None):
            problems.append(f"{self.auth} auth needs username and password")
        if self.keytab is not None:
            if self.auth not in ("kerberos", "negotiate"):
                problems.append(f"a keytab works only with kerberos or negotiate auth, not {self.auth}")
            if not self.username or self.password is not None:
                problems.append("a keytab needs the principal as username and no password")
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
        if self.auth in ("kerberos", "negotiate"):
            # The SPN Windows' own WinRM client asks for (HTTP/<host>); pyspnego would ask for host/<host>.
            kwargs["negotiate_service"] = "HTTP"
        if self.keytab is not None:
            # pyspnego takes a credential object in place of the user name: it gets a ticket from the
            # keytab into a private in-memory cache (no kinit, no shared ccache between hosts).
            import spnego

            kwargs["username"] = spnego.KerberosKeytab(keytab=self.keytab, principal=self.username)
            kwargs["password"] = None
        if self.auth == "certificate":
            kwargs["certificate_pem"] = self.cert_pem
            kwargs["certificate_key_pem"] = self.key_pem
        return kwargs


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
    if isinstance(value, bytes):
        return value  # pypsrp serializes bytes as <BA> (byte[])
    if isinstance(value, (str, bool, int)):
        return value
    raise TypeError(f"unsupported parameter value type {type(value).__name__}")


_LIGHT: dict[type, type] = {}


def _light_copy(command: Any, memo: dict[int, Any]) -> Any:
    """What pypsrp's deep copy of a Command must give: a command whose parameters can be serialized
    again. Serializing a CommandParameter rewrites its value's type tag in place (a typed value such as
    `<I64>` is unwrapped once), and pypsrp serializes a batch's first statement twice (Cmds and
    ExtraCmds). So each parameter is new; the rest (names, values, the class's property tables) is
    never changed by serializing and is shared."""
    from pypsrp.complex_objects import CommandParameter

    clone = copy.copy(command)
    clone.args = [CommandParameter(name=arg.name, value=arg.value) for arg in command.args]
    return clone


def _lighten(command: Any) -> None:
    """pypsrp deep-copies every Command each time it serializes a pipeline (`Pipeline._get_statements`),
    the whole object graph: 12% of the operator's CPU with 100 VMs (py-spy), about a tenth of each
    pipeline's client time. The command becomes an instance of a subclass whose deep copy is
    `_light_copy`; the bytes on the wire do not change (tests/unit/winrm/test_wire_shapes.py)."""
    cls = type(command)
    sub = _LIGHT.get(cls)
    if sub is None:
        sub = _LIGHT[cls] = type(f"Light{cls.__name__}", (cls,), {"__deepcopy__": _light_copy})
    command.__class__ = sub


def add_statements(ps: Any, statements: Sequence[Statement], *, restricted: bool = False) -> None:
    """Append the statements to a pypsrp `PowerShell`, one statement after the other.

    `restricted` (a JEA endpoint, NoLanguage): a fixed script goes out as the role's function of the
    same body (`hyperv.jea.FUNCTIONS`) without the parameters the function embeds, and cmdlet names
    go out unqualified (the role's proxy functions carry the plain names)."""
    from hyperv_operator.hyperv import jea

    for index, statement in enumerate(statements):
        if not statement.commands:
            raise ValueError("empty statement")
        if index:
            ps.add_statement()
        for command in statement.commands:
            skip: set[str] = set()
            if command.is_script and restricted:
                function = jea.function_for_script(command.name)
                if function is None:
                    raise PermanentHostError(
                        "this script has no function in the JEA role capability (regenerate manifests/jea)"
                    )
                ps.add_cmdlet(function.name)
                skip = {name.lower() for name, _ in function.embedded}
            elif command.is_script:
                ps.add_script(command.name)
            else:
                ps.add_cmdlet(command.name.rsplit("\\", 1)[-1] if restricted else command.name)
            for name, value in command.parameters:
                if name.lower() in skip:
                    continue
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


def _kerberos_error(text: str, settings: WinRMSettings) -> HostError:
    """A failure inside pyspnego/GSSAPI (before any HTTP 401): no ticket could be had or used."""
    lowered = text.lower()
    user = settings.username or "(current user)"
    if "cannot contact any kdc" in lowered or "cannot find kdc" in lowered:
        return HostUnreachableError(
            f"cannot reach a Kerberos KDC for '{user}' (check krb5.conf: the realm's kdc entries or DNS SRV records)",
            category="ConnectionError", fq_error_id="KerberosKdcUnreachable",
        )
    if "not found in kerberos database" in lowered and "server" in lowered:
        reason = (f"the KDC knows no service principal HTTP/{settings.server}: use the host's DNS name as address "
                  f"(Kerberos does not work with IP addresses) or register the SPN")
    elif any(m in lowered for m in ("preauthentication failed", "password incorrect", "integrity check failed")):
        reason = f"the KDC refused the password (or keytab key) of '{user}'"
    elif "not found in kerberos database" in lowered:
        reason = f"the KDC knows no principal '{user}' (use user@REALM)"
    elif "key table" in lowered or "keytab" in lowered:
        reason = f"the keytab holds no usable key for '{user}'"
    else:
        reason = f"Kerberos failed for '{user}': {_short(text, 200)}"
    return PermanentHostError(
        f"{settings.auth} authentication to {settings.endpoint} failed: {reason}",
        category="AuthenticationError", fq_error_id="KerberosAuthenticationFailed",
    )


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
    if type(err).__module__.split(".")[0] in ("spnego", "krb5", "gssapi"):
        return _kerberos_error(text, settings)
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
    if type(err).__name__ in PROTOCOL_DESYNC_ERRORS and type(err).__module__.startswith("pypsrp"):
        return TransientHostError(
            f"the PSRP session with {settings.endpoint} lost step ({during}): {type(err).__name__}: {_short(text)}; "
            "the session is abandoned and the next attempt opens a new one",
            category="ProtocolError",
            fq_error_id="WinRMProtocolDesync",
        )
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


T = TypeVar("T")


class _Connection:
    """One WSMan session + RunspacePool (one shell on the host); used by one thread at a time."""

    def __init__(self) -> None:
        self.pool: Any = None
        self.wsman: Any = None


class WinRMClient:
    """`HyperVClient` over WinRM with up to `settings.max_connections` lazily opened, reused RunspacePools."""

    def __init__(self, settings: WinRMSettings) -> None:
        settings.validate()
        self.settings = settings
        self._state = threading.Lock()
        self._idle: queue.LifoQueue[_Connection] = queue.LifoQueue()
        for _ in range(settings.max_connections):
            self._idle.put(_Connection())
        self._probe_connection = _Connection()
        self._probe_lock = threading.Lock()
        # One worker per connection: a call never waits in the thread pool for a connection another
        # host's calls hold, and never waits for a thread once it has a connection.
        name = f"winrm-{settings.server}"
        self._executor = ThreadPoolExecutor(max_workers=settings.max_connections, thread_name_prefix=name)
        self._probe_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name + "-probe")
        # Retired pools are closed here, off the calls' threads: a hung host must not hold a call
        # (and its connection slot) for another read timeout just to say goodbye.
        self._retire_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name + "-retire")
        self.pools_retired = 0
        """Pools retired because a call ended without its full reply (observability and tests)."""
        self.pools_opened = 0
        """How many RunspacePools this client has opened (a rebuilt pool counts again)."""
        self.max_in_use = 0
        """The most connections used at the same time (observability and tests)."""
        self._in_use = 0
        self._closed = False

    def __repr__(self) -> str:
        return f"WinRMClient({self.settings.endpoint}, auth={self.settings.auth}, user={self.settings.username!r})"

    @property
    def closed(self) -> bool:
        return self._closed

    async def _in(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        if self._closed:
            raise self._closed_error()
        try:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        except RuntimeError as err:  # the executor was shut down by close() meanwhile
            if self._closed:
                raise self._closed_error() from err
            raise

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        batch = list(statements)
        if not batch:
            return []
        return await self._in(self._executor, self.run_sync, batch)

    async def close(self) -> None:
        # Not on our own executors: close_sync shuts them down.
        await asyncio.to_thread(self.close_sync)

    async def probe(self, drive: str = "C") -> HostProbe:
        return await self._in(self._probe_executor, self.probe_sync, drive)

    # -- synchronous core (also usable from threads) --

    def _closed_error(self) -> ClientClosedError:
        return ClientClosedError(
            f"the WinRM client for {self.settings.endpoint} was replaced (its HyperVHost or Secret changed); "
            "retrying with the new one"
        )

    def run_sync(self, statements: Sequence[Statement]) -> list[HostObject]:
        """Run on a free VM connection (waits for one when all are busy)."""
        if self._closed:
            raise self._closed_error()
        connection = self._idle.get()
        with self._state:
            self._in_use += 1
            self.max_in_use = max(self.max_in_use, self._in_use)
        try:
            return self._run_on(connection, statements)
        finally:
            with self._state:
                self._in_use -= 1
            if self._closed:
                self._close_connection(connection)
            self._idle.put(connection)

    def _run_on(self, connection: _Connection, statements: Sequence[Statement]) -> list[HostObject]:
        try:
            return self._pipeline(connection, statements)
        except HostError as err:
            # Closed while this call was in flight: whatever happened, it is a retry on the new client.
            if self._closed and not isinstance(err, ClientClosedError):
                raise self._closed_error() from err
            raise

    def _pipeline(self, connection: _Connection, statements: Sequence[Statement]) -> list[HostObject]:
        from pypsrp.exceptions import WSManFaultError
        from pypsrp.powershell import PowerShell

        for attempt in (1, 2):
            if self._closed:
                raise self._closed_error()
            pool = self._ensure_pool(connection)
            ps = PowerShell(pool)
            add_statements(ps, statements, restricted=self.settings.restricted_endpoint)
            for command in ps.commands:
                _lighten(command)
            complete = False
            try:
                try:
                    ps.begin_invoke()
                except WSManFaultError as err:
                    # The host answered with a fault: the pipeline was not created. A shell the host
                    # has forgotten (idle timeout, WinRM restart) is rebuilt once, transparently.
                    self._retire(connection, f"Command rejected: {err}")
                    if attempt == 1 and err.code == _WSMAN_SHELL_NOT_FOUND:
                        continue
                    raise transport_error(err, self.settings, during="starting the pipeline") from err
                except Exception as err:
                    self._retire(connection, f"Command failed: {type(err).__name__}")
                    raise transport_error(err, self.settings, during="starting the pipeline") from err
                try:
                    ps.end_invoke()
                except Exception as err:
                    self._retire(connection, f"Receive failed: {type(err).__name__}")
                    raise transport_error(err, self.settings, during="waiting for the pipeline") from err
                complete = True
            finally:
                pool.pipelines.pop(ps.id, None)
                if not complete and connection.pool is pool:
                    # Anything else that ended the call mid-reply (a BaseException in this thread):
                    # the pool's PSRP state is unknown, so it never serves another call.
                    self._retire(connection, "the call ended before its reply was complete")
            errors = list(ps.streams.error)
            if ps.had_errors or errors:
                if not errors:
                    raise TransientHostError(
                        "the pipeline failed without an error record", command=" ; ".join(map(str, statements))
                    )
                # The first failure: a statement that failed without ending the batch is in the error
                # stream before what failed after it (the pipeline's Failed reason comes last), and a
                # later statement's failure is often only a consequence (New-VM failed, so the read of
                # its drives finds no VM).
                record = errors[0]
                raise error_from_record(record, statements)
            return [to_host_object(o) for o in ps.output]
        # Only reached when the rebuilt shell was also not found: the loop's second attempt raises.
        raise TransientHostError(f"the WinRM shell on {self.settings.endpoint} could not be rebuilt")

    def close_sync(self) -> None:
        """Close every idle connection now; a connection in use closes when its call returns."""
        with self._state:
            if self._closed:
                return
            self._closed = True
        # Queued calls still run and raise ClientClosedError (cancelling them would surface as a
        # CancelledError in the awaiting handler).
        self._executor.shutdown(wait=False)
        self._probe_executor.shutdown(wait=False)
        self._retire_executor.shutdown(wait=False)  # retirements already queued still run
        idle: list[_Connection] = []
        while True:
            try:
                idle.append(self._idle.get_nowait())
            except queue.Empty:
                break
        for connection in idle:
            self._close_connection(connection)
            self._idle.put(connection)
        if self._probe_lock.acquire(blocking=False):
            try:
                self._close_connection(self._probe_connection)
            finally:
                self._probe_lock.release()

    def probe_sync(self, drive: str = "C") -> HostProbe:
        """The host probe on the reserved probe connection (never queued behind VM work)."""

        def run(statements: Sequence[Statement]) -> list[HostObject]:
            return self._run_on(self._probe_connection, statements)

        with self._probe_lock:
            try:
                return probe_cmds.probe_sync(run, self.settings.endpoint, drive)
            finally:
                if self._closed:
                    self._close_connection(self._probe_connection)

    # -- pool management --

    def _ensure_pool(self, connection: _Connection) -> Any:
        if connection.pool is not None:
            return connection.pool
        from pypsrp.powershell import RunspacePool

        try:
            wsman = wsman_class()(**self.settings.wsman_kwargs())
        except ValueError as err:
            raise PermanentHostError(f"invalid WinRM settings for {self.settings.endpoint}: {err}") from err
        pool = RunspacePool(wsman, configuration_name=self.settings.configuration_name)
        try:
            pool.open()
        except BaseException as err:
            # The shell may exist already (Create answered, the open's Receive did not): close it too.
            log.info("opening a RunspacePool on %s failed: %s", self.settings.endpoint, type(err).__name__)
            self._close_retired(pool, wsman)
            if not isinstance(err, Exception):
                raise
            raise transport_error(err, self.settings, during="opening the session") from err
        connection.pool, connection.wsman = pool, wsman
        with self._state:
            self.pools_opened += 1
        log.info("opened a RunspacePool on %s (%s)", self.settings.endpoint, self.settings.configuration_name)
        return pool

    def _close_connection(self, connection: _Connection) -> None:
        pool, wsman = connection.pool, connection.wsman
        connection.pool = connection.wsman = None
        if pool is not None:
            try:
                pool.close()
            except Exception as err:  # closing is best effort
                log.debug("closing the RunspacePool on %s failed: %s", self.settings.endpoint, err)
        if wsman is not None:
            try:
                wsman.close()
            except Exception:  # the session may already be half-closed
                log.debug("closing the HTTP session failed", exc_info=True)

    def _retire(self, connection: _Connection, why: str) -> None:
        """Detach a pool whose call ended without its full reply: its PSRP state (fragments of a
        lost reply, a pipeline still running on the host) is unknown, so it never serves another
        call; the next call on this slot opens a fresh one. The shell is closed best effort in the
        background (a Delete, so it does not count against MaxShellsPerUser until its idle timeout)."""
        pool, wsman = connection.pool, connection.wsman
        connection.pool = connection.wsman = None
        if pool is None and wsman is None:
            return
        log.info("retiring the RunspacePool on %s: %s", self.settings.endpoint, why)
        with self._state:
            self.pools_retired += 1
        try:
            self._retire_executor.submit(self._close_retired, pool, wsman)
        except RuntimeError:  # the client is closed: close it on this (worker) thread
            self._close_retired(pool, wsman)

    def _close_retired(self, pool: Any, wsman: Any) -> None:
        if pool is not None:
            try:
                pool.close()
            except Exception as err:  # best effort: the host drops the shell after its idle timeout
                log.info("closing a retired RunspacePool on %s failed: %s", self.settings.endpoint,
                         type(err).__name__)
        if wsman is not None:
            try:
                wsman.close()
            except Exception:  # the session may already be half-closed
                log.debug("closing the HTTP session failed", exc_info=True)

