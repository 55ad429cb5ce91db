"""Engine tests against the simulated host (in process): every strategy end to end, a crash after
every host command (the step's status is dropped and the step re-run from the previous status),
delete after every command, guest data surviving Quick's re-parent and merge, the base untouched."""

from __future__ import annotations

import asyncio
import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from hyperv_operator.api import UID_TAG_PREFIX, HyperVHostSpec, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.provisioning.base_facts import BaseFacts
from hyperv_operator.provisioning.engine import CopySlots, StepOutcome, VmRef, finalize, reconcile
from hyperv_operator.provisioning.ledger import MemoryLedgerStore
from hyperv_operator.provisioning.observation import VhdInfo
from hyperv_operator.simulator import host as host_module
from hyperv_operator.simulator import inprocess

SHARE = "\\\\FS\\VMSHARE"
BASE = SHARE + "\\BASE.VHDX"
VM_ROOT = "C:\\VMs"
BASE_SIZE = 64 * 1024 * 1024
HOST = HyperVHostSpec(address="hv1", default_vm_path=VM_ROOT, max_concurrent_copies=2)
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


class World:
    """A simulated host, a client, copy slots and a fake operator clock."""

    def __init__(self) -> None:
        self.t = 0.0
        self.host = host_module.SimulatedHost(clock=lambda: self.t, copy_bytes_per_second=75e6,
                                              merge_bytes_per_second=300e6)
        self.host.add_folder(SHARE)
        self.host.add_folder(VM_ROOT)
        self.host.add_base_disk(BASE, BASE_SIZE, acl_read_only=True)
        self.client = inprocess.InProcessClient(self.host)
        self.slots = CopySlots()
        self.now = EPOCH
        self.actions = 0

    async def wait(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)
        self.t += seconds  # the simulated host's clock: no real waiting

    def tagged(self, uid: str) -> list[Any]:
        return [o for o in self.host.execute([cmdlets.get_all_vms()])
                if UID_TAG_PREFIX + uid in str(o.properties.get("Notes") or "")]

    def files(self) -> set[str]:
        return {str(f).lower() for f in self.host.files()}


def ref(name: str) -> VmRef:
    digest = hashlib.sha256(name.encode()).hexdigest()
    return VmRef("default", name, f"{digest[:8]}-{digest[8:12]}-4000-8000-{digest[12:24]}", 1)


def spec(strategy: str, **extra: Any) -> VirtualMachineSpec:
    return VirtualMachineSpec.from_dict({"hostRef": {"name": "hv1"}, "baseVhd": BASE, "strategy": strategy,
                                         "memory": "512Mi", "cpus": 2, **extra})


def merged(status: dict[str, Any], outcome: StepOutcome) -> dict[str, Any]:
    return {k: v for k, v in outcome.status.items() if v is not None}


class Crash(Exception):
    """The operator died right after a host command (its effects stay; this run's status is lost)."""


def mutating(name: str) -> bool:
    return not name.rsplit("\\", 1)[-1].lower().startswith(("get-", "test-"))


def crash_after(world: World, k: int) -> list[int]:
    """Kill the run right after the k-th state-changing host command, wherever it sits in a batch."""
    seen = [0]

    def hook(name: str, _params: dict[str, object], when: str) -> None:
        if when == "after" and mutating(name) and seen[0] < k:
            seen[0] += 1
            if seen[0] == k:
                raise Crash(name)

    world.host.on_command(hook)
    return seen


def mutations(world: World) -> int:
    return sum(1 for name, _ in world.host.call_log() if mutating(name))


async def provision(world: World, vm: VmRef, s: VirtualMachineSpec, status: dict[str, Any] | None = None, *,
                    crash_at: int | None = None, stop_after_actions: int | None = None,
                    max_steps: int = 400, bases: BaseFacts | None = None) -> dict[str, Any]:
    """Call reconcile until converged. `crash_at`: the operator dies right after the n-th state-changing
    host command of this provisioning (any position in a pipeline); the run's status is lost and the
    next run starts from the status written before. `stop_after_actions`: return once at least that
    many state-changing commands ran (the status of the run that did them kept)."""
    status = dict(status or {})
    start = mutations(world)
    if crash_at is not None:
        crash_after(world, crash_at)
    for _ in range(max_steps):
        try:
            outcome = await reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now, bases=bases)
        except Crash:
            world.slots = CopySlots()  # a new operator process: in-memory slots are gone too
            await world.wait(1.0)
            continue
        status = merged(status, outcome)
        if stop_after_actions is not None and mutations(world) - start >= stop_after_actions:
            return status
        if outcome.requeue_after is None:
            return status
        await world.wait(max(outcome.requeue_after, 0.05))
    raise AssertionError(f"did not converge: {status.get('phase')} {status.get('message')}")


async def delete(world: World, vm: VmRef, s: VirtualMachineSpec, status: dict[str, Any]) -> dict[str, Any]:
    for _ in range(200):
        outcome = await finalize(world.client, vm, s, status, HOST, "hv1", world.slots, world.now)
        status = merged(status, outcome)
        if outcome.finished:
            return status
        await world.wait(max(outcome.requeue_after or 1.0, 0.05))
    raise AssertionError(f"delete did not finish: {status.get('message')}")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def assert_final(world: World, vm: VmRef, status: dict[str, Any], strategy: str, base_print: Any) -> None:
    assert status["phase"] == "Provisioned", status.get("message")
    vms = world.tagged(vm.uid)
    assert len(vms) == 1
    assert str(vms[0].properties["Id"]) == status["vmId"]
    assert vms[0].properties["State"] == "Running"
    drives = [str(o.properties["Path"]) for o in world.host.execute([cmdlets.get_vm_hard_disk_drives(status["vmId"])])]
    assert [d.lower() for d in drives] == [status["disk"]["path"].lower()]
    leftovers = [f for f in world.files() if f.endswith((".avhdx", ".partial", ".copy.json"))]
    assert leftovers == []
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Ready"]["status"] == "True"
    assert conditions["Independent"]["status"] == ("False" if strategy == "Differencing" else "True")
    assert world.host.disk_fingerprint(BASE) == base_print


@pytest.mark.parametrize("strategy", ["Differencing", "Copy", "Quick"])
def test_strategy_end_to_end(strategy: str) -> None:
    world = World()
    vm = ref(f"e2e-{strategy.lower()}")
    base_print = world.host.disk_fingerprint(BASE)
    status = run(provision(world, vm, spec(strategy)))
    assert_final(world, vm, status, strategy, base_print)
    if strategy != "Differencing":
        assert status["copy"]["percent"] == 100
        assert status["copy"]["bytesCopied"] == status["copy"]["bytesTotal"]
    files_before = world.files()
    deleted = run(delete(world, vm, spec(strategy), status))
    assert deleted["phase"] == "Deleting"
    assert world.tagged(vm.uid) == []
    assert world.files() <= files_before
    assert BASE.lower() in world.files()
    assert world.host.disk_fingerprint(BASE) == base_print


def _count_actions(strategy: str) -> int:
    """State-changing host commands of one provisioning without crashes."""
    world = World()
    run(provision(world, ref(f"count-{strategy}"), spec(strategy)))
    return mutations(world)


@pytest.mark.parametrize("strategy", ["Differencing", "Copy", "Quick"])
def test_crash_after_every_command_of_every_batch_converges_to_one_vm(strategy: str) -> None:
    total = _count_actions(strategy)
    assert total >= 3
    for k in range(1, total + 1):
        world = World()
        vm = ref(f"crash-{strategy.lower()}-{k}")
        base_print = world.host.disk_fingerprint(BASE)
        status = run(provision(world, vm, spec(strategy), crash_at=k))
        assert_final(world, vm, status, strategy, base_print)


async def until_crash(world: World, vm: VmRef, s: VirtualMachineSpec) -> dict[str, Any]:
    """Provision until the armed crash; return the status written before it."""
    current: dict[str, Any] = {}
    for _ in range(400):
        try:
            outcome = await reconcile(world.client, vm, s, current, HOST, "hv1", world.slots, world.now)
        except Crash:
            return current
        current = merged(current, outcome)
        if outcome.requeue_after is None:
            return current
        await world.wait(max(outcome.requeue_after, 0.05))
    raise AssertionError("no crash")


@pytest.mark.parametrize("strategy", ["Differencing", "Copy", "Quick"])
def test_delete_after_a_crash_after_every_command_leaves_the_host_clean(strategy: str) -> None:
    total = _count_actions(strategy)
    for k in range(1, total + 1):
        world = World()
        vm = ref(f"del-{strategy.lower()}-{k}")
        files_before = world.files()
        base_print = world.host.disk_fingerprint(BASE)
        crash_after(world, k)

        status = run(until_crash(world, vm, spec(strategy)))
        world.slots = CopySlots()
        run(delete(world, vm, spec(strategy), status))
        assert world.tagged(vm.uid) == [], f"after {k} commands"
        assert world.files() == files_before, f"after {k} commands: {sorted(world.files() ^ files_before)}"
        assert world.host.disk_fingerprint(BASE) == base_print


@pytest.mark.parametrize("strategy", ["Differencing", "Copy", "Quick"])
def test_delete_after_every_step_leaves_the_host_clean(strategy: str) -> None:
    total = _count_actions(strategy)
    for k in range(1, total + 1):
        world = World()
        vm = ref(f"delstep-{strategy.lower()}-{k}")
        files_before = world.files()
        base_print = world.host.disk_fingerprint(BASE)
        status = run(provision(world, vm, spec(strategy), stop_after_actions=k))
        run(delete(world, vm, spec(strategy), status))
        assert world.tagged(vm.uid) == [], f"after {k} steps"
        assert world.files() == files_before, f"after {k} steps: {sorted(world.files() ^ files_before)}"
        assert world.host.disk_fingerprint(BASE) == base_print


def test_quick_guest_data_survives_reparent_and_merge() -> None:
    world = World()
    vm = ref("quick-guest")
    s = spec("Quick")

    async def go() -> dict[str, Any]:
        status: dict[str, Any] = {}
        while status.get("phase") not in ("CopyingBase", "Provisioned"):
            status = await provision(world, vm, s, status, stop_after_actions=1)
        world.host.guest_write(status["vmId"], 7, b"written while the base was being copied")
        return await provision(world, vm, s, status)

    base_print = world.host.disk_fingerprint(BASE)
    final = run(go())
    assert_final(world, vm, final, "Quick", base_print)
    assert world.host.guest_view(final["vmId"])[7] == b"written while the base was being copied"
    assert final["timings"]["secondsToRunning"] <= final["timings"]["secondsToIndependent"]


def test_copy_slots_queue_and_drain() -> None:
    world = World()
    host = HyperVHostSpec(address="hv1", default_vm_path=VM_ROOT, max_concurrent_copies=1)
    vms = [ref(f"queue-{i}") for i in range(3)]
    s = spec("Copy")

    async def go() -> list[dict[str, Any]]:
        statuses: list[dict[str, Any]] = [{} for _ in vms]
        seen_queued = False
        for _ in range(400):
            done = True
            for i, vm in enumerate(vms):
                outcome = await reconcile(world.client, vm, s, statuses[i], host, "hv1", world.slots, world.now)
                statuses[i] = merged(statuses[i], outcome)
                if (statuses[i].get("copy") or {}).get("queued"):
                    seen_queued = True
                    assert "queued: 1 copies already running on host hv1 (maxConcurrentCopies=1)" in (
                        statuses[i]["message"])
                assert len(world.slots.holders("hv1")) <= 1
                done = done and outcome.requeue_after is None
            if done:
                break
            await world.wait(0.5)
        assert seen_queued
        return statuses

    statuses = run(go())
    assert [st["phase"] for st in statuses] == ["Provisioned"] * 3


def test_missing_base_creates_nothing() -> None:
    world = World()
    files_before = world.files()
    vm = ref("nobase")
    s = VirtualMachineSpec.from_dict({"hostRef": {"name": "hv1"}, "baseVhd": SHARE + "\\MISSING.VHDX",
                                      "strategy": "Quick"})
    status = run(provision(world, vm, s))
    assert status["phase"] == "Failed"
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "BaseDiskNotFound" and "MISSING.VHDX" in stalled["message"]
    assert world.files() == files_before and world.tagged(vm.uid) == []


def test_power_off_on_and_out_of_band_drift() -> None:
    world = World()
    vm = ref("power")
    status = run(provision(world, vm, spec("Differencing")))
    off = run(provision(world, VmRef(vm.namespace, vm.name, vm.uid, 2), spec("Differencing", powerState="Off"),
                        status))
    assert off["powerState"] == "Off"
    ready = next(c for c in off["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("True", "PoweredOff")
    on = run(provision(world, VmRef(vm.namespace, vm.name, vm.uid, 3), spec("Differencing"), off))
    assert on["powerState"] == "Running"
    # stopped out of band -> started again with a Warning event
    world.host.execute([cmdlets.stop_vm(on["vmId"], turn_off=True)])
    v3 = VmRef(vm.namespace, vm.name, vm.uid, 3)
    outcome = run(reconcile(world.client, v3, spec("Differencing"), on, HOST, "hv1", world.slots, world.now))
    assert any(e.reason == "VMStoppedOutOfBand" for e in outcome.events)
    # deleted out of band -> Failed, never re-created
    world.host.execute([cmdlets.stop_vm(on["vmId"], turn_off=True), cmdlets.remove_vm(on["vmId"])])
    gone = run(provision(world, v3, spec("Differencing"), merged(on, outcome)))
    assert gone["phase"] == "Failed"
    assert next(c for c in gone["conditions"] if c["type"] == "Stalled")["reason"] == "VMDeletedOutOfBand"
    assert world.tagged(vm.uid) == []


def test_concurrent_reconciles_never_exceed_the_copy_limit() -> None:
    """Two VMs observed at the same moment must not both take the host's last copy slot."""
    world = World()
    host = HyperVHostSpec(address="hv1", default_vm_path=VM_ROOT, max_concurrent_copies=1)
    vms = [ref("race-a"), ref("race-b")]
    statuses: list[dict[str, Any]] = [{}, {}]

    async def steps() -> None:
        for _ in range(4):
            outcomes = await asyncio.gather(*(
                reconcile(world.client, vm, spec("Copy"), st, host, "hv1", world.slots, world.now)
                for vm, st in zip(vms, statuses, strict=True)
            ))
            for i, outcome in enumerate(outcomes):
                statuses[i] = merged(statuses[i], outcome)

    run(steps())
    copies = [c for c in world.host.call_log() if "StartBackgroundCopy" in str(c[0])]
    assert len(copies) == 1
    assert sorted(bool((st.get("copy") or {}).get("queued")) for st in statuses) == [False, True]


@pytest.mark.parametrize("strategy", ["Differencing", "Copy", "Quick"])
def test_a_base_another_host_holds_open_still_provisions(strategy: str) -> None:
    """Shared storage: Get-VHD of the base fails "in use" on this host (another host runs a VM on it);
    the base is read as a file instead and every strategy still provisions."""
    world = World()
    world.host.hold_elsewhere(BASE)
    vm = ref(f"shared-{strategy.lower()}")
    base_print = world.host.disk_fingerprint(BASE)
    status = run(provision(world, vm, spec(strategy)))
    assert_final(world, vm, status, strategy, base_print)


def test_graceful_stop_without_shutdown_service_escalates_to_turn_off() -> None:
    world = World()
    vm = ref("noshutdown")
    status = run(provision(world, vm, spec("Differencing")))
    world.host.set_guest(status["vmId"], shutdown_service=False)
    calls_before = len(world.host.call_log())
    off = run(provision(world, VmRef(vm.namespace, vm.name, vm.uid, 2), spec("Differencing", powerState="Off"),
                        status))
    assert off["powerState"] == "Off"
    stops = [dict(p) for n, p in world.host.call_log()[calls_before:] if n.endswith("Stop-VM")]
    assert "AsJob" in stops[0] and "TurnOff" in stops[-1]


def test_quick_restores_the_vms_checkpoint_type_after_the_merge() -> None:
    world = World()
    status = run(provision(world, ref("cktype"), spec("Quick")))
    vm = next(v for v in world.host.vms() if v["Id"] == status["vmId"])
    assert vm["CheckpointType"] == "Production" and not status.get("checkpointTypeBefore")


def test_quick_with_a_read_only_base_folder_stalls_with_the_reason_and_leaves_it_untouched() -> None:
    """Checkpoint-VM writes Quick's .avhdx beside the base: a base folder the host may not write
    stalls with BaseFolderNotWritable (not a bare host error), and nothing is written there."""
    world = World()
    world.host.protect_folder(SHARE)
    base_print = world.host.disk_fingerprint(BASE)
    status = run(provision(world, ref("rofolder"), spec("Quick")))
    assert status["phase"] == "Failed"
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "BaseFolderNotWritable" and SHARE in stalled["message"]
    assert not any(f.endswith(".avhdx") for f in world.files())
    assert world.host.disk_fingerprint(BASE) == base_print
    copy = run(provision(world, ref("rofolder-copy"), spec("Copy")))  # Copy never writes beside the base
    assert copy["phase"] == "Provisioned"


class PipelineCounter:
    """Counts pipelines as the simulated host receives them (one `execute` per WinRM pipeline)."""

    def __init__(self, world: World) -> None:
        self.count = 0
        original = world.host.execute

        def execute(statements: Any) -> Any:
            self.count += 1
            return original(statements)

        world.host.execute = execute  # type: ignore[method-assign]


def _provision_counting(strategy: str, base_size: int) -> tuple[dict[str, Any], int, int, int]:
    """(final status, pipelines, copy progress polls, runs): a poll is the first pipeline of a run that
    starts while the copy is running."""
    world = World()
    if base_size != BASE_SIZE:
        world.host.add_base_disk(SHARE + "\\BIG.VHDX", base_size, acl_read_only=True)
    counter = PipelineCounter(world)
    vm = ref(f"pipes-{strategy.lower()}")
    # readiness Running: the guest's boot is host time (like a copy), not operator round trips.
    s = (spec(strategy, baseVhd=SHARE + "\\BIG.VHDX", readiness="Running") if base_size != BASE_SIZE
         else spec(strategy, readiness="Running"))

    async def go() -> tuple[dict[str, Any], int, int]:
        status: dict[str, Any] = {}
        polls = 0
        for runs in range(1, 101):
            copy = status.get("copy") or {}
            if status.get("phase") in ("Copying", "CopyingBase") and copy.get("startedAt") and not copy.get(
                    "finishedAt"):
                polls += 1
            outcome = await reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now)
            status = merged(status, outcome)
            if outcome.requeue_after is None:
                return status, polls, runs
            await world.wait(outcome.requeue_after)
        raise AssertionError("did not converge")

    status, polls, runs = run(go())
    return status, counter.count, polls, runs


# Quick: Checkpoint-VM and Set-VHD (re-parent) are each sent without what depends on them (Start-VM;
# Remove-VMSnapshot, the merge: see effects.SAFETY_CRITICAL); the checkpoint rides in New-VM's pipe.
@pytest.mark.parametrize(("strategy", "limit"), [("Differencing", 3), ("Copy", 4), ("Quick", 6)])
@pytest.mark.parametrize("base_size", [BASE_SIZE, 40 * BASE_SIZE])
def test_pipelines_per_vm_apart_from_copy_polls(strategy: str, limit: int, base_size: int) -> None:
    """Issue 9's round-trip budget: one observation by Id, consecutive phases in one run, batched actions."""
    status, pipelines, polls, runs = _provision_counting(strategy, base_size)
    assert status["phase"] == "Provisioned", status.get("message")
    assert pipelines - polls <= limit, (pipelines, polls)
    if strategy == "Differencing":
        assert (runs, pipelines) == (1, 2)  # observe; New-VHD + New-VM | Set-VM | Start-VM
    else:
        assert polls <= 6, f"{polls} polls for one copy of {base_size} bytes (the ETA should bound them)"


def test_a_merge_under_way_is_watched_in_one_round_trip() -> None:
    """While the checkpoint merges, the VM's drive is still the .avhdx the status records: its chain is
    not read again (the merge plan does not need it), so each look at the merge is one pipeline."""
    world = World()
    vm, s = ref("merge-watch"), spec("Quick", readiness="Running")

    async def until_merging() -> dict[str, Any]:
        status: dict[str, Any] = {}
        for _ in range(50):
            status = merged(status, await reconcile(world.client, vm, s, status, HOST, "hv1", world.slots,
                                                    world.now))
            if status.get("phase") == "Merging":
                return status
            await world.wait(5.0)
        raise AssertionError(status.get("message"))

    status = run(until_merging())
    [host_vm] = world.tagged(vm.uid)
    assert "Merging disks" in str(host_vm.properties["Status"])  # the simulated clock has not moved
    counter = PipelineCounter(world)
    outcome = run(reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
    assert outcome.status["phase"] == "Merging" and outcome.requeue_after is not None
    assert counter.count == 1


def test_a_copy_that_started_behind_a_failed_start_vm_keeps_its_slot() -> None:
    """Windows runs the copy's start after a failed Start-VM in the same pipeline. The batch's error is
    not the copy's: the operator looks again, and a copy running on the host always holds its slot."""
    world = World()
    vm = ref("quick-start-denied")
    world.host.fail_next("Start-VM", "AccessDenied")
    outcome = run(reconcile(world.client, vm, spec("Quick", readiness="Running"), {}, HOST, "hv1", world.slots,
                            world.now))
    running = [j for j in world.host.copy_jobs() if j["State"] == "Running"]
    assert running, world.host.copy_jobs()  # the copy started behind the failed Start-VM
    assert vm.uid in world.slots.holders("hv1")
    assert outcome.status["phase"] != "Failed", outcome.status.get("message")  # a retry of Start-VM alone won
    [host_vm] = world.tagged(vm.uid)
    assert host_vm.properties["State"] == "Running"


def test_a_re_parent_that_ran_behind_a_failed_step_is_seen_not_lost() -> None:
    """Remove-Item (the copy's status file) and Set-VHD share a pipeline; Windows runs Set-VHD after a
    failed Remove-Item. The operator looks again instead of settling on the batch's error, and goes on
    from what the host shows."""
    world = World()
    vm, s = ref("quick-reparent-behind"), spec("Quick", readiness="Running")
    base_print = world.host.disk_fingerprint(BASE)

    async def go() -> dict[str, Any]:
        status: dict[str, Any] = {}
        for _ in range(60):
            if status.get("phase") == "CopyingBase" and (status.get("copy") or {}).get("startedAt"):
                done = [j for j in world.host.copy_jobs() if j["State"] != "Running"]
                if done and not world.host.pending_faults():
                    world.host.fail_next("Remove-Item", "Transient")
            status = merged(status, await reconcile(world.client, vm, s, status, HOST, "hv1", world.slots,
                                                    world.now))
            if status.get("phase") in ("Provisioned", "Failed"):
                return status
            await world.wait(5.0)
        raise AssertionError(status.get("message"))

    status = run(go())
    assert status["phase"] == "Provisioned", status.get("message")
    assert_final(world, vm, status, "Quick", base_print)


def test_a_failed_read_of_the_drives_behind_new_vm_does_not_fail_a_quick_vm() -> None:
    """The read behind New-VM | Set-VM | Checkpoint-VM may fail on its own (a JEA role registered before it
    refuses Get-VMHardDiskDrive -VMName): the VM and its checkpoint exist, so the operator looks again,
    adopts them and goes on; the checkpoint is not taken twice."""
    world = World()
    vm = ref("quick-drives-read-fails")
    base_print = world.host.disk_fingerprint(BASE)
    world.host.fail_next("Get-VMHardDiskDrive", "AccessDenied")
    status = run(provision(world, vm, spec("Quick", readiness="Running")))
    assert status["phase"] == "Provisioned", status.get("message")
    assert_final(world, vm, status, "Quick", base_print)
    names = [n.rsplit("\\", 1)[-1] for n, _ in world.host.call_log()]
    assert names.count("Checkpoint-VM") == 1 and names.count("New-VM") == 1


def test_a_failed_remove_vm_leaves_the_vms_files_in_place() -> None:
    """Nothing rides behind Remove-VM: on Windows the removal of the VM's files would run after a failed
    Remove-VM, under a VM that still uses them. The deletion tries again and then removes everything."""
    world = World()
    vm, s = ref("delete-remove-vm-fails"), spec("Differencing")
    status = run(provision(world, vm, s))
    disk = status["disk"]["path"].lower()
    world.host.fail_next("Remove-VM", "Transient")
    outcome = run(finalize(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
    assert not outcome.finished
    assert len(world.tagged(vm.uid)) == 1 and disk in world.files()
    run(delete(world, vm, s, merged(status, outcome)))
    assert world.tagged(vm.uid) == [] and disk not in world.files()


def test_nothing_that_depends_on_a_checkpoint_or_a_re_parent_shares_their_pipeline() -> None:
    """In a batch of statements Windows stops only at an ActionPreferenceStopException; after a
    statement-terminating error the next statement runs (PowerShell.cs BatchInvocationWorkItem). So
    Start-VM never rides behind Checkpoint-VM (it would run the VM on the base), and Remove-VMSnapshot
    (the merge) never behind Set-VHD (it would merge the checkpoint into the base): the host answers
    first, and the next step is planned on its answer."""
    world = World()
    pipelines: list[list[str]] = []
    original = world.host.execute

    def execute(statements: Any) -> Any:
        pipelines.append([c.name.rsplit("\\", 1)[-1] for st in statements for c in st.commands])
        return original(statements)

    world.host.execute = execute  # type: ignore[method-assign]
    status = run(provision(world, ref("quick-order"), spec("Quick", readiness="Running")))
    assert status["phase"] == "Provisioned", status.get("message")
    for names in pipelines:
        assert not ("Checkpoint-VM" in names and "Start-VM" in names), names
        assert not ("Set-VHD" in names and "Remove-VMSnapshot" in names), names
    assert any("Checkpoint-VM" in names for names in pipelines) and any("Set-VHD" in names for names in pipelines)

    # A checkpoint that fails (in New-VM's statement, then alone once the operator looked again): Start-VM
    # never reaches the host, the VM stays off on the base.
    failing = World()
    failing.host.fail_next("Checkpoint-VM", "Transient", count=2)
    after = run(reconcile(failing.client, ref("quick-order-fails"), spec("Quick", readiness="Running"), {}, HOST,
                          "hv1", failing.slots, failing.now)).status
    assert after.get("powerState") != "Running"
    assert [c for c in failing.host.call_log() if c[0].rsplit("\\", 1)[-1] == "Start-VM"] == []
    [host_vm] = failing.host.execute([cmdlets.get_all_vms()])
    assert host_vm.properties["State"] == "Off"


def test_observation_reads_the_vm_by_id_not_every_vm() -> None:
    """With many VMs on the host, a provisioned VM's observation asks for its own VM only."""
    world = World()
    vms = [ref(f"many-{i}") for i in range(5)]
    statuses = [run(provision(world, vm, spec("Differencing"))) for vm in vms]
    before = len(world.host.call_log())
    outcome = run(reconcile(world.client, vms[0], spec("Differencing"), statuses[0], HOST, "hv1", world.slots,
                            world.now))
    calls = world.host.call_log()[before:]
    assert outcome.requeue_after is None
    get_vms = [params for name, params in calls if name.endswith("Get-VM")]
    assert get_vms and all(params.get("Id") == statuses[0]["vmId"] for params in get_vms)


def test_vm_deleted_out_of_band_is_seen_without_a_vm_id_lookup_failing_the_step() -> None:
    world = World()
    vm = ref("oob")
    status = run(provision(world, vm, spec("Differencing")))
    world.host.delete_vm_out_of_band(status["vmId"])
    outcome = run(reconcile(world.client, vm, spec("Differencing"), status, HOST, "hv1", world.slots, world.now))
    assert outcome.status["phase"] == "Failed"
    stalled = next(c for c in outcome.status["conditions"] if c["type"] == "Stalled")
    assert stalled["reason"] == "VMDeletedOutOfBand"


def test_a_folder_with_a_foreign_file_ends_the_deletion_in_one_run_and_keeps_the_file() -> None:
    """Remove-VM and the files go in one pipeline; the folder removal is sent on its own, so its
    "not empty" is told apart from a failure of the others: the finalizer goes, the foreign file stays."""
    world = World()
    vm = ref("foreign")
    status = run(provision(world, vm, spec("Differencing")))
    foreign = status["vmDir"] + "\\notes-from-an-admin.vhdx"
    world.host.add_base_disk(foreign, 1024 * 1024, acl_read_only=False)
    outcome = run(finalize(world.client, vm, spec("Differencing"), status, HOST, "hv1", world.slots, world.now))
    assert outcome.finished
    assert [e.reason for e in outcome.events if e.type == "Warning"] == ["FolderNotRemoved"]
    assert world.tagged(vm.uid) == []
    assert foreign.lower() in world.files()
    assert status["disk"]["path"].lower() not in world.files()


@pytest.mark.parametrize("strategy", ["Differencing", "Copy", "Quick"])
def test_no_step_lists_every_vm_on_the_host_without_a_crash(strategy: str) -> None:
    """Listing all VMs (Get-VM without -Id) grows with the host; it is for finding a VM whose Id a crash
    lost, never part of a normal provisioning or deletion."""
    world = World()
    vm = ref(f"nolist-{strategy.lower()}")
    status = run(provision(world, vm, spec(strategy)))
    run(delete(world, vm, spec(strategy), status))
    listings = [params for name, params in world.host.call_log() if name.endswith("Get-VM") and "Id" not in params]
    assert listings == []


def test_a_differencing_disk_that_meets_its_base_held_by_another_new_vhd_is_retried() -> None:
    """New-VHD -Differencing fails now and then while another New-VHD has the same base open
    (microsoft/openvmm#1600, a fleet made at once): the VM retries and is Provisioned, not Failed."""
    world = World()
    world.host.fail_next("New-VHD", "SharingViolation")
    status = run(provision(world, ref("diff-sharing"), spec("Differencing")))
    assert status["phase"] == "Provisioned", status.get("message")
    assert [c for c in world.host.call_log() if c[0].rsplit("\\", 1)[-1] == "New-VHD"].__len__() == 2


def test_a_merge_on_a_german_host_holds_the_deletion_back() -> None:
    """Get-VM's Status says "Merging disks" only on an English host; OperationalStatus carries
    MergingDisks on every host. A VM deleted mid-merge on a German host was removed mid-merge."""
    world = World()
    world.host.set_ui_culture("de-DE")
    vm, s = ref("merge-de"), spec("Quick", readiness="Running")

    async def to_merging() -> dict[str, Any]:
        status: dict[str, Any] = {}
        for _ in range(200):
            outcome = await reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now)
            status = merged(status, outcome)
            if status.get("phase") == "Merging":
                return status
            await world.wait(max(outcome.requeue_after or 0.0, 0.05))
        raise AssertionError(f"never reached Merging: {status.get('phase')} {status.get('message')}")

    status = run(to_merging())
    [host_vm] = world.host.execute([cmdlets.get_all_vms()])
    assert "MergingDisks" in host_vm.properties["OperationalStatus"]
    assert "erging" not in str(host_vm.properties["Status"])  # not the English words
    outcome = run(finalize(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
    assert "waiting for the merge" in str(outcome.status.get("message")), outcome.status.get("message")
    assert [c for c in world.host.call_log() if c[0].rsplit("\\", 1)[-1] == "Remove-VM"] == []


def test_a_base_is_read_once_for_the_vms_made_from_it_and_its_existence_every_time() -> None:
    world = World()
    other = SHARE + "\\OTHER.VHDX"
    world.host.add_base_disk(other, BASE_SIZE)
    bases = BaseFacts(ttl=600.0, clock=lambda: world.t)  # longer than the Quick VM's copy and merge below

    def base_reads(since: int) -> int:
        return sum(1 for name, params in world.host.call_log()[since:]
                   if name.endswith("Get-VHD") and str(params.get("Path")).lower() == other.lower())

    mark, read_at = len(world.host.call_log()), world.t
    first = run(provision(world, ref("first"), spec("Differencing", baseVhd=other), bases=bases))
    assert first["phase"] == "Provisioned" and base_reads(mark) == 1
    mark = len(world.host.call_log())
    second = run(provision(world, ref("second"), spec("Quick", baseVhd=other), bases=bases))
    assert second["phase"] == "Provisioned" and base_reads(mark) == 0  # its facts were known
    # Known, but not on the host: Test-Path still tells.
    missing = SHARE + "\\GONE.VHDX"
    bases.put("hv1", missing, VhdInfo(missing, "Dynamic", None, BASE_SIZE, BASE_SIZE, "VHDX"))
    gone = run(provision(world, ref("gone"), spec("Differencing", baseVhd=missing), bases=bases))
    stalled = next(c for c in gone["conditions"] if c["type"] == "Stalled")
    assert gone["phase"] == "Failed" and stalled["reason"] == "BaseDiskNotFound"
    assert world.tagged(ref("gone").uid) == [] and bases.get("hv1", missing) is None  # read the full way
    # Facts are kept from when they were read, not refreshed by the VMs that use them.
    assert world.t < read_at + bases.ttl - 10
    run(world.wait(read_at + bases.ttl - 10 - world.t))
    mark = len(world.host.call_log())
    run(provision(world, ref("third"), spec("Differencing", baseVhd=other), bases=bases))
    assert base_reads(mark) == 0
    # Facts older than the TTL are read again.
    run(world.wait(11))
    mark = len(world.host.call_log())
    fourth = run(provision(world, ref("fourth"), spec("Differencing", baseVhd=other), bases=bases))
    assert fourth["phase"] == "Provisioned" and base_reads(mark) == 1


class _TimedStore(MemoryLedgerStore):
    """The ledger's writes, on one time line with the host's pipelines (`log`)."""

    def __init__(self, log: list[str]) -> None:
        super().__init__()
        self.log = log

    async def save(self, host_key: str, ledger: Any, version: str) -> bool:
        self.log.append("ledger:" + ",".join(sorted(e.uid for e in ledger.holders)))
        return await super().save(host_key, ledger, version)

    async def load(self, host_key: str) -> Any:
        self.log.append("read-ledger")
        return await super().load(host_key)


class _TimedClient:
    """The host's pipelines (their cmdlets) as they start and end, on the same time line (`log`)."""

    def __init__(self, inner: Any, log: list[str]) -> None:
        self.inner, self.log = inner, log

    async def run(self, statements: Any) -> Any:
        names = "|".join(c.name.rsplit("\\", 1)[-1] for st in statements for c in st.commands)
        self.log.append("start:" + names)
        try:
            return await self.inner.run(statements)
        finally:
            self.log.append("end:" + names)


def test_quick_reads_and_takes_its_copy_slot_alongside_its_host_work_and_writes_the_ledger_no_more_often() -> None:
    world = World()
    log: list[str] = []
    world.slots = CopySlots(_TimedStore(log))
    world.client = _TimedClient(world.client, log)  # type: ignore[assignment]
    vm = ref("quick-ahead")
    status = run(provision(world, vm, spec("Quick")))
    assert status["phase"] == "Provisioned"
    writes = [e for e in log if e.startswith("ledger:")]
    assert writes == [f"ledger:{vm.uid}", "ledger:"]  # taken once, given back once
    new_vm = next(i for i, e in enumerate(log) if e.startswith("start:") and "Checkpoint-VM" in e)
    assert log[new_vm + 1] == f"ledger:{vm.uid}"  # while New-VM's pipeline ran, not after it
    assert log[new_vm + 2].startswith("end:") and "Checkpoint-VM" in log[new_vm + 2]
    copy = next(e for e in log if e.startswith("start:") and "powershell" in e.lower())
    assert "Start-VM" in copy
    # Each run reads the ledger while it observes the host, not before.
    first_look = log.index("start:Test-Path|Get-VHD")
    assert log[first_look + 1] == "read-ledger" and log[first_look + 2] == "end:Test-Path|Get-VHD"


def test_a_slot_taken_ahead_is_given_back_when_the_run_ends_on_new_vms_failure() -> None:
    world = World()
    vm = ref("quick-ahead-fails")
    world.host.fail_next("New-VM", "AccessDenied", count=5)
    outcome = run(reconcile(world.client, vm, spec("Quick"), {}, HOST, "hv1", world.slots, world.now))
    assert outcome.status["phase"] == "Failed" and "permission" in outcome.status["message"]
    assert world.tagged(vm.uid) == []
    assert vm.uid not in world.slots.holders("hv1")
