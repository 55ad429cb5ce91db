"""What Get-VHD said of base disks, remembered per host for a short while.

A new VM's first observation reads its base disk with Get-VHD: format, type, parent and size, what
the Pending phase checks before anything is created (planner/steps.py). A fleet's VMs share a few
bases, and a base does not change while VMs are made from it (the strategies' premise; the operator
never writes it): the facts are kept per host and path for `TTL` seconds, so the VMs after the first
skip that read. Test-Path still checks in every observation that the base is there; a base replaced
by another file is seen at most `TTL` seconds late. Facts read by file (Get-VHD refused: another host
has the base open) are not kept: that path reports an Event per VM.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from hyperv_operator.provisioning.observation import VhdInfo

TTL = 30.0


class BaseFacts:
    def __init__(self, ttl: float = TTL, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self._clock = clock
        self._facts: dict[tuple[str, str], tuple[VhdInfo, float]] = {}

    def get(self, host_key: str, path: str) -> VhdInfo | None:
        found = self._facts.get(_key(host_key, path))
        if found is None or self._clock() - found[1] > self.ttl:
            return None
        return found[0]

    def put(self, host_key: str, path: str, info: VhdInfo) -> None:
        if info.in_use_elsewhere:
            return
        now = self._clock()
        if len(self._facts) > 256:  # bases are few; drop what has expired
            self._facts = {k: v for k, v in self._facts.items() if now - v[1] <= self.ttl}
        self._facts[_key(host_key, path)] = (info, now)

    def forget(self, host_key: str, path: str) -> None:
        self._facts.pop(_key(host_key, path), None)

    def __len__(self) -> int:
        return len(self._facts)


def _key(host_key: str, path: str) -> tuple[str, str]:
    return host_key, path.rstrip("\\").lower()  # as Observation keys its paths
