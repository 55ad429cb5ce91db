"""The simulated WinRM server's decoding of PSRP commands and its SOAP helpers."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from psrpcore.types import PSInt, PSInt64, PSString, PSUInt64
from pypsrp.wsman import WSMan

from hyperv_operator.hyperv.commands import SWITCH, Command, Int64, Statement, UInt64
from hyperv_operator.simulator.wsman import soap
from hyperv_operator.simulator.wsman.psrp import (
    WireValueError,
    build_error_record,
    convert_value,
    statements_from_pipeline,
    strip_common_parameters,
)


def raw(name: str, params: list, *, end: bool = False, is_script: bool = False) -> SimpleNamespace:  # type: ignore[type-arg]
    return SimpleNamespace(command_text=name, parameters=params, end_of_statement=end, is_script=is_script)


def test_values_convert_to_contract_types() -> None:
    assert convert_value(PSString("x")) == "x" and type(convert_value(PSString("x"))) is str
    assert convert_value(PSInt(5)) == 5 and type(convert_value(PSInt(5))) is int
    assert convert_value(PSInt64(5)) == Int64(5)
    assert convert_value(PSUInt64(5)) == UInt64(5)
    assert convert_value(True) is True
    assert convert_value(None) is SWITCH
    assert convert_value([PSString("a"), "b"]) == ("a", "b")


def test_statements_split_on_end_of_statement_and_keep_pipes() -> None:
    statements = statements_from_pipeline(
        [
            raw("Hyper-V\\Get-VM", [("Id", "x")]),
            raw("Hyper-V\\Start-VM", [("ErrorAction", "Stop")], end=True),
            raw("param($A) $A", [("A", PSInt64(1))], end=True, is_script=True),
        ]
    )
    assert statements == [
        Statement(
            (Command("Hyper-V\\Get-VM", (("Id", "x"),)), Command("Hyper-V\\Start-VM", (("ErrorAction", "Stop"),)))
        ),
        Statement((Command("param($A) $A", (("A", Int64(1)),), is_script=True),)),
    ]
    stripped = strip_common_parameters(statements)
    assert stripped[0].commands[1].parameters == ()
    assert stripped[1] == statements[1]


def test_positional_arguments_are_refused() -> None:
    with pytest.raises(WireValueError, match="positional parameter"):
        statements_from_pipeline([raw("Get-VM", [(None, "x")])])


def test_error_record_category_message_like_windows() -> None:
    rec = build_error_record(
        "not found",
        category="ObjectNotFound",
        fq_error_id="X,Y.GetVHD",
        target="C:\\a",
        exception_type="A.B.VException",
        activity="Get-VHD",
    )
    assert str(rec.CategoryInfo) == "ObjectNotFound: (C:\\a:String) [Get-VHD], VException"
    assert str(rec) == "not found"


def test_fault_is_readable_by_pypsrp() -> None:
    body = soap.fault("uuid:1", soap.shell_not_found("ABC"), "HV01")
    err = WSMan._parse_wsman_fault(body.decode())
    assert err.code == 2150858843
    assert err.machine == "HV01"
    assert err.reason is not None and "ShellId ABC" in err.reason


def test_request_parsing_and_duration() -> None:
    assert soap.parse_duration("PT20S") == 20
    assert soap.parse_duration("PT7200.000S") == 7200
    assert soap.parse_duration("PT1M30S") == 90
    assert soap.parse_duration("bogus") is None
    with pytest.raises(soap.SoapError):
        soap.parse_request(b"<not-xml")
