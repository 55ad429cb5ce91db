"""Fixtures for the simulated host's tests: a fake clock and a host with a share, a base and a VM folder."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.simulator.errors import CmdletError
from hyperv_operator.simulator.host import SimulatedHost

SHARE = "\\\\FS\\VMSHARE"
BASE = SHARE + "\\BASE.VHDX"
BASE_SIZE = 9 * 10**9  # file bytes: 120 s to copy at 75 MB/s
VM_ROOT = SHARE + "\\VMs"


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


class Sim:
    """A host plus conveniences used by every test module."""

    def __init__(self, **kwargs: object) -> None:
        self.clock = FakeClock()
        kwargs.setdefault("sleep", self.clock.advance)  # a blocking cmdlet advances the fake clock
        self.host = SimulatedHost(clock=self.clock, **kwargs)  # type: ignore[arg-type]
        self.host.add_folder(SHARE)
        self.host.add_folder(VM_ROOT)
        self.host.add_base_disk(BASE, BASE_SIZE)

    def run(self, *statements: Statement) -> list[HostObject]:
        return self.host.execute(list(statements))

    def one(self, statement: Statement) -> HostObject:
        out = self.run(statement)
        assert len(out) == 1, out
        return out[0]

    def fails(self, *statements: Statement) -> CmdletError:
        with pytest.raises(CmdletError) as info:
            self.run(*statements)
        return info.value

    def wait(self, seconds: float) -> None:
        self.clock.advance(seconds)


@pytest.fixture
def sim() -> Iterator[Sim]:
    yield Sim()


@pytest.fixture
def make_sim() -> Callable[..., Sim]:
    """A host with non-default settings: make_sim(free_bytes=...)."""
    return Sim
