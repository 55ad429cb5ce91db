"""Issue 14: unattend.xml for sysprepped Windows bases (spec.bootstrap.format Unattend), against the
simulated host (in process).

The operator mounts the VM's OWN disk (the differencing child or the copy, never the base), writes
the Secret's unattend.xml to \\Windows\\Panther\\unattend.xml on its Windows volume and dismounts it
before the first start; the simulated Windows Setup applies it (ComputerName -> KVP hostname); the
base stays byte-identical; a crash after any host command converges; Quick is refused; the content
never shows in status, events or action descriptions."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from tests.unit.provisioning.test_engine_simulator import (
    HOST,
    SHARE,
    World,
    crash_after,
    delete,
    merged,
    mutations,
    provision,
    ref,
    run,
    spec,
)

from hyperv_operator.api import VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.provisioning import bootstrap, unattend
from hyperv_operator.provisioning.engine import reconcile
from hyperv_operator.provisioning.layout import layout_for
from hyperv_operator.provisioning.model import VmRef

WIN = SHARE + "\\WIN2022.VHDX"
PASSWORD = "Pa55-Very-Private"
PANTHER = "Windows\\Panther\\unattend.xml"


def answer(computer: str) -> bytes:
    return (f'<?xml version="1.0" encoding="utf-8"?>\n<unattend xmlns="urn:schemas-microsoft-com:unattend">'
            f'<settings pass="specialize"><component name="Microsoft-Windows-Shell-Setup" '
            f'processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" '
            f'versionScope="nonSxS"><ComputerName>{computer}</ComputerName></component></settings>'
            f'<settings pass="oobeSystem"><component name="Microsoft-Windows-Shell-Setup" '
            f'processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" '
            f'versionScope="nonSxS"><UserAccounts><AdministratorPassword><Value>{PASSWORD}</Value>'
            f'<PlainText>true</PlainText></AdministratorPassword></UserAccounts></component></settings>'
            f'</unattend>').encode()


def _world() -> World:
    world = World()
    world.host.add_windows_base(WIN, 64 * 1024 * 1024)
    return world


def _spec(strategy: str, vm: VmRef, data: dict[str, bytes] | None, base: str = WIN) -> VirtualMachineSpec:
    s = spec(strategy, baseVhd=base, bootstrap={"secretRef": {"name": "win-init"}, "format": "Unattend"})
    assert s.bootstrap is not None and s.bootstrap.unattend
    encoded = None if data is None else {k: base64.b64encode(v).decode() for k, v in data.items()}
    return VirtualMachineSpec(**{**s.__dict__, "bootstrap": bootstrap.with_files(s.bootstrap, encoded, vm.name,
                                                                                   vm.uid)})


def _settle(world: World, vm: VmRef, s: VirtualMachineSpec, steps: int = 30) -> dict[str, Any]:
    """Reconcile `steps` times (for runs that stall and so never converge)."""
    status: dict[str, Any] = {}
    for _ in range(steps):
        outcome = run(reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
        status = merged(status, outcome)
        run(world.wait(outcome.requeue_after or 0.1))
    return status


def _disk(vm: VmRef) -> str:
    return layout_for(vm.name, vm.uid, None, "C:\\VMs").disk


@pytest.mark.parametrize("strategy", ["Differencing", "Copy"])
def test_the_answer_file_reaches_windows_setup_through_the_vms_own_disk_and_the_base_is_untouched(
        strategy: str, caplog: pytest.LogCaptureFixture) -> None:
    world = _world()
    before = world.host.disk_fingerprint(WIN)
    vm = ref(f"win-{strategy.lower()}")
    with caplog.at_level(logging.DEBUG):
        status = run(provision(world, vm, _spec(strategy, vm, {"unattend.xml": answer("WEB-01")})))
    assert status["phase"] == "Provisioned", status.get("message")
    assert status["guest"]["hostname"] == "WEB-01"  # KVP: Windows Setup applied ComputerName
    assert status["bootstrap"]["state"] == "Applied" and status["bootstrap"]["completedAt"]
    assert world.host.guest_answer_file(status["vmId"]) == PANTHER
    assert world.host.os_files(_disk(vm))[PANTHER] == answer("WEB-01")  # in the VM's own disk
    assert world.host.disk_fingerprint(WIN) == before and PANTHER not in world.host.os_files(WIN)
    assert PASSWORD not in json.dumps(status) and PASSWORD not in caplog.text
    written = [p for name, p in world.host.call_log() if name.endswith("Set-Content")]
    assert [str(p["LiteralPath"]) for p in written] == [f"D:\\{PANTHER}"]


def test_a_generation_1_image_whose_system_reserved_partition_gets_a_letter_too() -> None:
    world = World()
    world.host.add_windows_base(WIN, 64 * 1024 * 1024, generation=1)
    vm = ref("win-gen1")
    s = spec("Differencing", baseVhd=WIN, generation=1, bootstrap={"secretRef": {"name": "w"}, "format": "Unattend"})
    assert s.bootstrap is not None
    s = VirtualMachineSpec(**{**s.__dict__, "bootstrap": bootstrap.with_files(
        s.bootstrap, {"unattend.xml": base64.b64encode(answer("WEB-G1")).decode()}, vm.name, vm.uid)})
    status = run(provision(world, vm, s))
    assert status["guest"]["hostname"] == "WEB-G1"
    written = [str(p["LiteralPath"]) for name, p in world.host.call_log() if name.endswith("Set-Content")]
    assert written == [f"E:\\{PANTHER}"]  # D: is System Reserved: the volume with \Windows\Panther is E:


@pytest.mark.parametrize("strategy", ["Differencing", "Copy"])
def test_a_crash_after_every_command_converges_and_never_mounts_the_base(strategy: str) -> None:
    clean = _world()
    vm = ref(f"win-crash-{strategy.lower()}")
    s = _spec(strategy, vm, {"unattend.xml": answer("WEB-02")})
    run(provision(clean, vm, s))
    total = mutations(clean)
    for k in range(1, total + 1):
        world = _world()
        before = world.host.disk_fingerprint(WIN)
        mounted: list[str] = []

        def watch(name: str, params: dict[str, object], when: str, sink: list[str] = mounted) -> None:
            if when == "before" and name.endswith("Mount-VHD") and not name.endswith("Dismount-VHD"):
                path = params.get("Path")
                sink.extend(str(p) for p in (path if isinstance(path, (list, tuple)) else [path]))

        world.host.on_command(watch)
        crash_after(world, k)
        status = run(provision(world, vm, s))
        assert status["phase"] == "Provisioned", (k, status.get("message"))
        assert status["guest"]["hostname"] == "WEB-02", k
        assert status["bootstrap"]["state"] == "Applied", k
        assert world.host.disk_fingerprint(WIN) == before, k
        assert mounted and all(p.lower() == _disk(vm).lower() for p in mounted), (k, mounted)
        assert len(world.tagged(vm.uid)) == 1


def test_quick_is_refused_before_anything_is_mounted() -> None:
    world = _world()
    vm = ref("win-quick")
    status = _settle(world, vm, _spec("Quick", vm, {"unattend.xml": answer("WEB-03")}))
    assert status["conditions"] and any(c.get("reason") == unattend.QUICK_REFUSED for c in status["conditions"])
    assert not any(name.endswith("Mount-VHD") for name, _ in world.host.call_log())
    vms = world.tagged(vm.uid)
    assert len(vms) == 1 and vms[0].properties["State"] == "Off"


def test_a_secret_without_unattend_xml_waits_and_says_why_without_content() -> None:
    world = _world()
    vm = ref("win-nokey")
    status = _settle(world, vm, _spec("Differencing", vm, {"user-data": PASSWORD.encode()}))
    assert "no key 'unattend.xml'" in status["message"] and PASSWORD not in json.dumps(status)
    assert any(c.get("reason") == bootstrap.SECRET_UNAVAILABLE for c in status["conditions"])


def test_a_base_without_a_windows_volume_stalls_and_is_left_unmounted() -> None:
    world = _world()
    vm = ref("win-linux")
    s = _spec("Differencing", vm, {"unattend.xml": answer("WEB-04")}, base=SHARE + "\\BASE.VHDX")
    status = _settle(world, vm, s)
    assert status["bootstrap"]["state"] == "NoWindowsVolume"
    assert any(c.get("reason") == unattend.NO_WINDOWS_VOLUME for c in status["conditions"])
    assert world.host.execute([cmdlets.get_vhd(_disk(vm))])[0].properties["Attached"] is False


def test_delete_after_a_crash_while_the_vms_disk_is_mounted_dismounts_and_removes_it() -> None:
    world = _world()
    vm = ref("win-del")
    s = _spec("Differencing", vm, {"unattend.xml": answer("WEB-05")})
    stop = [False]

    def crash_after_mount(name: str, _params: dict[str, object], when: str) -> None:
        if when == "after" and name.endswith("Get-Partition") and not stop[0]:
            stop[0] = True
            raise RuntimeError("operator died")

    world.host.on_command(crash_after_mount)
    status: dict[str, Any] = {}
    for _ in range(20):
        try:
            outcome = run(reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
        except RuntimeError:
            break
        status = merged(status, outcome)
        run(world.wait(outcome.requeue_after or 0.1))
    assert world.host.execute([cmdlets.get_vhd(_disk(vm))])[0].properties["Attached"] is True
    run(delete(world, vm, s, status))
    assert _disk(vm).lower() not in world.files()
    assert not world.tagged(vm.uid)
