"""Engine + simulated host: the copy worker dies with a host reboot (restarted, then provisioned), and a
delete after the reboot never stops the process that now holds the worker's old PID."""

from __future__ import annotations

from hyperv_operator.hyperv import cmdlets
from hyperv_operator.simulator import host as host_module

from .test_engine_simulator import BASE, SHARE, VM_ROOT, World, delete, provision, ref, run, spec


class SlowCopyWorld(World):
    """64 MiB at 1 MB/s: the copy takes about a minute of simulated time."""

    def __init__(self) -> None:
        super().__init__()
        self.host = host_module.SimulatedHost(clock=lambda: self.t, copy_bytes_per_second=1e6)
        self.host.add_folder(SHARE)
        self.host.add_folder(VM_ROOT)
        self.host.add_base_disk(BASE, 64 * 1024 * 1024, acl_read_only=True)
        from hyperv_operator.simulator import inprocess

        self.client = inprocess.InProcessClient(self.host)


def _copies_started(world: World, name: str) -> int:
    return sum(1 for c in world.host.call_log() if c[0] == "StartBackgroundCopy" and name in str(c[1]))


def test_reboot_mid_copy_restarts_the_copy_and_provisions() -> None:
    world = SlowCopyWorld()
    vm = ref("reboot-copy")
    status = run(provision(world, vm, spec("Copy"), stop_after_actions=1))
    assert status["copy"]["processId"] and _copies_started(world, vm.name) == 1
    world.t += 20
    world.host.reboot()
    status = run(provision(world, vm, spec("Copy"), status))
    assert status["phase"] == "Provisioned", status.get("message")
    assert status["copy"]["restarts"] == 1 and "no longer running" in status["copy"]["lastRestartReason"]
    assert _copies_started(world, vm.name) == 2
    assert status["copy"]["percent"] == 100


def test_delete_after_reboot_never_stops_the_process_that_reused_the_pid() -> None:
    world = SlowCopyWorld()
    vm = ref("reboot-delete")
    status = run(provision(world, vm, spec("Copy"), stop_after_actions=1))
    pid = int(status["copy"]["processId"])
    world.t += 20
    world.host.reboot()
    # Another VM starts after the reboot and its worker process gets the old PID.
    other = SHARE + "\\other.vhdx"
    world.host.execute([cmdlets.new_differencing_vhd(other, BASE)])
    [created] = world.host.execute([cmdlets.new_vm("other", VM_ROOT, other, 512 * 1024 * 1024, 2, None)])
    other_id = str(created.properties["Id"])
    world.host.execute([cmdlets.start_vm(other_id)])
    assert any(p["ProcessId"] == pid and p["Name"] == "vmwp.exe" for p in world.host.processes())
    run(delete(world, vm, spec("Copy"), status))
    assert not [c for c in world.host.call_log() if c[0].endswith("Stop-Process")]
    [other_vm] = world.host.execute([cmdlets.get_vm_by_id(other_id)])
    assert other_vm.properties["State"] == "Running"
