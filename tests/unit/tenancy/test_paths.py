"""Storage confinement: Windows path parsing and segment-wise containment (pure, table-driven)."""

from __future__ import annotations

import pytest

from hyperv_operator.tenancy.paths import PathRefused, parse

INSIDE = [
    # (path, root)
    ("\\\\FS\\VMSHARE\\BASE.VHDX", "\\\\FS\\VMSHARE"),
    ("\\\\fs\\vmshare\\base.vhdx", "\\\\FS\\VMSHARE"),
    ("\\\\FS\\VMSHARE", "\\\\FS\\VMSHARE\\"),
    ("\\\\FS\\VMSHARE\\", "\\\\FS\\VMSHARE"),
    ("\\\\FS\\VMSHARE\\.\\VMs\\", "\\\\FS\\VMSHARE\\VMs"),
    ("\\\\FS\\VMSHARE\\\\VMs", "\\\\FS\\VMSHARE\\VMs"),
    ("//FS/VMSHARE/VMs/a", "\\\\FS\\VMSHARE\\VMs"),
    ("D:\\VMs\\team-a", "d:\\vms"),
    ("D:\\VMs", "D:\\"),
    ("\\\\FS\\C$\\Bases\\b.vhdx", "\\\\FS\\C$\\Bases"),
    ("\\\\FS\\VMSHARE\\te$m\\b.vhdx", "\\\\FS\\VMSHARE\\TE$M"),
    ("\\\\FS\\VMSHARE\\a~b\\b.vhdx", "\\\\FS\\VMSHARE"),
    ("\\\\FS\\VMSHARE\\x#y (1)\\b.vhdx", "\\\\FS\\VMSHARE"),
    ("\\\\FS\\VMSHARE\\\u00c4rger\\b.vhdx", "\\\\FS\\VMSHARE\\\u00e4RGER"),
]

OUTSIDE = [
    ("\\\\FS\\VMSHARE2\\BASE.VHDX", "\\\\FS\\VMSHARE"),
    ("\\\\FS\\VMSHARE\\VMs2", "\\\\FS\\VMSHARE\\VMs"),
    ("\\\\FS2\\VMSHARE", "\\\\FS\\VMSHARE"),
    ("\\\\attacker\\share\\base.vhdx", "\\\\FS\\VMSHARE"),
    ("C:\\Windows\\System32\\x.vhdx", "D:\\VMs"),
    ("C:\\VMs", "\\\\FS\\VMSHARE\\VMs"),
    ("D:\\", "D:\\VMs"),
    ("\\\\FS\\VMSHARE\\Stra\u00dfe", "\\\\FS\\VMSHARE\\STRASSE"),
]

REFUSED = [
    ("\\\\.\\pipe\\x", "device"),
    ("\\\\?\\C:\\VMs", "device"),
    ("\\\\?\\UNC\\FS\\VMSHARE\\b.vhdx", "device"),
    ("//./pipe/x", "device"),
    ("\\??\\C:\\x", "device"),
    ("\\\\FS\\VMSHARE\\..\\OTHER\\b.vhdx", "'..'"),
    ("\\\\FS\\VMSHARE\\VMs\\..", "'..'"),
    ("C:\\VMs\\..\\Windows", "'..'"),
    ("\\\\FS\\VMSHAR~1\\b.vhdx", "8.3"),
    ("C:\\PROGRA~1\\x", "8.3"),
    ("\\\\FS\\VMSHARE\\base.vhdx:evil", "alternate data stream"),
    ("\\\\FS\\VMSHARE\\dir::$INDEX_ALLOCATION\\b.vhdx", "alternate data stream"),
    ("C:\\VMs\\a|b", "not allowed"),
    ("C:\\VMs\\a*", "not allowed"),
    ("C:\\VMs\\a\"b", "not allowed"),
    ("C:\\VMs\\a<b>", "not allowed"),
    ("C:\\VMs\\a\x01b", "not allowed"),
    ("C:\\VMs\\NUL", "device name"),
    ("C:\\VMs\\com1.vhdx", "device name"),
    ("C:\\VMs\\team.", "strips"),
    ("C:\\VMs\\team \\x", "strips"),
    ("\\\\FS\\VMSHARE\\...\\x", "strips"),
    ("C:VMs", "drive-relative"),
    ("C:", "drive-relative"),
    ("\\VMs", "absolute"),
    ("VMs\\a", "absolute"),
    ("", "empty"),
    ("\\\\FS", "server\\share"),
    ("\\\\FS\\", "server\\share"),
    ("\\\\F S\\share", "plain server name"),
    ("\\\\FS@SSL@443\\share", "plain server name"),
]


@pytest.mark.parametrize(("path", "root"), INSIDE)
def test_inside(path: str, root: str) -> None:
    assert parse(path).is_inside(parse(root))


@pytest.mark.parametrize(("path", "root"), OUTSIDE)
def test_outside(path: str, root: str) -> None:
    assert not parse(path).is_inside(parse(root))


@pytest.mark.parametrize(("path", "why"), REFUSED)
def test_refused(path: str, why: str) -> None:
    with pytest.raises(PathRefused, match=None) as info:
        parse(path)
    assert why in str(info.value)


def test_parent_and_display() -> None:
    base = parse("\\\\FS\\VMSHARE\\.\\Bases\\\\BASE.VHDX")
    assert str(base) == "\\\\FS\\VMSHARE\\Bases\\BASE.VHDX"
    assert str(base.parent) == "\\\\FS\\VMSHARE\\Bases"
    assert str(parse("c:\\VMs\\").parent) == "C:"
