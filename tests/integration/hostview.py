"""Look at the simulated host the way an administrator would: through its own cmdlets."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from hyperv_operator import api
from hyperv_operator.envtest.stack import SimulatedHyperV
from hyperv_operator.hyperv import cmdlets

READ_ONLY_COMMANDS = {
    "get-vm",
    "get-vmharddiskdrive",
    "get-vmsnapshot",
    "get-vhd",
    "test-path",
    "get-item",
    "get-childitem",
    "get-content",
    "get-vmhost",
    "get-psdrive",
    "get-date",
    "get-module",
    "get-ciminstance",
    "get-command",
    "get-vmintegrationservice",
    "get-vmnetworkadapter",
}


def short_name(command: str) -> str:
    return command.rsplit("\\", 1)[-1]


def command_is(command: str, short: str) -> bool:
    return short_name(command).lower() == short.lower()


def is_mutating(command: str) -> bool:
    return short_name(command).lower() not in READ_ONLY_COMMANDS


def _props(obj: Any) -> dict[str, Any]:
    return dict(obj.properties)


def all_vms(sim: SimulatedHyperV) -> list[dict[str, Any]]:
    return [_props(o) for o in sim.host.execute([cmdlets.get_all_vms()])]


def vms_tagged(sim: SimulatedHyperV, uid: str) -> list[dict[str, Any]]:
    tag = api.UID_TAG_PREFIX + uid
    return [vm for vm in all_vms(sim) if tag in str(vm.get("Notes") or "")]


def vm(sim: SimulatedHyperV, vm_id: str) -> dict[str, Any]:
    return _props(sim.host.execute([cmdlets.get_vm_by_id(vm_id)])[0])


def drive_paths(sim: SimulatedHyperV, vm_id: str) -> list[str]:
    return [str(o.properties["Path"]) for o in sim.host.execute([cmdlets.get_vm_hard_disk_drives(vm_id)])]


def vhd(sim: SimulatedHyperV, path: str) -> dict[str, Any]:
    return _props(sim.host.execute([cmdlets.get_vhd(path)])[0])


def file_paths(sim: SimulatedHyperV) -> list[str]:
    return sorted(sim.host.files())


Hook = Callable[[str, dict[str, Any], str], None]


class CommandHook:
    """One callback slot on the simulated host's command hook, swapped per test."""

    def __init__(self) -> None:
        self._hook: Hook | None = None
        self._lock = threading.Lock()

    def __call__(self, command: str, params: dict[str, Any], when: str) -> None:
        with self._lock:
            hook = self._hook
        if hook is not None:
            hook(command, params, when)

    def set(self, hook: Hook) -> None:
        with self._lock:
            self._hook = hook

    def clear(self) -> None:
        with self._lock:
            self._hook = None
