"""`make bench`: the operator against a hand-written sequential pypsrp script, side by side in one run.

Everything real but Windows: a local kube-apiserver + etcd (with an audit log of the operator's
writes), the operator as a separate process under its least-privilege ServiceAccount (as in the
integration tests), and simulated Hyper-V hosts speaking WinRM/PSRP over HTTPS. The script does what
the source blog does by hand: one cmdlet per round trip, one VM after the other, on one RunspacePool.

    python -m hyperv_operator.bench --scale small     # 1 VM; 10 VMs on 2 hosts (a few minutes)
    python -m hyperv_operator.bench --scale full      # 1 VM; 100 VMs on 5 hosts; 1,000 VMs on 10 hosts

Figures: apply -> Running (status.powerState) and apply -> Provisioned (status.phase) as a watch on
the VMs delivers them, on hosts already probed; 1-VM figures are the median of seven VMs created one
after the other (the script's too); API writes per VM from the audit log (the operator's user, write verbs);
WinRM pipelines per VM from the simulated hosts; the operator's peak RSS (VmHWM).

Development code: not imported by the runtime package, not in the image.
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hyperv_operator.envtest.controlplane import ControlPlane, free_port, running_control_plane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import (
    BASE_VHD,
    VM_ROOT,
    SimulatedHyperV,
    apply_objects,
    ensure_namespace,
    host_objects,
    install_operator_rbac,
    webhook_configuration_for_loopback,
)
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.commands import Statement
from hyperv_operator.provisioning.retry import ABANDON_ANNOTATION
from hyperv_operator.simulator.wsman.psrp import ReceivedPipeline

SCALES: dict[str, list[tuple[str, int, int]]] = {
    # (strategy, VMs, hosts)
    "tiny": [("Differencing", 1, 1)],
    "small": [("Differencing", 1, 1), ("Quick", 1, 1), ("Differencing", 10, 2)],
    "full": [("Differencing", 1, 1), ("Quick", 1, 1), ("Differencing", 100, 5), ("Differencing", 1000, 10),
             ("Quick", 20, 2)],
    # One figure of `full` at a time, to work on it without the 10-minute run:
    "latency": [("Differencing", 1, 1), ("Quick", 1, 1)],
    "quick-fleet": [("Quick", 20, 2)],
    "fleet100": [("Differencing", 100, 5)],
    "fleet1000": [("Differencing", 1000, 10)],
}
GROUP, VERSION = "hyperv-operator.io", "v1alpha1"
ROUNDS_FOR_ONE_VM = 7
"""1-VM scenarios: VMs created one after the other (operator and script alike); the median is shown
(seven: with three, the figure moved by 15% from run to run on the 2-core machine)."""
MEMORY = 1024**3
COPY_SLOTS = 2
"""maxConcurrentCopies of every benchmark host (the HyperVHost default)."""


# --- the hand-written script: the blog's manual way ------------------------------------------------


def script_differencing(sim: SimulatedHyperV, names: Sequence[str]) -> list[float]:
    """New-Item, New-VHD -Differencing, New-VM, Start-VM: one pipeline each, one VM after the other.
    Each VM's seconds (the first VM's include opening the RunspacePool)."""
    from pypsrp.powershell import PowerShell, RunspacePool
    from pypsrp.wsman import WSMan

    from hyperv_operator.hyperv.winrm import add_statements

    ca: Any = str(sim.tls.ca_cert)  # pypsrp takes a CA bundle path here too (its stubs say bool)
    wsman = WSMan("127.0.0.1", port=sim.port, ssl=True, auth="basic", username=sim.username,
                  password=sim.password, cert_validation=ca, no_proxy=True)
    times: list[float] = []
    started = time.monotonic()
    with RunspacePool(wsman) as pool:
        for name in names:
            folder = f"{VM_ROOT}\\script-{name}"
            disk = f"{folder}\\disk.vhdx"
            steps: list[Statement] = [
                cmdlets.new_directory(folder),
                cmdlets.new_differencing_vhd(disk, BASE_VHD),
                cmdlets.new_vm(f"script-{name}", folder, disk, MEMORY, 2, None),
            ]
            vm_id = ""
            for statement in steps:
                ps = PowerShell(pool)
                add_statements(ps, [statement])
                out = ps.invoke()
                if ps.had_errors:
                    raise RuntimeError(f"script failed at {statement}: {ps.streams.error}")
                if out and statement is steps[-1]:
                    vm_id = str(out[-1].adapted_properties.get("Id") or out[-1].extended_properties.get("Id"))
            ps = PowerShell(pool)
            add_statements(ps, [cmdlets.start_vm(vm_id)])
            ps.invoke()
            if ps.had_errors:
                raise RuntimeError(f"Start-VM failed: {ps.streams.error}")
            times.append(time.monotonic() - started)
            started = time.monotonic()
    return times


def script_quick(sim: SimulatedHyperV, names: Sequence[str]) -> list[float]:
    """Quick to Running, the blog's steps 1-2: New-Item, New-VM on the base, Checkpoint-VM, Start-VM.
    Each VM's seconds (the first VM's include opening the RunspacePool)."""
    from pypsrp.powershell import PowerShell, RunspacePool
    from pypsrp.wsman import WSMan

    from hyperv_operator.hyperv.winrm import add_statements

    ca: Any = str(sim.tls.ca_cert)
    wsman = WSMan("127.0.0.1", port=sim.port, ssl=True, auth="basic", username=sim.username,
                  password=sim.password, cert_validation=ca, no_proxy=True)
    times: list[float] = []
    started = time.monotonic()
    with RunspacePool(wsman) as pool:

        def one(statement: Statement) -> list[Any]:
            ps = PowerShell(pool)
            add_statements(ps, [statement])
            out: list[Any] = ps.invoke()
            if ps.had_errors:
                raise RuntimeError(f"script failed at {statement}: {ps.streams.error}")
            return out

        for name in names:
            folder = f"{VM_ROOT}\\script-q-{name}"
            one(cmdlets.new_directory(folder))
            out = one(cmdlets.new_vm(f"script-q-{name}", folder, BASE_VHD, MEMORY, 2, None))
            vm_id = str(out[-1].adapted_properties.get("Id") or out[-1].extended_properties.get("Id"))
            one(cmdlets.checkpoint_vm(vm_id, "quick"))
            one(cmdlets.start_vm(vm_id))
            times.append(time.monotonic() - started)
            started = time.monotonic()
    return times


# --- the operator ----------------------------------------------------------------------------------


@dataclass
class Result:
    label: str
    vms: int
    hosts: int
    first_running: float
    all_running: float
    all_provisioned: float
    all_independent: float | None
    copy_bound: float | None
    """Quick: rounds of copies (copies / slots) x copy time, in wall seconds: the hosts cannot do better."""
    api_writes_per_vm: float
    pipelines_per_vm: float
    script_seconds: float | None


def _vm(namespace: str, name: str, host: str, strategy: str) -> dict[str, Any]:
    return {
        "apiVersion": "hyperv-operator.io/v1alpha1",
        "kind": "VirtualMachine",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"hostRef": {"name": host}, "baseVhd": BASE_VHD, "strategy": strategy, "memory": "1Gi",
                 "cpus": 2, "generation": 2, "powerState": "Running", "deletionPolicy": "Delete"},
    }


WRITE_VERBS = ("create", "update", "patch", "delete")


def _operator_writes(plane: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    """The operator's writes on the objects of one scenario (its namespace) from the first VM's create
    request on: what VMs left over from an earlier scenario cost is not counted against this one, and
    neither is the set-up of the scenario's hosts before it (kopf's annotations on a new HyperVHost,
    its first probe's status), which no VM causes."""
    since = TRACE_START.get(namespace, 0.0)
    return [e for e in plane.audit_events() if e.get("verb") in WRITE_VERBS
            and (e.get("objectRef") or {}).get("namespace") == namespace and _audit_time(e) >= since]


def _audit_time(event: dict[str, Any], field: str = "requestReceivedTimestamp") -> float:
    """An audit event's timestamp (RFC 3339, "Z") as seconds since the epoch."""
    from datetime import datetime

    return datetime.fromisoformat(str(event[field]).replace("Z", "+00:00")).timestamp()


def _writes_by_kind(writes: list[dict[str, Any]]) -> dict[str, int]:
    """Writes by resource/subresource, verb and answer code."""
    counts: dict[str, int] = {}
    for e in writes:
        ref = e.get("objectRef") or {}
        key = (f"{ref.get('resource')}{'/' + ref['subresource'] if ref.get('subresource') else ''} "
               f"{e.get('verb')} {(e.get('responseStatus') or {}).get('code')}")
        counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _peak_rss_mb(pid: int | None) -> float:
    if pid is None:
        return 0.0
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _cpu_seconds(pid: int | None) -> float:
    """user + system CPU seconds of a process so far (0 if unknown)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _cpu_now(operator: OperatorProcess, plane: ControlPlane) -> tuple[float, float, float]:
    """CPU seconds so far of the operator, of this process (the simulated hosts), and of the control plane."""
    plane_pids = [proc.pid for proc in plane._procs]
    return (_cpu_seconds(operator.pid), time.process_time(), sum(_cpu_seconds(pid) for pid in plane_pids))


class RssSampler:
    """The operator's resident memory every half second (VmRSS), for the peak of each scenario."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        self.samples.append((time.monotonic(), int(line.split()[1]) / 1024))
            except OSError:
                pass
            self._stop.wait(0.5)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def peak_since(self, since: float) -> float:
        return max((mb for t, mb in self.samples if t >= since), default=0.0)


def run_fleet(plane: ControlPlane, sims: list[SimulatedHyperV], strategy: str, count: int,
              timeout: float, rounds: int = 1) -> tuple[float, float, float, float | None, int, str]:
    """Create `count` VMs spread over the hosts at once; times to first/all Running, all Provisioned,
    all Independent (Quick); how many VMs finished; and the scenario's namespace.

    The clock starts right before the first create request (not before a kubectl process starts:
    its start-up is the client's time, not the operator's), and each VM's times are taken from a
    watch on the VMs as the API server sends the change (not from a poll every 50 ms).

    `rounds` > 1: the fleet is created that many times, one round after the other (each once the last
    is Provisioned), and the round with the median time to all Running is reported: one VM's time
    on a shared 2-core machine varies by tens of milliseconds from run to run."""
    import kubernetes

    namespace = f"bench-{uuid.uuid4().hex[:6]}"
    ensure_namespace(plane, namespace)
    for i, sim in enumerate(sims):
        apply_objects(plane, host_objects(namespace, f"hv{i:02d}", sim))
    api = kubernetes.client.CustomObjectsApi(
        kubernetes.config.new_client_from_config(str(plane.kubeconfig))  # type: ignore[no-untyped-call]
    )
    _wait_hosts_ready(api, namespace, [f"hv{i:02d}" for i in range(len(sims))])
    # Moments (time.monotonic) each VM was first seen Running / Provisioned / Independent.
    running: dict[str, float] = {}
    provisioned: dict[str, float] = {}
    independent: dict[str, float] = {}
    watching = threading.Event()
    done = threading.Event()

    def record(item: dict[str, Any]) -> None:
        now = time.monotonic()
        name, status = item["metadata"]["name"], item.get("status") or {}
        if status.get("powerState") == "Running":
            running.setdefault(name, now)
        if status.get("phase") == "Provisioned":
            provisioned.setdefault(name, now)
        if any(c.get("type") == "Independent" and c.get("status") == "True" for c in status.get("conditions", [])):
            independent.setdefault(name, now)

    def watch() -> None:
        listed: Any = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "virtualmachines")
        version = listed["metadata"]["resourceVersion"]
        watching.set()
        while not done.is_set():
            watcher: Any = kubernetes.watch.Watch()  # type: ignore[no-untyped-call]
            stream = watcher.stream(api.list_namespaced_custom_object, GROUP, VERSION, namespace, "virtualmachines",
                                    resource_version=version, timeout_seconds=5)
            for event in stream:
                item = event["object"]
                version = item["metadata"]["resourceVersion"]
                record(item)
                if done.is_set():
                    break

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    watching.wait(30)
    nan = float("nan")
    outcomes: list[tuple[float, float, float, float | None, int]] = []
    for round_ in range(rounds):
        names = [f"vm-{n:04d}" if round_ == 0 else f"vm-r{round_}-{n:04d}" for n in range(count)]
        objects = [_vm(namespace, name, f"hv{n % len(sims):02d}", strategy) for n, name in enumerate(names)]
        started = time.monotonic()
        if round_ == 0:
            TRACE_START[namespace] = time.time()
        for body in objects:
            api.create_namespaced_custom_object(GROUP, VERSION, namespace, "virtualmachines", body)
        finished = (independent if strategy == "Quick" else provisioned)
        while time.monotonic() - started < timeout and sum(name in finished for name in names) < count:
            time.sleep(0.05)

        def since(seen: dict[str, float], names: list[str] = names, started: float = started) -> list[float]:
            return [seen[name] - started for name in names if name in seen]

        ran, prov, indep = since(running), since(provisioned), since(independent)
        outcomes.append((
            min(ran, default=nan),
            max(ran) if len(ran) == count else nan,
            max(prov) if len(prov) == count else nan,
            (max(indep) if len(indep) == count else nan) if strategy == "Quick" else None,
            len(prov),
        ))
    done.set()
    thread.join(10)
    by_running = sorted(outcomes, key=lambda o: (math.isnan(o[1]), o[1]))
    first, all_running, all_prov, all_indep, finished_count = by_running[len(by_running) // 2]
    return first, all_running, all_prov, all_indep, finished_count, namespace


def _wait_hosts_ready(api: Any, namespace: str, names: Sequence[str], timeout: float = 60.0) -> None:
    """The hosts exist and were probed (Reachable) before the clock starts: a fleet is created on hosts that are
    in service, and the first probe of a host (a pool opened, Get-VMHost) is not a VM's time."""
    deadline = time.monotonic() + timeout
    waiting = set(names)
    while waiting and time.monotonic() < deadline:
        for name in sorted(waiting):
            host: Any = api.get_namespaced_custom_object(GROUP, VERSION, namespace, "hypervhosts", name)
            conditions = (host.get("status") or {}).get("conditions") or []
            if any(c.get("type") == "Reachable" and c.get("status") == "True" for c in conditions):
                waiting.discard(name)
        if waiting:
            time.sleep(0.1)
    if waiting:
        raise RuntimeError(f"hosts not Reachable within {timeout:.0f}s: {sorted(waiting)}")


def _event_reasons(plane: ControlPlane, namespace: str) -> dict[str, int]:
    import json

    listed = json.loads(plane.kubectl("get", "events", "-n", namespace, "-o", "json").stdout)
    counts: dict[str, int] = {}
    for item in listed.get("items", []):
        key = f"{item.get('reason')} ({item.get('involvedObject', {}).get('kind')})"
        counts[key] = counts.get(key, 0) + int(item.get("count") or 1)
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


TRACE_START: dict[str, float] = {}
"""Wall-clock start of each scenario (for --trace)."""


def _trace(writes: list[dict[str, Any]], pipelines: list[ReceivedPipeline], namespace: str,
           running: float) -> None:
    """The operator's writes and the host's pipelines of a 1-VM scenario's first VM on a time line from
    its create request (pipelines at their arrival; later VMs' lines follow, unlabelled by VM)."""
    start = TRACE_START.get(namespace, 0.0)
    lines: list[tuple[float, str]] = []
    for e in writes:
        ref = e.get("objectRef") or {}
        at = _audit_time(e) - start
        took = _audit_time(e, "stageTimestamp") - start - at
        lines.append((at, f"(+{took * 1000:.1f}) {e.get('verb')} {ref.get('resource')}"
                          f"{'/' + ref['subresource'] if ref.get('subresource') else ''} {ref.get('name')}"))
    for p in pipelines:
        if p.received_at >= start:
            names = "; ".join(" | ".join(c.name.rsplit("\\", 1)[-1] for c in s.commands) for s in p.statements)
            lines.append((p.received_at - start, f"pipeline: {names[:110]}"))
    lines.append((running, "Running seen by the watch"))
    for at, text in sorted(lines):
        print(f"  {at * 1000:7.1f} ms {text}")


def clean_up(plane: ControlPlane, namespace: str, timeout: float = 600.0) -> None:
    """Remove a finished scenario's VMs before its hosts stop, without host work (the abandon
    annotation), so the next scenario does not share the operator with a fleet whose hosts are gone."""
    import kubernetes

    api = kubernetes.client.CustomObjectsApi(
        kubernetes.config.new_client_from_config(str(plane.kubeconfig))  # type: ignore[no-untyped-call]
    )
    listed: Any = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "virtualmachines")
    for item in listed["items"]:
        api.patch_namespaced_custom_object(GROUP, VERSION, namespace, "virtualmachines", item["metadata"]["name"],
                                           {"metadata": {"annotations": {ABANDON_ANNOTATION: "true"}}})
    api.delete_collection_namespaced_custom_object(GROUP, VERSION, namespace, "virtualmachines")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left: Any = api.list_namespaced_custom_object(GROUP, VERSION, namespace, "virtualmachines", limit=1)
        if not left["items"]:
            return
        time.sleep(1.0)
    print(f"  {namespace}: VMs still there {timeout:.0f}s after their deletion")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyperv_operator.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="small")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per scenario")
    parser.add_argument("--writes", action="store_true", help="print the API writes by resource, verb and code")
    parser.add_argument("--trace", action="store_true", help="1-VM scenarios: the operator's writes on a time line")
    parser.add_argument("--time-scale", type=float, default=60.0, help="simulated seconds per wall second")
    parser.add_argument("--webhook", action="store_true",
                        help="the operator serves its admission webhook and the API server calls it, as deployed")
    args = parser.parse_args(argv)

    results: list[Result] = []
    peak_rss = 0.0
    with running_control_plane(audit=True) as plane:
        install_operator_rbac(plane)
        log = Path(tempfile.mkdtemp(prefix="hyperv-bench-")) / "operator.log"
        webhook_port = free_port() if args.webhook else 0
        if webhook_port:
            apply_objects(plane, [webhook_configuration_for_loopback(webhook_port)])
        operator = OperatorProcess(plane.operator_kubeconfig, log, drift_interval=30.0, host_probe_interval=60.0,
                                   webhook_port=webhook_port)
        operator.start()
        try:
            sampler = RssSampler(operator.pid).__enter__()
            for strategy, count, hosts in SCALES[args.scale]:
                scenario_began = time.monotonic()
                cpu_before = _cpu_now(operator, plane)
                sims = [SimulatedHyperV(time_scale=args.time_scale, free_bytes=50 * 10**12).start()
                        for _ in range(hosts)]
                try:
                    rounds = ROUNDS_FOR_ONE_VM if count == 1 else 1
                    first, all_running, all_prov, all_indep, done, namespace = run_fleet(
                        plane, sims, strategy, count, args.timeout, rounds)
                    cpu = [after - before for after, before in zip(_cpu_now(operator, plane), cpu_before, strict=True)]
                    print(f"  {strategy} x{count}: CPU seconds per VM: operator {cpu[0] / count:.3f}, simulated hosts "
                          f"and bench {cpu[1] / count:.3f}, API server + etcd {cpu[2] / count:.3f} "
                          f"(all: {sum(cpu):.1f} s in {all_prov:.1f} s of wall time on {os.cpu_count()} cores)")
                    time.sleep(1.0)  # let the audit log flush the last writes
                    ns_writes = _operator_writes(plane, namespace)
                    writes = len(ns_writes)
                    if args.writes:
                        for key, n in _writes_by_kind(ns_writes).items():
                            print(f"  {strategy} x{count} writes: {key}: {n}")
                    if args.writes:
                        for key, n in _event_reasons(plane, namespace).items():
                            print(f"  {strategy} x{count} events: {key}: {n}")
                    if args.trace and count == 1:
                        _trace(ns_writes, list(sims[0].server.received), namespace, all_running)
                    pipelines = sum(len(s.server.pipeline_requests) for s in sims)
                    script = None
                    if count <= 100:  # the script does them one after the other, on one host
                        run_script = script_differencing if strategy == "Differencing" else script_quick
                        if count == 1:  # the median VM of as many rounds as the operator's
                            times = sorted(run_script(sims[0], [f"{n:04d}" for n in range(rounds)]))
                            script = times[len(times) // 2]
                        else:
                            script = sum(run_script(sims[0], [f"{n:04d}" for n in range(count)]))
                    bound = None
                    if strategy == "Quick":
                        copy_wall = sims[0].base_size / sims[0].copy_bytes_per_second / args.time_scale
                        bound = math.ceil(count / (hosts * COPY_SLOTS)) * copy_wall
                    results.append(Result(f"{count} {strategy} on {hosts} host(s)", count, hosts, first, all_running,
                                          all_prov, all_indep, bound, writes / (count * rounds),
                                          pipelines / (count * rounds), script))
                    print(f"  {table(results[-1:], peak_rss, args.scale).splitlines()[-1]}", flush=True)
                    print(f"  {strategy} x{count}: operator RSS peak {sampler.peak_since(scenario_began):.0f} MB, "
                          f"{sampler.samples[-1][1] if sampler.samples else 0:.0f} MB at the end")
                    if done < count:
                        print(f"  {strategy} x{count}: only {done} Provisioned within {args.timeout:.0f}s")
                    clean_up(plane, namespace)
                finally:
                    for sim in sims:
                        sim.stop()
                peak_rss = max(peak_rss, _peak_rss_mb(operator.pid))
            sampler.__exit__()
        finally:
            peak_rss = max(peak_rss, _peak_rss_mb(operator.pid))
            operator.stop()
    print(table(results, peak_rss, args.scale))
    return 0


def table(results: list[Result], peak_rss: float, scale: str) -> str:
    head = ("| work | script to Running (sequential pypsrp) | operator: first Running | all Running "
            "| operator time / script time | all Provisioned | all Independent (copy-time bound) | API writes/VM "
            "| WinRM pipelines/VM |")
    lines = [f"scale={scale}; operator peak RSS {peak_rss:.0f} MB", "", head, "|" + "---|" * 9]
    def sec(value: float) -> str:  # milliseconds matter below a second: 0.07 s may be 1.3x or 1.7x of 0.05 s
        return f"{value:.3f} s" if value < 1 else f"{value:.2f} s"

    for r in results:
        ratio = f"{r.all_running / r.script_seconds:.2f}x" if r.script_seconds else "-"
        lines.append(
            f"| {r.label} | {sec(r.script_seconds) if r.script_seconds is not None else '-'} "
            f"| {sec(r.first_running)} | {sec(r.all_running)} | {ratio} | {sec(r.all_provisioned)} "
            f"| {f'{sec(r.all_independent)} ({sec(r.copy_bound or 0.0)})' if r.all_independent is not None else '-'} "
            f"| {r.api_writes_per_vm:.1f} | {r.pipelines_per_vm:.1f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
