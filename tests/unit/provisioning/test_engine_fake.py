"""Engine wiring against a tiny fake host (Differencing only): batching, parsing, delete, errors.
The full semantics are exercised against the simulator in test_engine_simulator.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import pytest

from hyperv_operator.api import HyperVHostSpec, VirtualMachineSpec
from hyperv_operator.hyperv.commands import HostObject, Statement
from hyperv_operator.hyperv.errors import PermanentHostError, TransientHostError
from hyperv_operator.provisioning.engine import CopySlots, VmRef, finalize, reconcile

BASE = "C:\\Bases\\base.vhdx"
HOST = HyperVHostSpec(address="hv1", default_vm_path="D:\\VMs")
REF = VmRef("default", "web", "1234abcd-0000-4000-8000-000000000001", 1)
NOW = datetime(2025, 1, 1, tzinfo=UTC)


class Died(Exception):
    """The operator process died mid-pipeline."""


class FakeHost:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {BASE.lower(): {"Path": BASE, "VhdType": "Dynamic"}}
        self.folders: set[str] = set()
        self.vms: dict[str, dict[str, Any]] = {}
        self.runs: list[list[str]] = []
        self.fail_next: Exception | None = None
        self.config_folder = True  # New-VM -Path p makes p\\<name> (the fake can be told not to)
        self.die_after_new_vm = False

    async def run(self, statements: Sequence[Statement]) -> list[HostObject]:
        self.runs.append([str(s) for s in statements])
        if self.fail_next:
            error, self.fail_next = self.fail_next, None
            raise error
        out: list[HostObject] = []
        for st in statements:
            out += self._one(st)
        return out

    async def close(self) -> None:
        pass

    def _one(self, st: Statement) -> list[HostObject]:
        names = [c.name.rsplit("\\", 1)[-1] for c in st.commands]
        first = st.commands[0]
        p = first.parameter
        vm = self.vms.get(str(p("Id"))) if names[0] == "Get-VM" and p("Id") else None
        if names == ["Get-VM"] and not p("Id"):
            return [self._vm(v) for v in self.vms.values()]
        if names == ["Get-CimInstance"]:
            return []  # no KVP component: the guest reports no hostname
        if names[0] == "Get-VM" and vm is None:
            raise PermanentHostError("VM not found", category="ObjectNotFound")
        if names == ["Test-Path"]:
            value = p("LiteralPath")
            paths = [str(v).lower() for v in (value if isinstance(value, tuple) else (value,))]
            return [HostObject(("System.Boolean",), {}, path in self.files or path in self.folders)
                    for path in paths]
        if names == ["Get-VHD"]:
            info = self.files.get(str(p("Path")).lower())
            if info is None:
                raise PermanentHostError(f"'{p('Path')}' is not an existing virtual hard disk file.",
                                         category="ObjectNotFound")
            return [HostObject(("Microsoft.Vhd.PowerShell.VirtualHardDisk",), dict(info))]
        if names == ["New-Item"]:
            self.folders.add(str(p("Path")).lower())
            return []
        if names == ["New-VHD"]:
            self.files[str(p("Path")).lower()] = {"Path": p("Path"), "VhdType": "Differencing",
                                                  "ParentPath": p("ParentPath")}
            return []
        if names[0] == "New-VM":
            vm_id = str(uuid.uuid4())
            vm = self.vms[vm_id] = {"Id": vm_id, "Name": p("Name"), "State": "Off", "Notes": "", "ProcessorCount": 1,
                                    "Path": f"{p('Path')}\\{p('Name')}", "Drive": p("VHDPath")}
            if self.config_folder:
                self.folders.add(f"{p('Path')}\\{p('Name')}".lower())
            if self.die_after_new_vm:
                self.die_after_new_vm = False
                raise Died("after New-VM")
        assert vm is not None
        out: list[HostObject] = [self._vm(vm)]
        for name, command in zip(names[1:], st.commands[1:], strict=True):
            passthru = command.parameter("Passthru") is not None
            out = []
            if name == "Set-VM":
                vm["Notes"] = command.parameter("Notes") or vm["Notes"]
                vm["ProcessorCount"] = command.parameter("ProcessorCount") or vm["ProcessorCount"]
            elif name == "Start-VM":
                vm["State"] = "Running"
            elif name == "Stop-VM":
                vm["State"] = "Off"
            elif name == "Remove-VM":
                del self.vms[vm["Id"]]
            elif name == "Get-VMHardDiskDrive":
                out = [HostObject(("Microsoft.HyperV.PowerShell.HardDiskDrive",), {"Path": vm["Drive"]})]
                continue
            elif name == "Get-VMSnapshot":
                continue
            elif name == "Get-VMIntegrationService":  # a guest whose heartbeat answers at once
                out = [HostObject(("Microsoft.HyperV.PowerShell.VMIntegrationComponent",),
                                  {"Name": "Heartbeat", "PrimaryStatusDescription": "OK"})]
                continue
            elif name == "Get-VMNetworkAdapter":
                continue
            if passthru:
                out = [self._vm(vm)]
        return out

    @staticmethod
    def _vm(v: dict[str, Any]) -> HostObject:
        # A guest whose heartbeat answers as soon as the VM runs (Get-VM's VMHeartbeatStatus).
        heartbeat = "OkApplicationsUnknown" if v.get("State") == "Running" else None
        return HostObject(("Microsoft.HyperV.PowerShell.VirtualMachine",),
                          {**{k: v[k] for k in v if k != "Drive"}, "Heartbeat": heartbeat})


def _remove_item(host: FakeHost) -> None:
    original = host._one

    def one(st: Statement) -> list[HostObject]:
        if st.commands[0].name.endswith("Remove-Item"):
            path = str(st.commands[0].parameter("LiteralPath")).lower()
            host.files.pop(path, None)
            host.folders.discard(path)
            return []
        return original(st)

    host._one = one  # type: ignore[method-assign]


def _drive(host: FakeHost, s: VirtualMachineSpec, status: dict[str, Any], *, deleting: bool = False
           ) -> tuple[dict[str, Any], int]:
    slots = CopySlots()
    for step in range(50):
        fn = finalize if deleting else reconcile
        outcome = asyncio.run(fn(host, REF, s, status, HOST, "hv1", slots, NOW))
        status = {k: v for k, v in outcome.status.items() if v is not None}
        if outcome.finished or outcome.requeue_after is None:
            return status, step + 1
    raise AssertionError(status.get("message"))


def test_differencing_against_fake_host_and_delete() -> None:
    host = FakeHost()
    _remove_item(host)
    s = VirtualMachineSpec.from_dict({"hostRef": {"name": "hv1"}, "baseVhd": BASE, "strategy": "Differencing",
                                      "readiness": "Running"})
    status, steps = _drive(host, s, {})
    assert status["phase"] == "Provisioned", status["message"]
    assert len(host.vms) == 1
    vm = next(iter(host.vms.values()))
    assert vm["Notes"] == "hyperv-operator.io/uid=" + REF.uid and vm["State"] == "Running"
    assert status["vmId"] == vm["Id"]
    assert status["disk"]["path"] == "D:\\VMs\\web-1234abcd\\web.vhdx"
    # One run: observe (one round trip), then New-VHD and New-VM | Set-VM | Start-VM in one pipeline.
    assert (steps, len(host.runs)) == (1, 2), host.runs
    _drive(host, s, status, deleting=True)
    assert host.vms == {}
    assert set(host.files) == {BASE.lower()}
    assert not any(f.startswith("d:\\vms\\web-1234abcd") for f in host.folders)


def test_transient_and_permanent_errors_from_the_engine() -> None:
    host = FakeHost()
    s = VirtualMachineSpec.from_dict({"hostRef": {"name": "hv1"}, "baseVhd": BASE, "strategy": "Differencing"})
    host.fail_next = TransientHostError("The operation cannot be performed while the object is in use")
    outcome = asyncio.run(reconcile(host, REF, s, {}, HOST, "hv1", CopySlots(), NOW))
    assert outcome.requeue_after is not None and 1.0 <= outcome.requeue_after <= 2.0  # first retry: 2 s, jittered
    assert outcome.status["retry"]["attempts"] == 1
    rec = next(c for c in outcome.status["conditions"] if c["type"] == "Reconciling")
    assert (rec["status"], rec["reason"]) == ("True", "HostBusy")
    host.fail_next = PermanentHostError("Access is denied", category="PermissionDenied")
    outcome = asyncio.run(reconcile(host, REF, s, {}, HOST, "hv1", CopySlots(), NOW))
    assert outcome.status["phase"] == "Failed" and outcome.requeue_after is None
    assert "Access is denied" in outcome.status["lastError"]


def test_missing_base_in_engine_creates_nothing() -> None:
    host = FakeHost()
    host.files.clear()
    s = VirtualMachineSpec.from_dict({"hostRef": {"name": "hv1"}, "baseVhd": BASE, "strategy": "Copy"})
    status, _ = _drive(host, s, {})
    assert status["phase"] == "Failed"
    assert all(not any(w in r for r in run for w in ("New-", "Set-", "Start-")) for run in host.runs)


def test_crash_right_after_new_vm_finds_the_untagged_vm_without_relying_on_its_config_folder() -> None:
    """New-VM ran, the operator died before Set-VM tagged it and before the status had its Id: the next
    run must find that VM in our folder (vm_dir and the disk exist), never create a second one."""
    host = FakeHost()
    host.config_folder = False
    host.die_after_new_vm = True
    s = VirtualMachineSpec.from_dict({"hostRef": {"name": "hv1"}, "baseVhd": BASE, "strategy": "Differencing"})
    with pytest.raises(Died):
        asyncio.run(reconcile(host, REF, s, {}, HOST, "hv1", CopySlots(), NOW))
    assert len(host.vms) == 1 and next(iter(host.vms.values()))["Notes"] == ""
    status, _ = _drive(host, s, {})
    assert status["phase"] == "Provisioned", status["message"]
    assert len(host.vms) == 1
    vm = next(iter(host.vms.values()))
    assert status["vmId"] == vm["Id"] and vm["Notes"] == "hyperv-operator.io/uid=" + REF.uid
