"""Issue 14: the first-boot configuration disk, against the simulated host (in process).

The Secret's files reach the simulated guest through a FAT32 volume labelled cidata; the guest names
itself after meta-data's local-hostname (KVP shows it); the disk is gone from the VM and the host
after the first boot; a crash after any host command converges without attaching a half-built disk;
the content never shows in status, events or action descriptions."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any

import pytest
from tests.unit.provisioning.test_engine_simulator import (
    HOST,
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
from hyperv_operator.provisioning import bootstrap
from hyperv_operator.provisioning.engine import reconcile
from hyperv_operator.provisioning.layout import layout_for
from hyperv_operator.provisioning.model import VmRef

SECRET_TEXT = "#cloud-config\npassword: s3cr3t-Very-Private\n"


def _secret(**extra: str) -> dict[str, str]:
    data = {"user-data": SECRET_TEXT, **extra}
    return {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}


def _spec(strategy: str, vm: VmRef, data: dict[str, str] | None, **extra: Any) -> VirtualMachineSpec:
    s = spec(strategy, bootstrap={"secretRef": {"name": "web-init"}, **extra})
    assert s.bootstrap is not None
    return VirtualMachineSpec(**{**s.__dict__, "bootstrap": bootstrap.with_files(s.bootstrap, data, vm.name,
                                                                                   vm.uid)})


def _drives(world: World, vm_id: str) -> list[str]:
    return [str(o.properties["Path"]).lower() for o in world.host.execute([cmdlets.get_vm_hard_disk_drives(vm_id)])]


@pytest.mark.parametrize("strategy", ["Differencing", "Copy", "Quick"])
def test_the_guest_names_itself_from_meta_data_and_the_disk_goes_after_first_boot(strategy: str) -> None:
    world = World()
    vm = ref(f"boot-{strategy.lower()}")
    status = run(provision(world, vm, _spec(strategy, vm, _secret())))
    assert status["phase"] == "Provisioned"
    assert status["guest"]["hostname"] == vm.name  # KVP: the guest applied local-hostname
    assert status["bootstrap"]["state"] == "Removed" and status["bootstrap"]["completedAt"]
    layout = layout_for(vm.name, vm.uid, None, HOST.default_vm_path)
    config = bootstrap.disk_path(layout).lower()
    assert config not in _drives(world, status["vmId"])
    assert config not in world.files() and bootstrap.partial_path(layout).lower() not in world.files()
    assert SECRET_TEXT.split("\n")[1] not in json.dumps(status)
    # the simulated guest read exactly what the Secret held, plus the generated meta-data
    read = world.host.guest_first_boot_files(status["vmId"])
    assert read["user-data"] == SECRET_TEXT.encode()
    assert read["meta-data"] == f"instance-id: {vm.uid}\nlocal-hostname: {vm.name}\n".encode()


def test_meta_data_from_the_secret_wins_and_keep_disk_keeps_it_attached() -> None:
    world = World()
    vm = ref("boot-keep")
    data = _secret(**{"meta-data": "instance-id: i-1\nlocal-hostname: custom-name\n", "network-config": "version: 2\n"})
    status = run(provision(world, vm, _spec("Differencing", vm, data, keepDisk=True)))
    assert status["guest"]["hostname"] == "custom-name"
    assert status["bootstrap"]["state"] == "Kept"
    layout = layout_for(vm.name, vm.uid, None, HOST.default_vm_path)
    assert bootstrap.disk_path(layout).lower() in _drives(world, status["vmId"])
    assert set(world.host.guest_first_boot_files(status["vmId"])) == {"user-data", "meta-data", "network-config"}


def test_a_missing_secret_stalls_before_the_first_start_and_resumes_when_it_appears() -> None:
    world = World()
    vm = ref("boot-nosecret")
    s = _spec("Differencing", vm, None)
    status: dict[str, Any] = {}
    for _ in range(30):
        outcome = run(reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
        status = merged(status, outcome)
        stalled = next((c for c in status.get("conditions") or [] if c["type"] == "Stalled"), {})
        if stalled.get("status") == "True":
            break
        run(world.wait(outcome.requeue_after or 1.0))
    assert stalled["reason"] == bootstrap.SECRET_UNAVAILABLE and "web-init" in stalled["message"]
    assert world.tagged(vm.uid)[0].properties["State"] == "Off"  # never started without its configuration
    status = run(provision(world, vm, _spec("Differencing", vm, _secret()), status))
    assert status["guest"]["hostname"] == vm.name


def test_a_secret_without_user_data_is_refused_without_quoting_it() -> None:
    files, problem = bootstrap.files_from_secret(
        {"meta-data": base64.b64encode(b"local-hostname: private").decode()}, "web-init", "web", "uid")
    assert files is None and problem is not None and "user-data" in problem and "private" not in problem


def test_file_content_never_shows_in_a_statement_logs_events_or_status(caplog: pytest.LogCaptureFixture) -> None:
    statement = cmdlets.write_file("E:\\user-data", SECRET_TEXT.encode())
    assert "s3cr3t" not in str(statement) and f"<{len(SECRET_TEXT)} bytes>" in str(statement)
    world = World()
    vm = ref("boot-desc")
    s = _spec("Differencing", vm, _secret())
    assert "s3cr3t" not in repr(s)
    caplog.set_level(logging.DEBUG)
    status: dict[str, Any] = {}
    events: list[str] = []
    for _ in range(100):
        outcome = run(reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
        status = merged(status, outcome)
        events += [f"{e.reason} {e.message}" for e in outcome.events]
        if outcome.requeue_after is None:
            break
        run(world.wait(outcome.requeue_after))
    assert status["bootstrap"]["state"] == "Removed" and any("BootstrapCompleted" in e for e in events)
    assert any("Set-Content" in r.getMessage() for r in caplog.records)  # the writes were logged...
    assert not any("s3cr3t" in r.getMessage() for r in caplog.records)  # ...without their content
    assert not any("s3cr3t" in e for e in events) and "s3cr3t" not in json.dumps(status)


@pytest.mark.parametrize("strategy", ["Differencing", "Quick"])
def test_a_crash_after_every_command_never_attaches_a_half_built_disk(strategy: str) -> None:
    clean = World()
    vm = ref(f"boot-crash-{strategy.lower()}")
    s = _spec(strategy, vm, _secret())
    run(provision(clean, vm, s))
    total = mutations(clean)
    for k in range(1, total + 1):
        world = World()
        attached_partial: list[str] = []

        def watch(name: str, params: dict[str, object], when: str, sink: list[str] = attached_partial) -> None:
            if when == "before" and name.endswith("Add-VMHardDiskDrive") and ".partial." in str(params.get("Path")):
                sink.append(str(params.get("Path")))

        world.host.on_command(watch)
        crash_after(world, k)
        status = run(provision(world, vm, s))
        assert status["phase"] == "Provisioned", (k, status.get("message"))
        assert status["guest"]["hostname"] == vm.name, k
        assert attached_partial == [], k
        assert len(world.tagged(vm.uid)) == 1
        layout = layout_for(vm.name, vm.uid, None, HOST.default_vm_path)
        assert not any("cidata" in f for f in world.files()), (k, [f for f in world.files() if "cidata" in f])
        assert bootstrap.disk_path(layout).lower() not in _drives(world, status["vmId"])


@pytest.mark.parametrize("kind", ["Transient", "DiskFull"])
def test_a_failed_write_never_seals_the_disk(kind: str) -> None:
    """Windows runs a batch's next statement after a failed one: the rename that marks the disk complete
    (and lets it be attached) is never in the writes' pipeline. A write that fails for a moment leaves a
    partial disk, discarded and built again, and the guest reads every file; one that fails for good
    (disk full) fails the VM with no sealed disk on the host."""
    world = World()
    vm = ref(f"boot-write-{kind.lower()}")
    world.host.fail_next("Set-Content", kind)
    status = run(provision(world, vm, _spec("Differencing", vm, _secret())))
    layout = layout_for(vm.name, vm.uid, None, HOST.default_vm_path)
    if kind == "Transient":
        assert status["phase"] == "Provisioned", status.get("message")
        assert status["guest"]["hostname"] == vm.name
        assert world.host.guest_first_boot_files(status["vmId"])["user-data"] == SECRET_TEXT.encode()
        assert [n.rsplit("\\", 1)[-1] for n, _ in world.host.call_log()].count("Rename-Item") == 1
    else:
        assert status["phase"] == "Failed", status.get("message")
        assert bootstrap.disk_path(layout).lower() not in world.files()
        assert bootstrap.disk_path(layout).lower() not in _drives(world, status["vmId"])


def test_delete_removes_a_kept_configuration_disk() -> None:
    world = World()
    vm = ref("boot-del")
    s = _spec("Differencing", vm, _secret(), keepDisk=True)
    status = run(provision(world, vm, s))
    run(delete(world, vm, s, status))
    assert not any("cidata" in f for f in world.files())


def test_delete_after_a_crash_while_the_disk_is_mounted_on_the_host_dismounts_and_removes_it() -> None:
    world = World()
    vm = ref("boot-del-mounted")
    s = _spec("Differencing", vm, _secret())
    stop = [False]

    def crash_after_build(name: str, _params: dict[str, object], when: str) -> None:
        if when == "after" and name.endswith("Format-Volume") and not stop[0]:
            stop[0] = True
            raise RuntimeError("operator died")

    world.host.on_command(crash_after_build)
    status: dict[str, Any] = {}
    for _ in range(20):
        try:
            outcome = run(reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
        except RuntimeError:
            break
        status = merged(status, outcome)
        run(world.wait(outcome.requeue_after or 0.1))
    assert any(".partial." in f for f in world.files())
    run(delete(world, vm, s, status))
    assert not any("cidata" in f for f in world.files())
