"""A JEA (RestrictedRemoteServer) endpoint in front of the simulated host.

What Windows does on such an endpoint, and this models (ledger: "Names, sizes and endpoints (JEA)"):
- The session is in NoLanguage mode: a command sent as script text (PSRP `IsScript=true`) is refused
  before it runs with ParseException / ParserError / FullyQualifiedErrorId `ScriptsNotAllowed`
  (PowerShell's engine/hostifaces/Command.cs, CreateCommandProcessor; about_Language_Modes).
- Only the role's visible commands exist; any other name, including a module-qualified name of a
  cmdlet the role proxies with restricted parameters, is "not recognized"
  (CommandNotFoundException). Windows documents proxy functions for constrained cmdlets
  (role-capabilities page, "Creating custom functions"); whether a module-qualified name from the
  client reaches a proxied cmdlet is not documented, so the simulator takes the stricter reading and
  refuses every module-qualified name.
- A visible cmdlet with a `Parameters` list accepts only those (plus the common parameters): others
  fail like an unknown parameter (NamedParameterNotFound); a `ValidateSet` refuses other values
  (ParameterArgumentValidationError).
- A role function (FunctionDefinitions) runs its body in full language: here, the fixed script it was
  generated from, with the embedded constants as parameters.

The role is `hyperv_operator.hyperv.jea` (the shipped .psrc is checked equal to it by a unit test).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from hyperv_operator.hyperv import jea
from hyperv_operator.hyperv.commands import Command, HostObject, ParameterValue, Statement
from hyperv_operator.simulator.cmdlets import not_recognized
from hyperv_operator.simulator.errors import CmdletError, run_batch

SCRIPTS_NOT_ALLOWED = (
    "The syntax is not supported by this runspace. This can occur if the runspace is in no-language mode."
)

class Executor(Protocol):
    def execute(self, statements: Sequence[Statement]) -> list[HostObject]: ...


_COMMON = frozenset(
    p.lower()
    for p in ("Verbose", "Debug", "ErrorAction", "WarningAction", "InformationAction", "ErrorVariable",
              "WarningVariable", "InformationVariable", "OutVariable", "OutBuffer", "PipelineVariable")
)

_VISIBLE: dict[str, jea.VisibleCmdlet] = {c.name.rsplit("\\", 1)[-1].lower(): c for c in jea.VISIBLE_CMDLETS}


def scripts_not_allowed(text: str) -> CmdletError:
    return CmdletError(SCRIPTS_NOT_ALLOWED, category="ParserError", fq_error_id="ScriptsNotAllowed",
                       target=text.strip()[:60], exception_type="System.Management.Automation.ParseException")


def _parameter_error(command: str, message: str, reason: str, target: str) -> CmdletError:
    return CmdletError(message, category="InvalidArgument", fq_error_id=f"{reason},{command}", target=target,
                       exception_type="System.Management.Automation.ParameterBindingException")


def _check_parameters(visible: jea.VisibleCmdlet, command: Command) -> None:
    short = visible.name.rsplit("\\", 1)[-1]
    allowed = {p.lower() for p in visible.parameters}
    sets = {name.lower(): values for name, values in visible.validate_set}
    for name, value in command.parameters:
        key = name.lower()
        if key in _COMMON:
            continue
        if key not in allowed:
            raise _parameter_error(short, f"A parameter cannot be found that matches parameter name '{name}'.",
                                   "NamedParameterNotFound", name)
        if key in sets and isinstance(value, str) and value.lower() not in {v.lower() for v in sets[key]}:
            raise _parameter_error(
                short,
                f"Cannot validate argument on parameter '{name}'. The argument \"{value}\" does not belong to the "
                f"set \"{','.join(sets[key])}\" specified by the ValidateSet attribute. Supply an argument that is "
                "in the set and then try the command again.",
                "ParameterArgumentValidationError", name)


def restrict_command(command: Command) -> Command:
    """The command as the JEA session runs it (a role function -> its script), or the error Windows gives."""
    if command.is_script:
        raise scripts_not_allowed(command.name)
    if "\\" in command.name:
        raise not_recognized(command.name)
    function = jea.function_named(command.name)
    if function is not None:
        embedded = {name.lower() for name, _ in function.embedded}
        for name, _ in command.parameters:
            if name.lower() in embedded:
                raise _parameter_error(function.name,
                                       f"A parameter cannot be found that matches parameter name '{name}'.",
                                       "NamedParameterNotFound", name)
        params: tuple[tuple[str, ParameterValue], ...] = (*command.parameters, *function.embedded)
        return Command(function.script, params, is_script=True)
    visible = _VISIBLE.get(command.name.lower())
    if visible is None:
        raise not_recognized(command.name)
    _check_parameters(visible, command)
    return Command(visible.name, command.parameters)


def restrict(statement: Statement) -> Statement:
    """A statement as the JEA session runs it; a refused command fails it before any of its commands
    run (a pipeline's commands are all resolved before it starts)."""
    return Statement(tuple(restrict_command(c) for c in statement.commands))


class RestrictedExecutor:
    """Runs statements one after the other through `restrict`. A refused command fails its statement
    (CommandNotFoundException, statement-terminating) and, as any failed statement, does not end the
    batch: the statements after it run too (see SimulatedHost.execute)."""

    def __init__(self, executor: Executor) -> None:
        self._executor = executor

    def execute(self, statements: Sequence[Statement]) -> list[HostObject]:
        return run_batch(statements, lambda statement: self._executor.execute([restrict(statement)]))
