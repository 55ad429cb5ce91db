"""The per-share image cache (real API server, operator process, simulated host over WinRM).

VMs whose files live on another share than their image's file make the operator copy the image file
once to their share (through the background copy, taking a copy slot) and parent that copy; the copy
survives an operator crash without being made twice or used half-written, and goes away with the last
VM that chains to it.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import pytest

from hyperv_operator import api
from hyperv_operator.envtest.controlplane import OPERATOR_NAMESPACE, ControlPlane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SHARE, SimulatedHyperV, apply_objects
from tests.integration import hostview
from tests.integration.kube import Kube, condition
from tests.integration.test_images import (  # noqa: F401 - image_env is a fixture
    CLUSTER_IMAGE_PLURAL,
    IMAGES,
    LABEL,
    NS,
    _b64,
    _get,
    _image_where,
    _ready,
    image_env,
)

pytestmark = pytest.mark.integration

OTHER_SHARE = "\\\\FS2\\VMS2"
OTHER_VMS = OTHER_SHARE + "\\VMs"
CACHE_HOST = "cache-host"
SIZE = 150 * 10**9
"""2,000 s of host time to copy at 75 MB/s (~33 s of wall time at x60): the operator is killed as soon as
the copy runs and restarted, and must still find it running on a loaded machine."""


@pytest.fixture(scope="module")
def cache_host(sim: SimulatedHyperV, control_plane: ControlPlane, image_env: None) -> str:  # noqa: F811
    sim.host.add_folder(OTHER_VMS)
    # The VMs' file server offloads copies within its share (SMB server-side copy); across shares it cannot.
    sim.host.enable_copy_offload(OTHER_SHARE)
    apply_objects(control_plane, [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"{CACHE_HOST}-credentials", "namespace": OPERATOR_NAMESPACE},
         "type": "Opaque", "data": {"username": _b64(sim.username), "password": _b64(sim.password)}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"{CACHE_HOST}-ca", "namespace": OPERATOR_NAMESPACE},
         "type": "Opaque", "data": {"ca.crt": _b64(sim.ca_pem)}},
        {"apiVersion": api.API_VERSION, "kind": "ClusterHyperVHost", "metadata": {"name": CACHE_HOST},
         "spec": {"address": "127.0.0.1", "port": sim.port, "transport": "https", "auth": "basic",
                  "credentialsSecretRef": {"name": f"{CACHE_HOST}-credentials"},
                  "caBundleSecretRef": {"name": f"{CACHE_HOST}-ca"}, "maxConcurrentCopies": 4,
                  "defaultVmPath": OTHER_VMS, "namespaceSelector": {"matchLabels": {LABEL: "true"}},
                  # Bases are read from the first share; VMs (and so the cache) live on the second.
                  "storage": {"baseRoots": [SHARE], "vmRoots": [OTHER_SHARE, SHARE]}}},
    ])
    return CACHE_HOST


def _vm(kube: Kube, name: str, strategy: str, image: str, host: str = CACHE_HOST) -> None:
    body = {"apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {"hostRef": {"kind": "ClusterHyperVHost", "name": host},
                     "imageRef": {"kind": "ClusterVirtualMachineImage", "name": image}, "strategy": strategy,
                     "memory": "1Gi", "vmPath": OTHER_VMS}}
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.VM_PLURAL, body)


def _jobs_to(sim: SimulatedHyperV, destination: str) -> list[dict[str, Any]]:
    return [j for j in sim.host.copy_jobs() if j["Destination"].lower() == destination.lower()]


def _children_of(sim: SimulatedHyperV, parent: str) -> list[str]:
    return [p for p, d in sim.host.files().items() if str(d.get("ParentPath") or "").lower() == parent.lower()]


def _metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = {k: v.replace("\\\\", "\\") for k, v in
                 re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line.split("}", 1)[0])}  # exposition escapes \
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_cross_share_vms_trigger_one_cache_copy_that_survives_a_crash_and_goes_with_the_last_vm(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, cache_host: str,
) -> None:
    operator = running_operator
    image = f"cache-{uuid.uuid4().hex[:6]}"
    source = IMAGES + f"\\{image}.VHDX"
    sim.host.add_base_disk(source, SIZE)
    kube.objects.create_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": "ClusterVirtualMachineImage", "metadata": {"name": image},
        "spec": {"hostRef": {"name": cache_host}, "source": {"path": source},
                 "namespaceSelector": {"matchLabels": {LABEL: "true"}}}})
    _image_where(kube, CLUSTER_IMAGE_PLURAL, image, _ready, what="Ready")
    cached = f"{OTHER_SHARE}\\ImageCache\\cluster.{image}\\g1\\{image}.VHDX"

    names = [f"far-{i}-{uuid.uuid4().hex[:4]}" for i in range(3)]
    for name in names:
        _vm(kube, name, "Differencing", image)
    # They wait for the cache (Reconciling, not Stalled), and the copy runs once.
    waiting = kube.wait_vm(NS, names[0], lambda o: (condition(o, "Reconciling") or {}).get("reason")
                           == "WaitingForImageCache", what="waiting for the cache")
    assert (condition(waiting, "Stalled") or {}).get("status") != "True"
    assert (condition(waiting, "Ready") or {}).get("status") == "False"
    deadline = time.monotonic() + 30
    while not _jobs_to(sim, cached) and time.monotonic() < deadline:
        time.sleep(0.1)
    # Crash as soon as the copy runs (the operator may not even have recorded it); it goes on on the host.
    operator.kill()
    jobs = _jobs_to(sim, cached)
    assert len(jobs) == 1 and jobs[0]["State"] == "Running", sim.host.copy_jobs()
    assert jobs[0]["Source"].lower() == source.lower() and not jobs[0]["Offloaded"]  # across shares: every byte
    assert not _children_of(sim, cached) and not _children_of(sim, cached + ".partial")

    # The copy took one of the host's copy slots (written before it was started), like a VM's copy.
    def cache_slots() -> list[dict[str, Any]]:
        host = _get(kube, "clusterhypervhosts", cache_host) or {}
        return [e for e in (host.get("status") or {}).get("copySlots") or [] if e["uid"].startswith("image-cache-")]

    assert len(cache_slots()) == 1 and "/" not in cache_slots()[0]["vm"]

    # A new operator adopts the running copy: its progress shows in the image's status.
    operator.start()
    copying = _image_where(kube, CLUSTER_IMAGE_PLURAL, image,
                           lambda o: any(c.get("state") == "Copying" and c.get("percent", 0) > 0
                                         for c in o["status"].get("caches") or []),
                           what="the cache copy's progress in the image's status")
    entry = copying["status"]["caches"][0]
    assert entry["path"].lower() == cached.lower() and entry["share"] == OTHER_SHARE.upper()
    assert entry["waiting"] == 3 and entry["bytesTotal"] == SIZE
    assert _jobs_to(sim, cached)[0]["State"] == "Running", "the copy finished before the restarted operator saw it"
    while _jobs_to(sim, cached)[0]["State"] == "Running":
        assert not _children_of(sim, cached + ".partial")  # nothing ever parents the partial copy
        assert not any((kube.get_vm(NS, n) or {}).get("status", {}).get("vmId") for n in names)
        time.sleep(0.2)
    vms = [kube.wait_phase(NS, name, "Provisioned", timeout=120) for name in names]
    assert len(_jobs_to(sim, cached)) == 1, "a second copy of the same cache"
    for vm in vms:
        assert vm["status"]["image"]["base"].lower() == cached.lower()
        drive = hostview.drive_paths(sim, vm["status"]["vmId"])[0]
        assert str(hostview.vhd(sim, drive).get("ParentPath") or "").lower() == cached.lower()
    assert hostview.vhd(sim, cached)["DiskIdentifier"] == hostview.vhd(sim, source)["DiskIdentifier"]
    assert not cache_slots()  # released once the copy is whole
    ready = _image_where(kube, CLUSTER_IMAGE_PLURAL, image,
                         lambda o: any(c.get("state") == "Ready" and c.get("dependents") == 3
                                       for c in o["status"].get("caches") or []), what="cache Ready with 3")
    assert sorted(ready["status"]["caches"][0]["dependentVMs"]) == sorted(f"{NS}/{n}" for n in names)

    # Quick copies from the nearest cached copy: its checkpoint sits beside it, its copy is share-local.
    quick = f"quick-{uuid.uuid4().hex[:4]}"
    _vm(kube, quick, "Quick", image)
    done = kube.wait_vm(NS, quick, lambda o: (o.get("status") or {}).get("phase") == "CopyingBase"
                        and (o.get("status") or {}).get("copy", {}).get("processId"), what="Quick copying")
    assert done["status"]["image"]["base"].lower() == cached.lower()
    quick_jobs = [j for j in sim.host.copy_jobs() if j["Destination"].lower().startswith(OTHER_VMS.lower() + "\\quick")]
    assert quick_jobs and all(j["Source"].lower() == cached.lower() and j["Offloaded"] for j in quick_jobs)
    assert _children_of(sim, cached) and not [p for p in _children_of(sim, source) if "quick" in p.lower()]

    # A VM on another host that sees the image's file: the image reports that host's facts too.
    near = f"near-{uuid.uuid4().hex[:4]}"
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.VM_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": near, "namespace": NS},
        "spec": {"hostRef": {"name": "hv01"}, "imageRef": {"kind": "ClusterVirtualMachineImage", "name": image},
                 "strategy": "Differencing", "memory": "1Gi"}})
    near_vm = kube.wait_phase(NS, near, "Provisioned")
    assert near_vm["status"]["image"]["base"].lower() == source.lower()  # same share as the image: no cache
    seen = _image_where(kube, CLUSTER_IMAGE_PLURAL, image,
                        lambda o: any(h.get("host") == f"{NS}/hv01" for h in o["status"].get("hosts") or []),
                        what="facts through hv01")
    through = next(h for h in seen["status"]["hosts"] if h["host"] == f"{NS}/hv01")
    assert through["sameFile"] is True and through["diskIdentifier"] == hostview.vhd(sim, source)["DiskIdentifier"]
    kube.delete_vm(NS, near)
    kube.wait_gone(NS, near)

    # Metrics from the operator's /metrics endpoint.
    labels = {"kind": "ClusterVirtualMachineImage", "namespace": "", "image": image}
    deadline = time.monotonic() + 20
    while True:
        text = operator.metrics_text()
        size = _metric(text, "hyperv_operator_image_cache_bytes", **labels, share=OTHER_SHARE.upper())
        if size == SIZE or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert size == SIZE
    assert (_metric(text, "hyperv_operator_image_cache_hits_total", **labels) or 0) >= 1  # the Quick VM
    assert (_metric(text, "hyperv_operator_images", kind="ClusterVirtualMachineImage") or 0) >= 1
    assert _metric(text, "hyperv_operator_image_dependents", **labels, generation="1") is not None

    # Reference counting: the cache stays while any VM chains to it, and goes with the last one.
    for name in [quick, *names[:-1]]:
        kube.delete_vm(NS, name)
        kube.wait_gone(NS, name)
    deadline = time.monotonic() + 8  # well past the collection grace
    while time.monotonic() < deadline:
        assert cached.lower() in {p.lower() for p in sim.host.files()}, "collected while a child still chains to it"
        time.sleep(0.2)
    kube.delete_vm(NS, names[-1])
    while kube.get_vm(NS, names[-1]) is not None:
        assert cached.lower() in {p.lower() for p in sim.host.files()}, "collected before the last child was gone"
        time.sleep(0.1)
    _image_where(kube, CLUSTER_IMAGE_PLURAL, image,
                 lambda o: any(c.get("state") == "Collected" for c in o["status"].get("caches") or []),
                 what="cache collected")
    assert cached.lower() not in {p.lower() for p in sim.host.files()}
    assert source.lower() in {p.lower() for p in sim.host.files()}  # the image's own file stays
    assert len(_jobs_to(sim, cached)) == 1
    kube.objects.delete_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, image)
    deadline = time.monotonic() + 30
    while _get(kube, CLUSTER_IMAGE_PLURAL, image) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _get(kube, CLUSTER_IMAGE_PLURAL, image) is None


def test_deleting_the_image_removes_its_cached_copies(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, cache_host: str,
) -> None:
    image = f"gone-{uuid.uuid4().hex[:6]}"
    source = IMAGES + f"\\{image}.VHDX"
    sim.host.add_base_disk(source, 2 * 10**9)
    kube.objects.create_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": "ClusterVirtualMachineImage", "metadata": {"name": image},
        "spec": {"hostRef": {"name": cache_host}, "source": {"path": source}, "namespaceSelector": {}}})
    _image_where(kube, CLUSTER_IMAGE_PLURAL, image, _ready, what="Ready")
    cached = f"{OTHER_SHARE}\\ImageCache\\cluster.{image}\\g1\\{image}.VHDX"
    name = f"far-{uuid.uuid4().hex[:4]}"
    _vm(kube, name, "Differencing", image)
    vm = kube.wait_phase(NS, name, "Provisioned", timeout=120)
    assert vm["status"]["image"]["base"].lower() == cached.lower()
    labels = {"kind": "ClusterVirtualMachineImage", "namespace": "", "image": image}
    text = running_operator.metrics_text()
    assert _metric(text, "hyperv_operator_image_cache_misses_total", **labels) == 1  # it had to wait for the copy
    assert (_metric(text, "hyperv_operator_image_cache_copies_total", kind="ClusterVirtualMachineImage") or 0) >= 1
    # The image is held while the VM chains to its cached copy...
    kube.objects.delete_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, image)
    time.sleep(2)
    assert _get(kube, CLUSTER_IMAGE_PLURAL, image) is not None
    assert cached.lower() in {p.lower() for p in sim.host.files()}
    # ... and goes with its cached copy once the VM is gone; the image's own file stays.
    kube.delete_vm(NS, name)
    deadline = time.monotonic() + 60
    while _get(kube, CLUSTER_IMAGE_PLURAL, image) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _get(kube, CLUSTER_IMAGE_PLURAL, image) is None
    left = [p for p in sim.host.files() if f"\\imagecache\\cluster.{image}\\".lower() in p.lower()]
    assert not left, left
    assert f"{OTHER_SHARE}\\ImageCache\\cluster.{image}\\g1".lower() not in {f.lower() for f in sim.host.folders()}
    assert source.lower() in {p.lower() for p in sim.host.files()}



READ_ONLY_BASES_HOST = "gold-host"


@pytest.fixture(scope="module")
def read_only_bases_host(sim: SimulatedHyperV, control_plane: ControlPlane, cache_host: str) -> str:
    """Bases are read from the first share, which this host never writes: VMs (and so the cache, and any
    Quick checkpoint) only on the second share. Same machine and credentials as the cache host."""
    apply_objects(control_plane, [
        {"apiVersion": api.API_VERSION, "kind": "ClusterHyperVHost", "metadata": {"name": READ_ONLY_BASES_HOST},
         "spec": {"address": "127.0.0.1", "port": sim.port, "transport": "https", "auth": "basic",
                  "credentialsSecretRef": {"name": f"{CACHE_HOST}-credentials"},
                  "caBundleSecretRef": {"name": f"{CACHE_HOST}-ca"}, "maxConcurrentCopies": 4,
                  "defaultVmPath": OTHER_VMS, "namespaceSelector": {"matchLabels": {LABEL: "true"}},
                  "storage": {"baseRoots": [SHARE], "vmRoots": [OTHER_SHARE]}}},
    ])
    return READ_ONLY_BASES_HOST


def test_a_quick_vm_whose_images_folder_is_read_only_runs_on_its_shares_cached_copy(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, cache_host: str, read_only_bases_host: str,
) -> None:
    image = f"ro-{uuid.uuid4().hex[:6]}"
    source = IMAGES + f"\\{image}.VHDX"
    sim.host.add_base_disk(source, 2 * 10**9)
    kube.objects.create_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": "ClusterVirtualMachineImage", "metadata": {"name": image},
        "spec": {"hostRef": {"name": cache_host}, "source": {"path": source}, "namespaceSelector": {}}})
    _image_where(kube, CLUSTER_IMAGE_PLURAL, image, _ready, what="Ready")
    cached = f"{OTHER_SHARE}\\ImageCache\\cluster.{image}\\g1\\{image}.VHDX"

    def create(name: str, strategy: str) -> None:
        _vm(kube, name, strategy, image, read_only_bases_host)

    def beside_source() -> list[str]:
        folder = IMAGES.lower() + "\\"
        return [p for p in sim.host.files() if p.lower().startswith(folder) and p.lower() != source.lower()
                and image.lower() in p.lower()]

    # No cached copy on its share yet: Quick would checkpoint beside the image's file, in a root this host
    # may not write. Refused (Stalled), and nothing is recorded or made on the host.
    quick = f"quick-{uuid.uuid4().hex[:4]}"
    create(quick, "Quick")
    refused = kube.wait_vm(NS, quick, lambda o: (condition(o, "Stalled") or {}).get("reason")
                           == "QuickCheckpointOutsideAllowedRoots", what="Quick refused beside the image's file")
    assert not refused["status"].get("vmId") and not refused["status"]["image"].get("base")
    assert cached in (condition(refused, "Stalled") or {}).get("message", "")
    # A Differencing VM on that share has the cached copy made ...
    diff = f"diff-{uuid.uuid4().hex[:4]}"
    create(diff, "Differencing")
    assert kube.wait_phase(NS, diff, "Provisioned", timeout=120)["status"]["image"]["base"].lower() == cached.lower()
    # ... and the Quick VM runs on it: its checkpoint and its copy stay inside the host's VM root.
    done = kube.wait_phase(NS, quick, "Provisioned", timeout=120)
    assert done["status"]["image"]["base"].lower() == cached.lower()
    mine = f"{OTHER_VMS}\\{quick}-".lower()
    quick_jobs = [j for j in sim.host.copy_jobs() if j["Destination"].lower().startswith(mine)]
    assert quick_jobs and all(j["Source"].lower() == cached.lower() for j in quick_jobs)
    assert not beside_source() and not _children_of(sim, source)
    for name in (quick, diff):
        kube.delete_vm(NS, name)
        kube.wait_gone(NS, name)
    kube.objects.delete_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, image)


def test_hosts_whose_first_root_on_a_share_differs_share_one_cached_copy(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane,
    cache_host: str,
) -> None:
    # A third host on the same machine: its first root on the second share is a folder below the share's
    # root, which it lists too (the cache host lists only the share's root there).
    team_host = "team-host"
    apply_objects(control_plane, [
        {"apiVersion": api.API_VERSION, "kind": "ClusterHyperVHost", "metadata": {"name": team_host},
         "spec": {"address": "127.0.0.1", "port": sim.port, "transport": "https", "auth": "basic",
                  "credentialsSecretRef": {"name": f"{CACHE_HOST}-credentials"},
                  "caBundleSecretRef": {"name": f"{CACHE_HOST}-ca"}, "maxConcurrentCopies": 4,
                  "defaultVmPath": OTHER_VMS, "namespaceSelector": {"matchLabels": {LABEL: "true"}},
                  "storage": {"baseRoots": [SHARE], "vmRoots": [OTHER_VMS, OTHER_SHARE]}}},
    ])
    image = f"one-{uuid.uuid4().hex[:6]}"
    source = IMAGES + f"\\{image}.VHDX"
    sim.host.add_base_disk(source, 2 * 10**9)
    kube.objects.create_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": "ClusterVirtualMachineImage", "metadata": {"name": image},
        "spec": {"hostRef": {"name": cache_host}, "source": {"path": source}, "namespaceSelector": {}}})
    _image_where(kube, CLUSTER_IMAGE_PLURAL, image, _ready, what="Ready")
    cached = f"{OTHER_SHARE}\\ImageCache\\cluster.{image}\\g1\\{image}.VHDX"
    names = [f"a-{uuid.uuid4().hex[:4]}", f"b-{uuid.uuid4().hex[:4]}"]
    for name, host in zip(names, (cache_host, team_host), strict=True):
        _vm(kube, name, "Differencing", image, host)
    vms = [kube.wait_phase(NS, name, "Provisioned", timeout=120) for name in names]
    assert [vm["status"]["image"]["base"].lower() for vm in vms] == [cached.lower()] * 2
    copies = [j for j in sim.host.copy_jobs() if f"\\imagecache\\cluster.{image}\\".lower() in j["Destination"].lower()]
    assert len(copies) == 1 and copies[0]["Destination"].lower() == cached.lower(), copies
    for name in names:
        kube.delete_vm(NS, name)
        kube.wait_gone(NS, name)
    kube.objects.delete_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, image)
