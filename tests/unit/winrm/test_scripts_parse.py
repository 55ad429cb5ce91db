"""The operator's fixed PowerShell scripts must be valid PowerShell (tree-sitter-powershell)."""

from __future__ import annotations

import pytest
import tree_sitter
import tree_sitter_powershell

from hyperv_operator.hyperv import scripts


def errors_in(text: str) -> list[str]:
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    tree = parser.parse(text.encode("utf-8"))
    found: list[str] = []

    def walk(node: tree_sitter.Node) -> None:
        if node.type == "ERROR" or node.is_missing:
            found.append(f"{node.type} at {node.start_point}: {node.text!r}")
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    if tree.root_node.has_error and not found:
        found.append("root has_error")
    return found


@pytest.mark.parametrize("name", ["START_BACKGROUND_COPY", "COPY_WORKER"])
def test_fixed_script_has_no_syntax_errors(name: str) -> None:
    assert errors_in(getattr(scripts, name)) == []


def test_parser_catches_a_syntax_error() -> None:
    assert errors_in("param([string]$A) if ($A -eq 'x' { throw 'y' }") != []


def test_start_background_copy_takes_values_as_parameters() -> None:
    text = scripts.START_BACKGROUND_COPY
    assert text.lstrip().startswith("param(")
    statement = scripts.start_background_copy("a'b", "c", "d", "e")
    command = statement.commands[0]
    assert command.is_script and command.name == text
    assert "a'b" not in command.name
    assert command.parameter("Source") == "a'b"


_CONTROL = {chr(c) for c in range(32)} - {"\t", "\n", "\r"}


@pytest.mark.parametrize("name", ["START_BACKGROUND_COPY", "COPY_WORKER"])
def test_fixed_script_has_no_control_characters(name: str) -> None:
    """A control character parses as whitespace or inside a string, so the parser above passes it;
    in a path it names no file on Windows (Naming Files: characters 1-31 are not allowed). The start
    script once carried a vertical tab where `\\v1.0` belongs, and every copy would have failed."""
    text: str = getattr(scripts, name)
    found = sorted({f"U+{ord(ch):04X} at {text.index(ch)}" for ch in text if ch in _CONTROL})
    assert not found, found


def test_shipped_jea_role_has_no_control_characters() -> None:
    from pathlib import Path

    root = Path(__file__).resolve().parents[3] / "manifests" / "jea"
    for path in sorted(root.iterdir()):
        text = path.read_text(encoding="utf-8")
        assert not [ch for ch in text if ch in _CONTROL], path.name


def test_the_worker_is_started_with_the_hosts_powershell_exe() -> None:
    assert "Join-Path $env:SystemRoot 'System32\\WindowsPowerShell\\v1.0\\powershell.exe'" in \
        scripts.START_BACKGROUND_COPY
