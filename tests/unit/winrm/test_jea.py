"""The shipped JEA role capability / session configuration, the client's JEA mode, the simulated endpoint."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import pytest
import tree_sitter
import tree_sitter_powershell

from hyperv_operator.hyperv import cmdlets, jea, probe, scripts
from hyperv_operator.hyperv.commands import SWITCH, Command, Statement, cmd, pipe
from hyperv_operator.hyperv.winrm import WinRMSettings, add_statements
from hyperv_operator.simulator import jea as sim_jea
from hyperv_operator.simulator.errors import CmdletError

REPO = Path(__file__).resolve().parents[3]
PSRC = REPO / "manifests" / "jea" / "HyperVOperator.psrc"
PSSC = REPO / "manifests" / "jea" / "HyperVOperator.pssc"


# --- a PowerShell data file -> Python, through tree-sitter-powershell -----------------------------------


def _parse(text: str) -> tree_sitter.Node:
    parser = tree_sitter.Parser(tree_sitter.Language(tree_sitter_powershell.language()))
    tree = parser.parse(text.encode("utf-8"))
    assert not tree.root_node.has_error, "the file does not parse as PowerShell"
    return tree.root_node


def _value(node: tree_sitter.Node) -> Any:
    kind = node.type
    named = [c for c in node.children if c.is_named and c.type != "comment"]
    text = (node.text or b"").decode()
    if kind == "hash_literal_expression":
        body = next((c for c in named if c.type == "hash_literal_body"), None)
        result: dict[str, Any] = {}
        for entry in [] if body is None else [c for c in body.children if c.type == "hash_entry"]:
            key = next(c for c in entry.children if c.type == "key_expression")
            value = next(c for c in entry.children if c.type in ("pipeline", "statement"))
            result[(key.text or b"").decode().strip()] = _value(value)
        return result
    if kind == "array_expression":
        statements = next((c for c in named if c.type == "statement_list"), None)
        items: list[Any] = []
        for child in [] if statements is None else [c for c in statements.children if c.is_named]:
            value = _value(child)
            items.extend(value if isinstance(value, list) else [value])
        return items
    if kind == "array_literal_expression" and len(named) > 1:
        return [_value(c) for c in named]
    if kind == "string_literal":
        if text.startswith("'"):
            return text[1:-1].replace("''", "'")
        return text
    if kind == "script_block_expression":
        return text
    if kind == "variable":
        return {"$true": True, "$false": False}.get(text.lower(), text)
    if len(named) == 1:
        return _value(named[0])
    return text


def data_file(path: Path) -> dict[str, Any]:
    value = _value(_parse(path.read_text(encoding="utf-8")))
    assert isinstance(value, dict)
    return value


def _names(entries: Any) -> list[str]:
    entries = entries if isinstance(entries, list) else [entries]
    return [e if isinstance(e, str) else e["Name"] for e in entries]


# --- the shipped files -----------------------------------------------------------------------------


def test_shipped_files_are_the_generated_ones() -> None:
    """Regenerate with `python -m hyperv_operator.hyperv.jea manifests/jea` when this fails."""
    assert PSRC.read_text(encoding="utf-8") == jea.role_capability_text()
    assert PSSC.read_text(encoding="utf-8") == jea.session_configuration_text()


def test_psrc_lists_exactly_the_commands_the_operator_sends() -> None:
    role = data_file(PSRC)
    listed = _names(role["VisibleCmdlets"])
    assert len(listed) == len(set(listed)), "a cmdlet is listed twice"
    assert set(listed) == cmdlets.ALL_CMDLETS | probe.PROBE_CMDLETS
    assert set(listed) >= cmdlets.ALL_CMDLETS
    assert role["VisibleProviders"] == "FileSystem"
    assert _names(role["VisibleFunctions"]) == [f.name for f in jea.FUNCTIONS]
    assert _names(role["FunctionDefinitions"]) == [f.name for f in jea.FUNCTIONS]


def test_pssc_is_a_restricted_endpoint_with_the_role() -> None:
    config = data_file(PSSC)
    assert config["SessionType"] == "RestrictedRemoteServer"
    roles = config["RoleDefinitions"]
    assert [r["RoleCapabilities"] for r in roles.values()] == [jea.ROLE_NAME]


def _every_statement() -> list[Statement]:
    """Every builder in cmdlets.py / probe.py, called with each option, as the operator calls them."""
    out: list[Statement] = []
    for name, builder in [*inspect.getmembers(cmdlets, inspect.isfunction),
                          *inspect.getmembers(probe, inspect.isfunction)]:
        if builder.__module__ not in (cmdlets.__name__, probe.__name__) or name.startswith("_"):
            continue
        params = inspect.signature(builder).parameters
        if name in ("split_outputs", "build_probe", "probe_statements", "probe_sync", "probe_async", "probe_client"):
            continue
        args: dict[str, Any] = {}
        for pname, param in params.items():
            annotation = str(param.annotation)
            args[pname] = 1 if "int" in annotation else ("Off" if pname == "switch_name" else "x")
        if name == "set_vm":
            args.update(notes="n", processor_count=2, checkpoint_type="Standard")
        if name == "stop_vm":
            out.append(builder(**{**args, "turn_off": True}))
            args["turn_off"] = False
        if name == "new_configured_vm":
            out.append(builder(**{**args, "notes": "n", "processor_count": 2, "checkpoint_type": None,
                                  "start": True, "checkpoint": None}))
            args.update(notes="n", processor_count=2, checkpoint_type="Standard", start=False, checkpoint="quick")
        if name == "set_vm_firmware":
            out.append(builder(**{**args, "secure_boot": False, "template": None}))
            args.update(secure_boot=True, template="MicrosoftUEFICertificateAuthority")
        if name == "get_drive":
            args = {"drive": "C"}
        if name == "get_kvp_component":
            args = {"vm_id": "6e1f2a3b-1111-2222-3333-444455556666"}
        out.append(builder(**args))
    return out


def test_every_parameter_the_operator_binds_is_allowed_by_the_role() -> None:
    statements = _every_statement()
    assert len(statements) > 20
    by_name = {c.name.lower(): c for c in jea.VISIBLE_CMDLETS}
    for statement in statements:
        for command in statement.commands:
            visible = by_name[command.name.lower()]
            for pname, value in command.parameters:
                assert pname in visible.parameters, f"{command.name} -{pname} is not in the role"
                allowed = dict(visible.validate_set).get(pname)
                if allowed is not None:
                    assert value in allowed


def test_function_body_is_the_script_with_the_worker_embedded() -> None:
    (function,) = jea.FUNCTIONS
    body = jea.function_body(function)
    _parse(body)
    assert "$Worker" not in body.split(")", 1)[0].split("param(", 1)[1]
    # The worker travels inside the function as UTF-16 base64 (it holds a here-string of its own).
    import base64
    import re

    (encoded,) = re.findall(r"FromBase64String\('([A-Za-z0-9+/=]+)'\)", body)
    assert base64.b64decode(encoded).decode("utf-16-le") == scripts.COPY_WORKER.strip("\n")
    # Everything after the param block is the script's own text, unchanged.
    assert body.rstrip().endswith(scripts.START_BACKGROUND_COPY.split("\n)\n", 1)[1].rstrip())
    with pytest.raises(ValueError):
        jea.function_body(jea.JeaFunction("X", "param([string]$A)\n$A", (("B", "b"),)))


# --- client in JEA mode ------------------------------------------------------------------------------


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def add_cmdlet(self, name: str) -> Recorder:
        self.calls.append(("cmdlet", name))
        return self

    def add_script(self, text: str) -> Recorder:
        self.calls.append(("script", text))
        return self

    def add_parameter(self, name: str, value: Any = None) -> Recorder:
        self.calls.append(("param", name, value))
        return self

    def add_statement(self) -> Recorder:
        self.calls.append(("statement",))
        return self


def test_restricted_client_calls_the_function_and_unqualified_cmdlets() -> None:
    ps = Recorder()
    add_statements(ps, [scripts.start_background_copy("s", "d", "p", "t"), cmdlets.get_vm_by_id("id")],
                   restricted=True)
    assert ps.calls[0] == ("cmdlet", "Start-HvopBackgroundCopy")
    assert ("param", "Worker", scripts.COPY_WORKER) not in ps.calls
    assert ("param", "Source", "s") in ps.calls
    assert not any(c[0] == "script" for c in ps.calls)
    assert ("cmdlet", "Get-VM") in ps.calls


def test_full_language_client_sends_the_script_and_qualified_names() -> None:
    ps = Recorder()
    add_statements(ps, [scripts.start_background_copy("s", "d", "p", "t"), cmdlets.get_vm_by_id("id")])
    assert ps.calls[0] == ("script", scripts.START_BACKGROUND_COPY)
    assert ("cmdlet", "Hyper-V\\Get-VM") in ps.calls


@pytest.mark.parametrize(("name", "restricted"), [("Microsoft.PowerShell", False), ("microsoft.powershell32", False),
                                                  ("HyperVOperator", True)])
def test_restricted_endpoint_follows_the_configuration_name(name: str, restricted: bool) -> None:
    settings = WinRMSettings(server="h", auth="basic", username="u", password="p", configuration_name=name)
    assert settings.restricted_endpoint is restricted


def test_restricted_can_be_forced_either_way() -> None:
    settings = WinRMSettings(server="h", auth="basic", username="u", password="p", configuration_name="Custom",
                             restricted=False)
    assert settings.restricted_endpoint is False


# --- the simulated endpoint ---------------------------------------------------------------------------


def _refused(command: Command) -> CmdletError:
    with pytest.raises(CmdletError) as info:
        sim_jea.restrict(pipe(command))
    return info.value


def test_script_text_is_refused_as_in_no_language_mode() -> None:
    err = _refused(scripts.start_background_copy("s", "d", "p", "t").commands[0])
    assert err.fq_error_id == "ScriptsNotAllowed"
    assert err.category == "ParserError"
    assert err.exception_type == "System.Management.Automation.ParseException"
    assert "no-language mode" in err.message


@pytest.mark.parametrize("name", ["Invoke-Expression", "Hyper-V\\Get-VM", "Get-Date"])
def test_commands_outside_the_role_are_not_recognized(name: str) -> None:
    err = _refused(cmd(name))
    assert err.fq_error_id == "CommandNotFoundException"
    assert err.message.startswith(f"The term '{name}' is not recognized as the name of a cmdlet")


def test_parameters_outside_the_role_are_refused() -> None:
    err = _refused(cmd("Remove-Item", LiteralPath="C:\\x", Recurse=SWITCH))
    assert err.fq_error_id == "NamedParameterNotFound,Remove-Item"
    err = _refused(cmd("New-Item", ItemType="File", Path="C:\\x"))
    assert err.fq_error_id == "ParameterArgumentValidationError,New-Item"
    err = _refused(cmd("Start-HvopBackgroundCopy", Worker="Remove-Item C:\\ -Recurse"))
    assert err.fq_error_id.startswith("NamedParameterNotFound")


def test_role_commands_run_as_their_cmdlet_or_script() -> None:
    (statement,) = [sim_jea.restrict(pipe(cmd("get-vm", Id="x", ErrorAction="Stop"), cmd("Start-VM")))]
    assert [c.name for c in statement.commands] == ["Hyper-V\\Get-VM", "Hyper-V\\Start-VM"]
    run = sim_jea.restrict(pipe(cmd("Start-HvopBackgroundCopy", Source="s", Destination="d", PartialPath="p",
                                    StatusPath="t")))
    (command,) = run.commands
    assert command.is_script and command.name == scripts.START_BACKGROUND_COPY
    assert command.parameter("Worker") == scripts.COPY_WORKER


def test_every_fixed_script_has_a_role_function() -> None:
    """A new fixed script in scripts.py must get a JEA function, or a JEA endpoint could not run it."""
    texts = [v for v in vars(scripts).values() if isinstance(v, str) and scripts.script_name(v) is not None]
    assert len(texts) == len(scripts.SCRIPT_IDS)
    # The copy worker is not sent over WinRM: the start script launches it in its own powershell.exe.
    sent = [t for t in texts if t != scripts.COPY_WORKER]
    assert len(sent) == len(texts) - 1
    for text in sent:
        assert jea.function_for_script(text) is not None, scripts.script_name(text)


def test_a_script_without_role_function_is_refused_by_the_client() -> None:
    from hyperv_operator.hyperv.commands import script
    from hyperv_operator.hyperv.errors import PermanentHostError

    with pytest.raises(PermanentHostError, match="JEA"):
        add_statements(Recorder(), [pipe(script("param($A) $A", A="x"))], restricted=True)
