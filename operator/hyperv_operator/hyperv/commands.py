"""Host commands as data.

A `Command` is one PowerShell command (a module-qualified cmdlet, or one of the operator's fixed
scripts) with typed parameters. A `Statement` is a pipeline of commands (`Get-VM -Id x | Start-VM`);
a batch of statements runs in one round trip. Nothing here formats user values into PowerShell
source: parameters travel as typed values, which is what makes the WinRM path injection-proof.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeAlias, Union


@dataclass(frozen=True)
class Int64:
    """A value that must travel as CLIXML `<I64>` (pypsrp sends a bare Python int as `<I32>`)."""

    value: int


@dataclass(frozen=True)
class UInt64:
    """A value that must travel as CLIXML `<U64>`."""

    value: int


@dataclass(frozen=True)
class Switch:
    """A switch parameter that is present (`-Force`); sent without a value."""


SWITCH = Switch()

ParameterValue: TypeAlias = Union[str, int, bool, Int64, UInt64, Switch, bytes, "tuple[str, ...]"]
"""`bytes` travels as CLIXML `<BA>` (a .NET byte[]): file content (issue 14's configuration disk),
which may hold secrets and is therefore never shown (`_show`)."""


@dataclass(frozen=True)
class Command:
    """One command of a pipeline: a cmdlet (`Hyper-V\\New-VM`) or a fixed script with `param()`."""

    name: str
    parameters: tuple[tuple[str, ParameterValue], ...] = ()
    is_script: bool = False

    def parameter(self, name: str) -> ParameterValue | None:
        for key, value in self.parameters:
            if key.lower() == name.lower():
                return value
        return None

    def __str__(self) -> str:  # for logs only; never sent to a host
        shown = "<script>" if self.is_script else self.name
        params = " ".join(f"-{k}" if isinstance(v, Switch) else f"-{k} {_show(v)}" for k, v in self.parameters)
        return f"{shown} {params}".strip()


def _show(value: ParameterValue) -> str:
    if isinstance(value, (Int64, UInt64)):
        return str(value.value)
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"  # file content from a Secret: never in logs, events or errors
    shown = repr(value)
    # Scripts passed as values (the copy worker) would flood logs and status messages.
    return shown if len(shown) <= 200 else f"{shown[:60]}...<{len(shown)} chars>"


def cmd(name: str, /, **parameters: ParameterValue | None) -> Command:
    """Build a cmdlet command; parameters whose value is None are left out."""
    return Command(name, tuple((k, v) for k, v in parameters.items() if v is not None))


def script(text: str, /, **parameters: ParameterValue | None) -> Command:
    return Command(text, tuple((k, v) for k, v in parameters.items() if v is not None), is_script=True)


@dataclass(frozen=True)
class Statement:
    """A pipeline: the output of each command feeds the next."""

    commands: tuple[Command, ...]

    def __str__(self) -> str:
        return " | ".join(str(c) for c in self.commands)


def pipe(*commands: Command) -> Statement:
    return Statement(tuple(commands))


@dataclass(frozen=True)
class HostObject:
    """A deserialized PowerShell object: its type names and its (adapted + extended) properties.

    Property values are plain Python: str, int, bool, float, None, datetime, UUID (as str), lists
    of those, or nested `HostObject`s. Enum values (VM State) arrive as their names ("Running").
    Primitive outputs (a bare string or bool) come as `HostObject(type_names=("System.String",),
    properties={}, value=...)`.
    """

    type_names: tuple[str, ...] = ()
    properties: dict[str, Any] = field(default_factory=dict)
    value: Any = None

    def __getitem__(self, name: str) -> Any:
        return self.properties[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self.properties.get(name, default)

    def is_a(self, type_name: str) -> bool:
        return any(t == type_name or t.endswith("." + type_name) for t in self.type_names)
