"""WinRMClient pieces without a server: settings, statements -> pypsrp, pypsrp -> HostObject, errors."""

from __future__ import annotations

import datetime
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from pypsrp.complex_objects import GenericComplexObject
from pypsrp.exceptions import AuthenticationError, FragmentError, InvalidPSRPOperation, WSManFaultError
from pypsrp.serializer import Serializer, TaggedValue

from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.commands import SWITCH, Int64, UInt64, cmd, pipe, script
from hyperv_operator.hyperv.errors import HostUnreachableError, PermanentHostError, TransientHostError, classify
from hyperv_operator.hyperv.winrm import (
    WinRMSettings,
    add_statements,
    error_from_record,
    parse_dotnet_datetime,
    to_host_object,
    transport_error,
)


class Recorder:
    """Stands in for pypsrp.powershell.PowerShell and records the builder calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def add_cmdlet(self, name: str) -> Recorder:
        self.calls.append(("cmdlet", name))
        return self

    def add_script(self, text: str) -> Recorder:
        self.calls.append(("script", text))
        return self

    def add_parameter(self, name: str, value: Any = None) -> Recorder:
        if isinstance(value, TaggedValue):
            value = (value.tag, value.value)
        self.calls.append(("param", name, value))
        return self

    def add_statement(self) -> Recorder:
        self.calls.append(("statement",))
        return self


def make_settings(**overrides: Any) -> WinRMSettings:
    values: dict[str, Any] = dict(server="hv01.example.com", auth="basic", username="u", password="p")
    values.update(overrides)
    return WinRMSettings(**values)


# --- settings ---


def test_settings_defaults_and_kwargs() -> None:
    s = make_settings(ca_bundle="/ca.pem")
    assert s.effective_port == 5986 and s.endpoint == "https://hv01.example.com:5986/wsman"
    kwargs = s.wsman_kwargs()
    assert kwargs["cert_validation"] == "/ca.pem"
    assert kwargs["auth"] == "basic" and kwargs["ssl"] is True
    assert "password" not in repr(s)


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        (dict(operation_timeout=30, read_timeout=30), "operation_timeout (30s) must be below read_timeout"),
        (dict(auth="digest"), "auth must be one of"),
        (dict(encryption="sometimes"), "encryption must be"),
        (dict(ssl=False), "plain HTTP without message encryption"),
        (dict(ssl=False, auth="ntlm", encryption="never"), "plain HTTP without message encryption"),
        (dict(auth="certificate"), "certificate auth needs cert_pem and key_pem"),
        (dict(auth="certificate", ssl=False, cert_pem="c", key_pem="k", allow_unencrypted=True), "needs ssl"),
        (dict(password=None), "basic auth needs username and password"),
        (dict(encryption="always"), "message encryption is not available with basic"),
    ],
)
def test_settings_validation(overrides: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match="invalid WinRM settings") as info:
        make_settings(**overrides)
    assert problem in str(info.value)


def test_http_needs_encryption_or_explicit_opt_in() -> None:
    assert make_settings(ssl=False, auth="ntlm").wsman_kwargs()["encryption"] == "auto"
    plain = make_settings(ssl=False, allow_unencrypted=True)
    assert plain.effective_port == 5985 and plain.wsman_kwargs()["encryption"] == "never"


# --- statements -> pypsrp ---


def test_statements_become_structured_commands() -> None:
    ps = Recorder()
    add_statements(
        ps,
        [
            cmdlets.new_vm("vm'1", "C:\\VMs", "C:\\d.vhdx", 4 * 1024**3, 2, None),
            pipe(cmd("Hyper-V\\New-VHD", Path="C:\\x", SizeBytes=UInt64(10), Differencing=SWITCH)),
            cmdlets.start_vm("id-1"),
        ],
    )
    assert ps.calls == [
        ("cmdlet", "Hyper-V\\New-VM"),
        ("param", "Name", "vm'1"),
        ("param", "Path", "C:\\VMs"),
        ("param", "VHDPath", "C:\\d.vhdx"),
        ("param", "MemoryStartupBytes", ("I64", 4 * 1024**3)),
        ("param", "Generation", 2),
        ("param", "ErrorAction", "Stop"),
        ("statement",),
        ("cmdlet", "Hyper-V\\New-VHD"),
        ("param", "Path", "C:\\x"),
        ("param", "SizeBytes", ("U64", 10)),
        ("param", "Differencing", None),
        ("param", "ErrorAction", "Stop"),
        ("statement",),
        ("cmdlet", "Hyper-V\\Get-VM"),
        ("param", "Id", "id-1"),
        ("param", "ErrorAction", "Stop"),
        ("cmdlet", "Hyper-V\\Start-VM"),
        ("param", "ErrorAction", "Stop"),
    ]


def test_scripts_use_add_script_and_parameters_without_error_action() -> None:
    ps = Recorder()
    add_statements(ps, [pipe(script("param($A) $A", A="x'; rm", Names=("a", "b")))])
    assert ps.calls == [("script", "param($A) $A"), ("param", "A", "x'; rm"), ("param", "Names", ["a", "b"])]


def test_explicit_error_action_is_not_doubled() -> None:
    ps = Recorder()
    add_statements(ps, [pipe(cmd("X", ErrorAction="Continue"))])
    assert ps.calls == [("cmdlet", "X"), ("param", "ErrorAction", "Continue")]


def test_int64_serializes_as_i64_on_the_wire() -> None:
    from hyperv_operator.hyperv.winrm import wire_value

    xml = Serializer().serialize(wire_value(Int64(5)))
    assert xml is not None and xml.tag == "I64"
    xml = Serializer().serialize(wire_value(UInt64(5)))
    assert xml is not None and xml.tag == "U64"


# --- pypsrp -> HostObject ---

VM_XML = (
    '<Obj RefId="0"><TN RefId="0"><T>Deserialized.Microsoft.HyperV.PowerShell.VirtualMachine</T>'
    "<T>Deserialized.System.Object</T></TN><ToString>VirtualMachine (Name = 'vm1')</ToString><Props>"
    '<S N="Name">vm1</S><G N="Id">6f1903ca-e06a-4a8b-bdfc-b44203149d55</G>'
    '<Obj N="State" RefId="1"><TN RefId="1"><T>Microsoft.HyperV.PowerShell.VMState</T><T>System.Enum</T>'
    "<T>System.ValueType</T><T>System.Object</T></TN><ToString>Running</ToString><I32>2</I32></Obj>"
    '<I64 N="MemoryStartup">4294967296</I64><DT N="CreationTime">2024-05-01T10:20:30.1234567+02:00</DT>'
    '<Nil N="Notes" /><Obj N="Tags" RefId="2"><TN RefId="2"><T>System.Object[]</T><T>System.Array</T>'
    "<T>System.Object</T></TN><LST><S>a</S><S>b</S></LST></Obj></Props>"
    '<MS><S N="Extra">note</S></MS></Obj>'
)


def test_generic_complex_object_to_host_object() -> None:
    obj = Serializer().deserialize(VM_XML)
    assert isinstance(obj, GenericComplexObject)
    host = to_host_object(obj)
    assert host.type_names == ("Microsoft.HyperV.PowerShell.VirtualMachine", "System.Object")
    assert host.properties == {
        "Name": "vm1",
        "Id": "6f1903ca-e06a-4a8b-bdfc-b44203149d55",
        "State": "Running",
        "MemoryStartup": 4294967296,
        "CreationTime": datetime.datetime(
            2024, 5, 1, 10, 20, 30, 123456, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
        ),
        "Notes": None,
        "Tags": ["a", "b"],
        "Extra": "note",
    }


def test_primitive_outputs() -> None:
    assert to_host_object("x").value == "x" and to_host_object("x").type_names == ("System.String",)
    assert to_host_object(True).type_names == ("System.Boolean",)
    assert to_host_object(None).value is None


def test_dotnet_datetime_parsing() -> None:
    assert parse_dotnet_datetime("2024-01-02T03:04:05Z") == datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)
    assert parse_dotnet_datetime("2024-01-02T03:04:05.5") == datetime.datetime(2024, 1, 2, 3, 4, 5, 500000)
    assert parse_dotnet_datetime("not a date") == "not a date"


# --- error records ---


def record(**fields: Any) -> SimpleNamespace:
    exception = GenericComplexObject()
    exception.types = fields.pop("types", None) or [
        "Microsoft.HyperV.PowerShell.VirtualizationException", "System.Exception", "System.Object"]
    exception.adapted_properties = {"Message": fields.pop("message")}
    base: dict[str, Any] = dict(
        exception=exception, fq_error="", category=0, target_object=None, target_name="", activity="", _to_string=None
    )
    base.update(fields)
    return SimpleNamespace(**base)


@pytest.mark.parametrize(
    ("category", "message", "expected"),
    [
        (19, "The operation cannot be performed while the object is in use.", TransientHostError),
        (13, "Hyper-V was unable to find a virtual machine with name 'x'.", PermanentHostError),
        (5, "Cannot validate argument on parameter 'MemoryStartupBytes'.", PermanentHostError),
        (18, "Access is denied.", PermanentHostError),
        (0, "The process cannot access the file because it is being used by another process.", TransientHostError),
        # CommandNotFound ends "...try again." and is permanent (seflerZ/oneclick-gpu-pv#4 has the record)
        (13, "The term 'Hyper-V\\Get-VHD' is not recognized as the name of a cmdlet, function, script file, or "
             "operable program. Check the spelling of the name, or if a path was included, verify that the path is "
             "correct and try again.", PermanentHostError),
        (0, "Failed to stop.", PermanentHostError),  # OperationFailed,...StopVM (MattHodge/PackerTemplates#18)
    ],
)
def test_error_records_are_classified(category: int, message: str, expected: type) -> None:
    fields: dict[str, Any] = {}
    if "being used by another process" in message:  # a sharing violation is a System.IO.IOException
        fields = {"types": ["System.IO.IOException", "System.SystemException", "System.Exception", "System.Object"],
                  "fq_error": "RemoveFileSystemItemIOError,Microsoft.PowerShell.Commands.RemoveItemCommand"}
    elif "is not recognized" in message:
        fields = {"types": ["System.Management.Automation.CommandNotFoundException", "System.Object"],
                  "fq_error": "CommandNotFoundException"}
    elif message == "Failed to stop.":
        fields = {"fq_error": "OperationFailed,Microsoft.HyperV.PowerShell.Commands.StopVM"}
    err = error_from_record(record(message=message, category=category, **fields), [cmdlets.get_vhd("C:\\x")])
    assert type(err) is expected
    assert err.message == message


def test_error_record_fields_and_failing_statement() -> None:
    statements = [cmdlets.test_path("C:\\a"), cmdlets.get_vhd("C:\\b.vhdx")]
    err = error_from_record(
        record(
            message="not found",
            category=13,
            fq_error="ObjectNotFound,Microsoft.Vhd.PowerShell.Commands.GetVHD",
            target_object="C:\\b.vhdx",
            activity="Get-VHD",
        ),
        statements,
    )
    assert err.category == "ObjectNotFound"
    assert err.fq_error_id == "ObjectNotFound,Microsoft.Vhd.PowerShell.Commands.GetVHD"
    assert err.target == "C:\\b.vhdx"
    assert err.exception_type == "Microsoft.HyperV.PowerShell.VirtualizationException"
    assert err.command == str(statements[1])


# --- transport errors ---

SETTINGS = WinRMSettings(server="127.0.0.1", port=5986, auth="basic", username="admin", password="hunter2")


def test_auth_failure_message_has_no_password() -> None:
    err = transport_error(AuthenticationError("Failed to authenticate the user admin with basic"), SETTINGS, during="x")
    assert isinstance(err, PermanentHostError) and not isinstance(err, TransientHostError)
    assert (
        str(err) == "authentication failed for user 'admin' with basic auth at https://127.0.0.1:5986/wsman (HTTP 401)"
    )
    assert "hunter2" not in str(err)


def test_tls_failure() -> None:
    exc = requests.exceptions.SSLError(
        "HTTPSConnectionPool(host='127.0.0.1', port=5986): Max retries exceeded "
        "(Caused by SSLError(SSLCertVerificationError(1, '[SSL: CERTIFICATE_VERIFY_FAILED] "
        "certificate verify failed: unable to get local issuer certificate "
        "(_ssl.c:1006)')))"
    )
    err = transport_error(exc, SETTINGS, during="x")
    assert isinstance(err, PermanentHostError)
    assert str(err) == (
        "TLS certificate verification failed for https://127.0.0.1:5986/wsman: unable to get local issuer certificate"
    )


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (requests.exceptions.ConnectionError("[Errno 111] Connection refused"), "connection refused at 127.0.0.1:5986"),
        (requests.exceptions.ConnectTimeout("timed out"), "connection to 127.0.0.1:5986 timed out after 30s"),
        (requests.exceptions.ReadTimeout("read timed out"), "timed out after 30s waiting for"),
        (requests.exceptions.ConnectionError("('Connection aborted.', RemoteDisconnected())"), "closed or reset"),
    ],
)
def test_unreachable_errors(exc: Exception, expected: str) -> None:
    err = transport_error(exc, SETTINGS, during="running")
    assert isinstance(err, HostUnreachableError)
    assert expected in str(err)


def test_wsman_faults() -> None:
    timed_out = transport_error(WSManFaultError(2150858793, "m", "timed out", None, None, None), SETTINGS, during="x")
    assert type(timed_out) is TransientHostError
    denied = transport_error(WSManFaultError(5, "m", "Access is denied.", None, None, None), SETTINGS, during="x")
    assert isinstance(denied, PermanentHostError)


@pytest.mark.parametrize(
    "exc",
    [
        FragmentError("Fragment Fragment Id: 1 != Expected Fragment Id: 0"),
        InvalidPSRPOperation("pipeline in an unexpected state"),
    ],
)
def test_a_psrp_protocol_desync_is_transient_never_permanent(exc: Exception) -> None:
    """A fragment out of order (the continuation of a reply lost to a read timeout) is the session's
    fault, not the command's or the host's: retried on a fresh pool, never a stall."""
    err = transport_error(exc, SETTINGS, during="waiting for the pipeline")
    assert type(err) is TransientHostError
    assert err.fq_error_id == "WinRMProtocolDesync"
    assert "new one" in str(err)


def test_new_vhd_meeting_a_parent_another_new_vhd_holds_open_is_a_retry() -> None:
    """Several differencing disks made at once from one base: New-VHD fails now and then with a
    VirtualizationException saying the parent "is being used by another process"
    (microsoft/openvmm#1600). A retry, not a Failed VM (it was permanent: only IOException counted)."""
    err = classify(
        "Failed to create the virtual hard disk.\nThe system failed to create 'C:\\VMs\\a.vhdx': The process cannot "
        "access the file because it is being used by another process. (0x80070020).",
        fq_error_id="OperationFailed,Microsoft.Vhd.PowerShell.Cmdlets.NewVhd", category="NotSpecified",
        exception_type="Microsoft.HyperV.PowerShell.VirtualizationException")
    assert isinstance(err, TransientHostError)
    other = classify("Failed to create the virtual hard disk.",
                     fq_error_id="OperationFailed,Microsoft.Vhd.PowerShell.Cmdlets.NewVhd", category="NotSpecified",
                     exception_type="Microsoft.HyperV.PowerShell.VirtualizationException")
    assert isinstance(other, PermanentHostError)  # any other New-VHD failure still stalls with its message
