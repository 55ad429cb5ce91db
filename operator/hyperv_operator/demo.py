"""`make demo`: the whole product on one machine, in well under a minute.

A real control plane, a simulated Hyper-V host over WinRM/HTTPS with the 9 GB base from the
Microsoft post (simulated size and throughput on a faster clock), the operator as a separate process
with its production RBAC, and the three samples from manifests/samples/ — one VM per strategy; then a
VirtualMachineImage rolled to a second generation, with the VMs that depend on each generation.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from hyperv_operator.envtest.controlplane import ControlPlane, repo_root, running_control_plane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SimulatedHyperV, apply_objects, host_objects, install_operator_rbac

NAMESPACE = "default"
SAMPLES = ("differencing", "copy", "quick")


def _samples() -> list[dict[str, Any]]:
    folder = repo_root() / "manifests" / "samples"
    objects = []
    for strategy in SAMPLES:
        path = folder / f"hyperv-operator.io_v1alpha1_virtualmachine_{strategy}.yaml"
        obj = yaml.safe_load(path.read_text())
        obj["metadata"]["namespace"] = NAMESPACE
        objects.append(obj)
    return objects


def _get_vms(plane: ControlPlane) -> list[dict[str, Any]]:
    out = plane.kubectl("get", "hvvm", "-n", NAMESPACE, "-o", "json").stdout
    return list(json.loads(out)["items"])


def _cond(obj: dict[str, Any], type_: str) -> str:
    for condition in (obj.get("status") or {}).get("conditions") or []:
        if condition.get("type") == type_:
            return str(condition.get("status"))
    return "-"


def _row(obj: dict[str, Any], elapsed: float) -> str:
    status = obj.get("status") or {}
    copy = status.get("copy") or {}
    percent = f"{copy['percent']}%" if "percent" in copy else "-"
    if copy.get("queued"):
        percent = "queued"
    return (
        f"{elapsed:6.1f}s  {obj['metadata']['name']:<17} {obj['spec']['strategy']:<13} "
        f"{status.get('phase', '-'):<13} {status.get('powerState', '-'):<8} {percent:>6}  "
        f"Ready={_cond(obj, 'Ready'):<5} Independent={_cond(obj, 'Independent'):<5}"
    )


def _done(obj: dict[str, Any]) -> bool:
    return (obj.get("status") or {}).get("phase") in ("Provisioned", "Failed")


def _summary(vms: list[dict[str, Any]], time_scale: float, copy_bytes_per_second: float, base_size: int) -> str:
    copy_host_seconds = base_size / copy_bytes_per_second
    lines = [
        "",
        "Summary (wall-clock seconds from kubectl apply)",
        f"  {'strategy':<13} {'time to Running':>16} {'time to Independent':>20}",
    ]

    def fmt(seconds: Any) -> str:
        return "never (by design)" if seconds is None else f"{float(seconds):.1f}s"

    for obj in sorted(vms, key=lambda o: SAMPLES.index(o["spec"]["strategy"].lower())):
        timings = (obj.get("status") or {}).get("timings") or {}
        lines.append(
            f"  {obj['spec']['strategy']:<13} {fmt(timings.get('secondsToRunning')):>16} "
            f"{fmt(timings.get('secondsToIndependent')):>20}"
        )
    lines.append(
        f"The simulated host's clock runs {time_scale:g}x: copying the {base_size / 1e9:.1f} GB base at "
        f"{copy_bytes_per_second / 1e6:.0f} MB/s is {int(copy_host_seconds // 60)}m{int(copy_host_seconds % 60):02d}s "
        f"of host time, {copy_host_seconds / time_scale:.0f}s of wall time."
    )
    return "\n".join(lines)


IMAGES = "\\\\FS\\VMSHARE\\images"


def _wait(what: str, probe: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = probe()
        if value:
            return value
        time.sleep(0.25)
    raise TimeoutError(what)


def _image_demo(plane: ControlPlane, sim: SimulatedHyperV) -> bool:
    """A VirtualMachineImage with two generations and the VMs that depend on each (docs/images.md)."""
    v1, v2 = IMAGES + "\\WIN-2026-01.VHDX", IMAGES + "\\WIN-2026-02.VHDX"
    sim.host.add_base_disk(v1, 4 * 10**9)
    sim.host.add_base_disk(v2, 4 * 10**9)

    def image(path: str) -> dict[str, Any]:
        return {"apiVersion": "hyperv-operator.io/v1alpha1", "kind": "VirtualMachineImage",
                "metadata": {"name": "win", "namespace": NAMESPACE},
                "spec": {"hostRef": {"name": "hv01"}, "source": {"path": path}}}

    def vm(name: str) -> dict[str, Any]:
        return {"apiVersion": "hyperv-operator.io/v1alpha1", "kind": "VirtualMachine",
                "metadata": {"name": name, "namespace": NAMESPACE},
                "spec": {"hostRef": {"name": "hv01"}, "imageRef": {"name": "win"}, "strategy": "Differencing",
                         "memory": "1Gi"}}

    def image_status() -> dict[str, Any]:
        out = plane.kubectl("get", "hvimg", "win", "-n", NAMESPACE, "-o", "json", check=False)
        return dict(json.loads(out.stdout).get("status") or {}) if out.returncode == 0 else {}

    def provisioned(names: tuple[str, ...]) -> bool:
        by_name = {o["metadata"]["name"]: o for o in _get_vms(plane)}
        return all((by_name.get(n, {}).get("status") or {}).get("phase") == "Provisioned" for n in names)

    print(f"\n--- images: VirtualMachineImage win on {v1}", flush=True)
    apply_objects(plane, [image(v1)])
    _wait("image generation 1", lambda: image_status().get("currentGeneration") == 1)
    apply_objects(plane, [vm("web-1"), vm("web-2")])
    _wait("web-1, web-2 on generation 1", lambda: provisioned(("web-1", "web-2")))
    print(f"web-1, web-2 provisioned on generation 1; rolling the image to {v2}", flush=True)
    apply_objects(plane, [image(v2)])
    _wait("image generation 2", lambda: image_status().get("currentGeneration") == 2)
    apply_objects(plane, [vm("web-3")])
    _wait("web-3 on generation 2", lambda: provisioned(("web-3",)))
    _wait("dependent counts", lambda: image_status().get("generationsSummary") == "g2*:1 g1:2")
    print("\n$ kubectl get hvimg")
    print(plane.kubectl("get", "hvimg", "-n", NAMESPACE).stdout)
    for record in image_status().get("generations") or []:
        print(f"  generation {record['generation']}: {record['path']}  dependents: "
              f"{', '.join(record.get('dependentVMs') or []) or 'none'}")
    columns = "custom-columns=NAME:.metadata.name,IMAGE-GEN:.status.image.generation,BASE:.status.image.path"
    print(f"\n$ kubectl get hvvm web-1 web-2 web-3 -o {columns}")
    print(plane.kubectl("get", "hvvm", "web-1", "web-2", "web-3", "-n", NAMESPACE, "-o", columns).stdout)
    _cache_demo(plane, sim, vm, image_status, provisioned)
    return True


def _cache_demo(plane: ControlPlane, sim: SimulatedHyperV, vm: Any, image_status: Any, provisioned: Any) -> None:
    """Two VMs on another share than the image's file: one cache copy, both parent it (docs/images.md)."""
    far = "\\\\FS2\\VMS"
    sim.host.add_folder(far + "\\VMs")
    host = json.loads(plane.kubectl("get", "hypervhost", "hv01", "-n", NAMESPACE, "-o", "json").stdout)
    roots = [*host["spec"]["storage"]["vmRoots"], far]
    plane.kubectl("patch", "hypervhost", "hv01", "-n", NAMESPACE, "--type=merge", "-p",
                  json.dumps({"spec": {"storage": {"vmRoots": roots}}}))
    print(f"\n--- images: web-far-1, web-far-2 live on {far}, another share than the image's file", flush=True)
    apply_objects(plane, [{**vm(name), "spec": {**vm(name)["spec"], "vmPath": far + "\\VMs"}}
                          for name in ("web-far-1", "web-far-2")])
    _wait("web-far-1, web-far-2 on the cached copy", lambda: provisioned(("web-far-1", "web-far-2")), timeout=120)
    _wait("the cache counted with its two VMs", lambda: any(
        c.get("state") == "Ready" and c.get("dependents") == 2 for c in image_status().get("caches") or []))
    caches = [c for c in image_status().get("caches") or [] if c.get("state") != "Collected"]
    for entry in caches:
        copies = [j for j in sim.host.copy_jobs() if j["Destination"].lower() == str(entry["path"]).lower()]
        print(f"  cache {entry['path']}: {entry['state']}, {len(copies)} copy for "
              f"{entry.get('dependents')} VMs: {', '.join(entry.get('dependentVMs') or [])}")
    columns = "custom-columns=NAME:.metadata.name,IMAGE-GEN:.status.image.generation,DISK-PARENT:.status.image.base"
    print(f"\n$ kubectl get hvvm web-far-1 web-far-2 -o {columns}")
    print(plane.kubectl("get", "hvvm", "web-far-1", "web-far-2", "-n", NAMESPACE, "-o", columns).stdout)


def run_demo(args: argparse.Namespace) -> int:
    started = time.monotonic()
    print("starting the local control plane (etcd + kube-apiserver; built once per machine) ...", flush=True)
    with running_control_plane() as plane:
        sim = SimulatedHyperV(base_size=args.base_size, time_scale=args.time_scale).start()
        try:
            print(
                f"simulated Hyper-V host at https://127.0.0.1:{sim.port}/wsman with base "
                f"\\\\FS\\VMSHARE\\BASE.VHDX ({args.base_size:,} bytes, read-only), "
                f"host clock x{args.time_scale:g}",
                flush=True,
            )
            install_operator_rbac(plane)
            apply_objects(plane, host_objects(NAMESPACE, "hv01", sim))
            log = Path(tempfile.mkdtemp(prefix="hyperv-demo-")) / "operator.log"
            operator = OperatorProcess(plane.operator_kubeconfig, log, drift_interval=5.0)
            operator.start()
            print(f"operator running as its ServiceAccount (log: {log})", flush=True)
            apply_objects(plane, _samples())
            t0 = time.monotonic()
            print("applied manifests/samples: vm-differencing, vm-copy, vm-quick\n", flush=True)
            last: dict[str, str] = {}
            vms: list[dict[str, Any]] = []
            while time.monotonic() - t0 < 180:
                vms = _get_vms(plane)
                for obj in vms:
                    row = _row(obj, time.monotonic() - t0)
                    key = obj["metadata"]["name"]
                    if row.split(None, 1)[1] != last.get(key):
                        print(row, flush=True)
                        last[key] = row.split(None, 1)[1]
                if len(vms) == len(SAMPLES) and all(_done(o) for o in vms):
                    break
                time.sleep(0.25)
            print("\n$ kubectl get hvvm -o wide")
            print(plane.kubectl("get", "hvvm", "-n", NAMESPACE, "-o", "wide").stdout)
            print(_summary(vms, args.time_scale, sim.copy_bytes_per_second, args.base_size))
            base_ok = sim.host.disk_fingerprint("\\\\FS\\VMSHARE\\BASE.VHDX")
            print(f"\nbase disk identity unchanged: {base_ok[0]} (read-only throughout)")
            failed = [o["metadata"]["name"] for o in vms if (o.get("status") or {}).get("phase") != "Provisioned"]
            try:
                _image_demo(plane, sim)
            except TimeoutError as exc:
                failed.append(f"images: {exc}")
            print(f"demo finished in {time.monotonic() - started:.1f}s wall time")
            if args.keep:
                print(f"\nstill running; KUBECONFIG={plane.kubeconfig} — Ctrl-C to stop")
                try:
                    while True:
                        time.sleep(3600)
                except KeyboardInterrupt:
                    pass
            operator.stop()
            if failed:
                print(f"not provisioned: {failed}; operator log tail:\n{operator.log_tail()}", file=sys.stderr)
                return 1
            return 0
        finally:
            sim.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyperv_operator.demo", description=__doc__)
    parser.add_argument("--base-size", type=int, default=8_996_782_080, help="simulated base size in bytes")
    parser.add_argument("--time-scale", type=float, default=8.0, help="simulated seconds per wall second")
    parser.add_argument("--keep", action="store_true", help="keep running at the end until Ctrl-C")
    try:
        return run_demo(parser.parse_args(argv))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
