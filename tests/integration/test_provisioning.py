"""Each strategy end to end: real API server, operator process, simulated host over WinRM/HTTPS."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from hyperv_operator import api
from hyperv_operator.envtest.controlplane import ControlPlane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import BASE_VHD, SimulatedHyperV, apply_objects, host_objects
from tests.integration import hostview
from tests.integration.conftest import DRIFT_INTERVAL, NAMESPACE
from tests.integration.kube import Kube, condition

STRATEGIES = ["Differencing", "Copy", "Quick"]


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def _assert_final_host_state(sim: SimulatedHyperV, obj: dict[str, Any], strategy: str) -> None:
    uid = obj["metadata"]["uid"]
    vms = hostview.vms_tagged(sim, uid)
    assert len(vms) == 1, f"expected exactly one VM tagged with {uid}, got {vms}"
    vm = vms[0]
    status = obj["status"]
    assert vm["Id"] == status["vmId"]
    assert vm["State"] == "Running"
    drive = hostview.drive_paths(sim, vm["Id"])
    assert len(drive) == 1
    disk = hostview.vhd(sim, drive[0])
    assert drive[0].lower() == status["disk"]["path"].lower()
    if strategy == "Differencing":
        assert disk["VhdType"] == "Differencing"
        assert disk["ParentPath"].lower() == BASE_VHD.lower()
    else:
        assert disk["VhdType"] == "Dynamic"
        assert not disk.get("ParentPath")
        assert drive[0].lower().endswith(".vhdx")
    leftovers = [p for p in hostview.file_paths(sim) if p.lower().endswith((".avhdx", ".partial", ".copy.json"))]
    assert leftovers == [], f"leftover temporary files: {leftovers}"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_strategy_reaches_provisioned_with_the_right_host_state(
    strategy: str, sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    name = _name(strategy.lower())
    base_before = sim.host.disk_fingerprint(BASE_VHD)
    kube.create_vm(NAMESPACE, name, strategy, cpus=2)
    kube.wait_phase(NAMESPACE, name, "Provisioned")
    # Ready follows the guest (spec.readiness Heartbeat by default): its heartbeat answers after its boot
    obj = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Ready") or {}).get("status") == "True", what="Ready")
    _assert_final_host_state(sim, obj, strategy)
    status = obj["status"]
    assert condition(obj, "Ready")["status"] == "True"  # type: ignore[index]
    assert condition(obj, "Reconciling")["status"] == "False"  # type: ignore[index]
    assert condition(obj, "Stalled")["status"] == "False"  # type: ignore[index]
    independent = condition(obj, "Independent")
    assert independent is not None
    assert independent["status"] == ("False" if strategy == "Differencing" else "True")
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["timings"]["runningAt"]
    if strategy != "Differencing":
        assert status["copy"]["percent"] == 100
        assert status["copy"]["bytesCopied"] == status["copy"]["bytesTotal"] == sim.base_size
        assert status["timings"]["independentAt"]
    # kubectl wait works on the real objects
    wait = control_plane.kubectl("wait", "-n", NAMESPACE, "--for=condition=Ready", f"hvvm/{name}", "--timeout=10s")
    assert "condition met" in wait.stdout
    if strategy != "Differencing":
        wait = control_plane.kubectl(
            "wait", "-n", NAMESPACE, "--for=condition=Independent", f"hvvm/{name}", "--timeout=10s"
        )
        assert "condition met" in wait.stdout
    wide = control_plane.kubectl("get", "hvvm", name, "-n", NAMESPACE, "-o", "wide").stdout
    assert status["vmId"] in wide and "Provisioned" in wide
    # One Event per run for its phases and milestones (reason: the run's last milestone).
    events = kube.events_for(NAMESPACE, name)
    milestones = {"Differencing": {"PhaseChanged"}, "Copy": {"CopyStarted", "CopyCompleted"},
                  "Quick": {"CopyStarted", "Independent"}}[strategy]
    assert milestones <= {e.reason for e in events}, [(e.reason, e.message) for e in events]
    assert any("-> Provisioned" in e.message for e in events), [e.message for e in events]
    assert sim.host.disk_fingerprint(BASE_VHD) == base_before


def test_quick_is_running_before_it_is_independent(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = _name("quickorder")
    kube.create_vm(NAMESPACE, name, "Quick")
    running = kube.wait_vm(
        NAMESPACE, name, lambda o: (condition(o, "Ready") or {}).get("status") == "True", what="Ready"
    )
    assert running["status"]["phase"] in {"Starting", "CopyingBase", "Reparenting", "Merging", "Provisioned"}
    if running["status"]["phase"] == "CopyingBase":
        assert (condition(running, "Independent") or {}).get("status") == "False"
    sim.host.guest_write(running["status"]["vmId"], 7, b"written while the base was being copied")
    final = kube.wait_phase(NAMESPACE, name, "Provisioned")
    timings = final["status"]["timings"]
    assert timings["secondsToRunning"] < timings["secondsToIndependent"]
    assert sim.host.guest_view(final["status"]["vmId"])[7] == b"written while the base was being copied"


def test_missing_base_stalls_with_a_readable_message_and_changes_nothing(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = _name("nobase")
    files_before = hostview.file_paths(sim)
    vms_before = len(sim.host.vms())
    calls_before = len(sim.host.call_log())
    kube.create_vm(NAMESPACE, name, "Copy", baseVhd="\\\\FS\\VMSHARE\\MISSING.VHDX")
    obj = kube.wait_phase(NAMESPACE, name, "Failed")
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["status"] == "True"
    assert stalled["reason"] == "BaseDiskNotFound"
    assert "MISSING.VHDX" in stalled["message"]
    assert hostview.file_paths(sim) == files_before
    assert len(sim.host.vms()) == vms_before
    mutating = [c for c in sim.host.call_log()[calls_before:] if hostview.is_mutating(c[0])]
    assert mutating == []


def test_power_state_off_and_on_without_reprovisioning(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = _name("power")
    kube.create_vm(NAMESPACE, name, "Differencing")
    obj = kube.wait_phase(NAMESPACE, name, "Provisioned")
    vm_id = obj["status"]["vmId"]
    kube.patch_vm(NAMESPACE, name, {"spec": {"powerState": "Off"}})
    off = kube.wait_vm(
        NAMESPACE,
        name,
        lambda o: (
            o["status"].get("powerState") == "Off" and (condition(o, "Ready") or {}).get("reason") == "PoweredOff"
        ),
        what="powered off",
    )
    assert hostview.vm(sim, vm_id)["State"] == "Off"
    assert off["status"]["vmId"] == vm_id
    kube.patch_vm(NAMESPACE, name, {"spec": {"powerState": "Running"}})
    kube.wait_vm(
        NAMESPACE,
        name,
        lambda o: o["status"].get("powerState") == "Running" and (condition(o, "Ready") or {}).get("status") == "True",
        what="running again",
    )
    assert hostview.vm(sim, vm_id)["State"] == "Running"
    assert len(hostview.vms_tagged(sim, obj["metadata"]["uid"])) == 1


def test_drift_stopped_vm_is_started_and_deleted_vm_stalls(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = _name("drift")
    kube.create_vm(NAMESPACE, name, "Copy")
    obj = kube.wait_phase(NAMESPACE, name, "Provisioned")
    vm_id = obj["status"]["vmId"]
    sim.host.stop_vm_out_of_band(vm_id)
    kube.wait_vm(
        NAMESPACE,
        name,
        lambda o: any(e.reason == "VMStoppedOutOfBand" for e in kube.events_for(NAMESPACE, name)),
        what="VMStoppedOutOfBand event",
        timeout=30,
    )
    kube.wait_vm(NAMESPACE, name, lambda _: hostview.vm(sim, vm_id)["State"] == "Running", what="restarted", timeout=30)
    disk = obj["status"]["disk"]["path"]
    sim.host.delete_vm_out_of_band(vm_id)
    stalled = kube.wait_vm(
        NAMESPACE,
        name,
        lambda o: (condition(o, "Stalled") or {}).get("reason") == "VMDeletedOutOfBand",
        what="VMDeletedOutOfBand",
        timeout=30,
    )
    assert "disk" in (condition(stalled, "Stalled") or {}).get("message", "").lower()
    assert hostview.vms_tagged(sim, obj["metadata"]["uid"]) == []
    assert disk.lower() in {p.lower() for p in hostview.file_paths(sim)}


def test_paused_and_critical_vm_states_have_outcomes(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    """A VM paused out of band is resumed with an event; a VM that lost its storage (RunningCritical)
    stalls with reason VMCritical instead of waiting silently, and recovers when storage returns."""
    name = _name("states")
    kube.create_vm(NAMESPACE, name, "Differencing")
    obj = kube.wait_phase(NAMESPACE, name, "Provisioned")
    vm_id = obj["status"]["vmId"]
    sim.host.set_vm_state(vm_id, "Paused")
    kube.wait_vm(
        NAMESPACE,
        name,
        lambda o: any(e.reason == "VMPausedOutOfBand" for e in kube.events_for(NAMESPACE, name)),
        what="VMPausedOutOfBand event",
        timeout=30,
    )
    kube.wait_vm(NAMESPACE, name, lambda _: hostview.vm(sim, vm_id)["State"] == "Running", what="resumed", timeout=30)
    sim.host.lose_storage(vm_id)
    stalled = kube.wait_vm(
        NAMESPACE,
        name,
        lambda o: (condition(o, "Stalled") or {}).get("reason") == "VMCritical",
        what="Stalled VMCritical",
        timeout=30,
    )
    assert "RunningCritical" in (condition(stalled, "Stalled") or {}).get("message", "")
    sim.host.lose_storage(vm_id, False)
    kube.wait_vm(
        NAMESPACE,
        name,
        lambda o: (condition(o, "Stalled") or {}).get("status") == "False"
        and (condition(o, "Ready") or {}).get("status") == "True",
        what="recovered",
        timeout=60,
    )


def test_secure_boot_is_applied_before_the_first_start(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = _name("sboot")
    kube.create_vm(NAMESPACE, name, "Quick",
                   secureBoot={"enabled": True, "template": "MicrosoftUEFICertificateAuthority"})
    obj = kube.wait_phase(NAMESPACE, name, "Provisioned")
    assert sim.host.firmware(obj["status"]["vmId"]) == (True, "MicrosoftUEFICertificateAuthority")
    vm = hostview.vm(sim, obj["status"]["vmId"])
    assert vm["CheckpointType"] == "Production"  # Standard only while Quick's checkpoint existed


def test_copies_queue_beyond_max_concurrent_copies(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    from hyperv_operator.envtest.stack import apply_objects, host_objects

    apply_objects(control_plane, host_objects(NAMESPACE, "hv-one-copy", sim, max_concurrent_copies=1))
    names = [_name("queued") for _ in range(3)]
    for name in names:
        kube.create_vm(NAMESPACE, name, "Copy", host="hv-one-copy")
    seen_queued: set[str] = set()

    def any_queued(_: dict[str, Any]) -> bool:
        for n in names:
            o = kube.get_vm(NAMESPACE, n) or {}
            copy = (o.get("status") or {}).get("copy") or {}
            if copy.get("queued"):
                assert "queued" in o["status"]["message"]
                seen_queued.add(n)
        return bool(seen_queued)

    kube.wait_vm(NAMESPACE, names[0], any_queued, what="a queued copy", timeout=60)
    for name in names:
        kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=120)


def test_reapplying_the_same_manifest_does_not_reprovision(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    name = _name("gitops")
    manifest = json.dumps(
        {
            "apiVersion": "hyperv-operator.io/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app": "demo"}},
            "spec": {"hostRef": {"name": "hv01"}, "baseVhd": BASE_VHD, "strategy": "Differencing", "memory": "1Gi"},
        }
    )
    control_plane.kubectl("apply", "-f", "-", input_text=manifest)
    obj = kube.wait_phase(NAMESPACE, name, "Provisioned")
    calls_before = len(sim.host.call_log())
    control_plane.kubectl("apply", "-f", "-", input_text=manifest)
    control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input_text=manifest)
    control_plane.kubectl("label", "hvvm", name, "-n", NAMESPACE, "gitops.example/sync=abc")
    control_plane.kubectl("annotate", "hvvm", name, "-n", NAMESPACE, "argocd.argoproj.io/tracking-id=x")
    threading.Event().wait(DRIFT_INTERVAL + 1)  # a drift check ran: give any spurious reaction time to show
    after = kube.get_vm(NAMESPACE, name)
    assert after is not None
    assert after["metadata"]["generation"] == obj["metadata"]["generation"]
    mutating = [c for c in sim.host.call_log()[calls_before:] if hostview.is_mutating(c[0])]
    assert mutating == [], f"re-applying caused host changes: {mutating}"
    assert after["status"]["phase"] == "Provisioned"


def test_kubectl_printer_columns_on_real_objects(
    kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    name = _name("columns")
    kube.create_vm(NAMESPACE, name, "Copy")
    kube.wait_phase(NAMESPACE, name, "Provisioned")
    # Ready follows spec.readiness (Heartbeat by default): the guest answers shortly after Provisioned.
    kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Ready") or {}).get("status") == "True", what="Ready")
    out = control_plane.kubectl("get", "hvvm", name, "-n", NAMESPACE).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "STRATEGY", "HOST", "POWER", "READY", "IP", "PROGRESS", "AGE"]
    row = out[1].split()
    # the IP column is blank (not even <none>) until the guest reports an address
    assert row[:6] == [name, "Provisioned", "Copy", "hv01", "Running", "True"] and "100" in row[6:8], row


def test_operator_cli_help_is_the_image_entrypoint() -> None:
    """The Dockerfile's ENTRYPOINT is the `hyperv-operator` console script: run it directly."""
    script = Path(sys.executable).parent / "hyperv-operator"
    assert script.exists(), f"console script missing: {script}"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    # The image's commands only: the development tools (simulate, demo) are not part of it.
    assert "{run,check-host,conformance}" in result.stdout
    run_help = subprocess.run([str(script), "run", "--help"], capture_output=True, text=True, check=False)
    assert "--all-namespaces" in run_help.stdout and "--metrics-port" in run_help.stdout


def _versions_until_provisioned(kube: Kube, namespace: str, name: str, strategy: str,
                                host: str = "hv01") -> list[dict[str, Any]]:
    """Every version of the object the API server stored, from creation until Provisioned and settled."""
    listing = kube.objects.list_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VM_PLURAL)
    watch = kubernetes.watch.Watch()
    versions: list[dict[str, Any]] = []
    # readiness Running: waiting for the guest's boot is host time (its polls are requeues, like a copy's)
    kube.create_vm(namespace, name, strategy, host=host, readiness="Running")
    stream = watch.stream(kube.objects.list_namespaced_custom_object, api.GROUP, api.VERSION, namespace,
                          api.VM_PLURAL, field_selector=f"metadata.name={name}",
                          resource_version=listing["metadata"]["resourceVersion"], timeout_seconds=120)
    for event in stream:
        obj = event["object"]
        versions.append(obj)
        status = obj.get("status") or {}
        reconciling = condition(obj, "Reconciling")
        if status.get("phase") == "Provisioned" and reconciling is not None and reconciling["status"] == "False":
            watch.stop()
    return versions


class LedgerWrites:
    """Counts the writes to one HyperVHost that changed its copy ledger (status.copySlots / copyQueue),
    from a watch: the host's probe writes its status too, on its own clock, and is not the VM's."""

    def __init__(self, kube: Kube, namespace: str, host: str) -> None:
        self.count = 0
        self._stop = threading.Event()
        start = kube.get_host(namespace, host)
        self._last = self._ledger(start)
        self._watch = kubernetes.watch.Watch()
        self._thread = threading.Thread(target=self._run, args=(kube, namespace, host,
                                                                start["metadata"]["resourceVersion"]), daemon=True)
        self._thread.start()

    @staticmethod
    def _ledger(obj: dict[str, Any]) -> tuple[str, str]:
        status = obj.get("status") or {}
        return repr(status.get("copySlots")), repr(status.get("copyQueue"))

    def _run(self, kube: Kube, namespace: str, host: str, version: str) -> None:
        try:
            for event in self._watch.stream(kube.objects.list_namespaced_custom_object, api.GROUP, api.VERSION,
                                            namespace, api.HOST_PLURAL, field_selector=f"metadata.name={host}",
                                            resource_version=version, timeout_seconds=180):
                ledger = self._ledger(event["object"])
                if ledger != self._last:
                    self.count += 1
                    self._last = ledger
                if self._stop.is_set():
                    break
        except Exception:
            if not self._stop.is_set():  # stopping closes the stream under the read: expected
                raise

    def stop(self) -> int:
        time.sleep(1.0)  # the last writes' watch events
        self._stop.set()
        self._watch.stop()
        self._thread.join(timeout=5)
        return self.count


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_api_writes_per_vm_from_apply_to_provisioned(
    strategy: str, sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane
) -> None:
    """Issue 9: at most 10 API writes per VM from apply to Provisioned: every stored version of the object
    after the create (finalizer, status patches, kopf's annotations), every Event about it (one per run
    for its phases and milestones), and the copy ledger's writes to its host (a host of its own here, so
    no other VM's writes count; the host's probe writes are not the VM's)."""
    host = f"hv-writes-{uuid.uuid4().hex[:6]}"
    apply_objects(control_plane, host_objects(NAMESPACE, host, sim))
    deadline = time.monotonic() + 60
    while (condition(kube.get_host(NAMESPACE, host), "Reachable") or {}).get("status") != "True":
        assert time.monotonic() < deadline, f"HyperVHost {host} not Reachable"
        time.sleep(0.2)
    ledger_writes = LedgerWrites(kube, NAMESPACE, host)
    name = _name(f"writes-{strategy.lower()}")
    versions = _versions_until_provisioned(kube, NAMESPACE, name, strategy, host=host)
    ledger = ledger_writes.stop()
    events = kube.events_for(NAMESPACE, name)
    object_writes = len(versions) - 1  # the first is the create itself
    event_writes = sum(e.count or 1 for e in events)
    writes = object_writes + event_writes + ledger
    print(f"{strategy}: {writes} API writes from apply to Provisioned ({object_writes} to the object, "
          f"{event_writes} Events, {ledger} to the host's ledger)")
    assert versions[-1]["status"]["phase"] == "Provisioned"
    assert writes <= 10, ([sorted((v["metadata"].get("annotations") or {}).keys()) for v in versions],
                          [(e.reason, e.count, e.message) for e in events], ledger)
    if strategy == "Differencing":
        annotations = [a for v in versions for a in (v["metadata"].get("annotations") or {})]
        assert not any("progress" in a or "reconcile" in a.split("/")[-1] for a in annotations), annotations
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)
