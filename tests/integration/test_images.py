"""Base images as resources: generations, dependents, protection (real API server, operator process,
simulated host over WinRM).

One ClusterVirtualMachineImage (retention Delete: the operator owns its files) is rolled to a new
generation while a Differencing VM and a Quick VM (still copying) run on the old file; a namespaced
VirtualMachineImage has its file written out of band under a Differencing child.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import kubernetes
import pytest

from hyperv_operator import api
from hyperv_operator.envtest.controlplane import OPERATOR_NAMESPACE, ControlPlane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SHARE, SimulatedHyperV, apply_objects, host_objects
from tests.integration import hostview
from tests.integration.kube import Kube, condition

pytestmark = pytest.mark.integration

NS = "hv-images"
LABEL = "hyperv-operator.io/images-test"
CLUSTER_HOST = "img-host"
IMAGES = SHARE + "\\images"
IMAGE_PLURAL = "virtualmachineimages"
CLUSTER_IMAGE_PLURAL = "clustervirtualmachineimages"
BIG = 30 * 10**9
"""A 30 GB base copies in ~400 s of host time (~7 s of wall time at x60): Quick is still on the old file
when the image rolls."""


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def _name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


@pytest.fixture(scope="module")
def image_env(sim: SimulatedHyperV, control_plane: ControlPlane, operator: OperatorProcess) -> Iterator[None]:
    apply_objects(control_plane, [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS, "labels": {LABEL: "true"}}},
        *host_objects(NS, "hv01", sim),
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"{CLUSTER_HOST}-credentials", "namespace": OPERATOR_NAMESPACE},
         "type": "Opaque", "data": {"username": _b64(sim.username), "password": _b64(sim.password)}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"{CLUSTER_HOST}-ca", "namespace": OPERATOR_NAMESPACE},
         "type": "Opaque", "data": {"ca.crt": _b64(sim.ca_pem)}},
        {"apiVersion": api.API_VERSION, "kind": "ClusterHyperVHost", "metadata": {"name": CLUSTER_HOST},
         "spec": {"address": "127.0.0.1", "port": sim.port, "transport": "https", "auth": "basic",
                  "credentialsSecretRef": {"name": f"{CLUSTER_HOST}-credentials"},
                  "caBundleSecretRef": {"name": f"{CLUSTER_HOST}-ca"},
                  "defaultVmPath": SHARE + "\\VMs", "namespaceSelector": {"matchLabels": {LABEL: "true"}},
                  "storage": {"baseRoots": [SHARE], "vmRoots": [SHARE]}}},
    ])
    yield


def _get(kube: Kube, plural: str, name: str, namespace: str | None = None) -> dict[str, Any] | None:
    try:
        if namespace is None:
            return dict(kube.objects.get_cluster_custom_object(api.GROUP, api.VERSION, plural, name))
        return dict(kube.objects.get_namespaced_custom_object(api.GROUP, api.VERSION, namespace, plural, name))
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise


def _wait(what: str, probe: Callable[[], Any], timeout: float = 60) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _image_where(kube: Kube, plural: str, name: str, pred: Callable[[dict[str, Any]], bool],
                 namespace: str | None = None, timeout: float = 60, what: str = "") -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        obj = _get(kube, plural, name, namespace)
        return obj if obj is not None and pred(obj) else None
    try:
        return _wait(what or name, probe, timeout)  # type: ignore[no-any-return]
    except AssertionError as exc:
        last = (_get(kube, plural, name, namespace) or {}).get("status")
        raise AssertionError(f"{name}: {what}; last: {last}") from exc


def _generation(obj: dict[str, Any], gen: int) -> dict[str, Any]:
    return next(g for g in obj["status"]["generations"] if g["generation"] == gen)


def _ready(obj: dict[str, Any]) -> bool:
    return (condition(obj, "Ready") or {}).get("status") == "True"


def _events(kube: Kube, name: str, kind: str) -> list[Any]:
    events = kube.core.list_event_for_all_namespaces(field_selector=f"involvedObject.name={name}")
    return [e for e in events.items if e.involved_object.kind == kind]


def _vm(kube: Kube, name: str, strategy: str, image: str, kind: str = "ClusterVirtualMachineImage",
        host: dict[str, str] | None = None) -> None:
    body = {"apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": name, "namespace": NS},
            "spec": {"hostRef": host or {"kind": "ClusterHyperVHost", "name": CLUSTER_HOST},
                     "imageRef": {"kind": kind, "name": image}, "strategy": strategy, "memory": "1Gi"}}
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.VM_PLURAL, body)


def _parent_of(sim: SimulatedHyperV, vm: dict[str, Any]) -> str:
    drive = hostview.drive_paths(sim, vm["status"]["vmId"])[0]
    return str(hostview.vhd(sim, drive).get("ParentPath") or "")


def test_exactly_one_of_image_ref_and_base_vhd(kube: Kube, image_env: None) -> None:
    for spec in ({}, {"imageRef": {"name": "x"}, "baseVhd": SHARE + "\\BASE.VHDX"}):
        body = {"apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": _name("cel"), "namespace": NS},
                "spec": {"hostRef": {"name": "hv01"}, "strategy": "Differencing", **spec}}
        with pytest.raises(kubernetes.client.ApiException) as err:
            kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.VM_PLURAL, body)
        assert err.value.status == 422 and "exactly one of imageRef" in str(err.value.body)


def test_roll_a_generation_under_differencing_and_quick_children(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, control_plane: ControlPlane,
    image_env: None,
) -> None:
    image = _name("win")
    v1, v2 = IMAGES + f"\\{image}-V1.VHDX", IMAGES + f"\\{image}-V2.VHDX"
    sim.host.add_base_disk(v1, BIG, acl_read_only=False)
    sim.host.add_base_disk(v2, 2 * 10**9, acl_read_only=False)
    kube.objects.create_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": "ClusterVirtualMachineImage", "metadata": {"name": image},
        "spec": {"hostRef": {"name": CLUSTER_HOST}, "source": {"path": v1}, "retention": "Delete",
                 "namespaceSelector": {"matchLabels": {LABEL: "true"}}}})
    first = _image_where(kube, CLUSTER_IMAGE_PLURAL, image, _ready, what="Ready")
    assert first["status"]["currentGeneration"] == 1
    host_facts = first["status"]["hosts"][0]
    assert host_facts["diskIdentifier"] == hostview.vhd(sim, v1)["DiskIdentifier"]
    assert host_facts["vhdType"] == "Dynamic" and host_facts["format"] == "VHDX" and host_facts["fileSize"] == BIG

    diff_old, quick_old, diff_new = _name("diff-old"), _name("quick-old"), _name("diff-new")
    _vm(kube, diff_old, "Differencing", image)
    _vm(kube, quick_old, "Quick", image)
    old = kube.wait_phase(NS, diff_old, "Provisioned")
    assert old["status"]["image"]["generation"] == 1 and old["status"]["image"]["path"] == v1
    assert _parent_of(sim, old).lower() == v1.lower()
    quick = kube.wait_vm(NS, quick_old, lambda o: (o.get("status") or {}).get("phase") == "CopyingBase",
                         what="Quick copying the old base")
    assert quick["status"]["image"]["generation"] == 1

    held = _image_where(kube, CLUSTER_IMAGE_PLURAL, image, lambda o: o["status"].get("dependents") == 2,
                        what="two dependents")
    assert sorted(_generation(held, 1)["dependentVMs"]) == sorted([f"{NS}/{diff_old}", f"{NS}/{quick_old}"])

    # Roll: the source names another file.
    kube.objects.patch_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, image,
                                             {"spec": {"source": {"path": v2}}})
    rolled = _image_where(kube, CLUSTER_IMAGE_PLURAL, image,
                          lambda o: o["status"].get("currentGeneration") == 2 and _ready(o), what="generation 2")
    assert _generation(rolled, 1)["dependents"] >= 1 and not _generation(rolled, 1).get("collected")
    _vm(kube, diff_new, "Differencing", image)
    new = kube.wait_phase(NS, diff_new, "Provisioned")
    assert new["status"]["image"]["generation"] == 2 and _parent_of(sim, new).lower() == v2.lower()
    # kubectl get shows the generations with their dependent counts (the image's status follows its VMs
    # on the image timer: wait until it counts the new VM)
    _image_where(kube, CLUSTER_IMAGE_PLURAL, image, lambda o: _generation(o, 2).get("dependents") == 1,
                 what="the new VM counted on generation 2")
    table = control_plane.kubectl("get", "hvcimg", image).stdout
    assert "g2*:1" in table and "g1:" in table, table

    # The Quick VM finishes on its pinned file; then only the Differencing child holds generation 1.
    merged = kube.wait_phase(NS, quick_old, "Provisioned", timeout=120)
    assert merged["status"]["image"]["generation"] == 1
    one = _image_where(kube, CLUSTER_IMAGE_PLURAL, image, lambda o: _generation(o, 1)["dependents"] == 1,
                       what="Quick released generation 1")
    assert _generation(one, 1)["dependentVMs"] == [f"{NS}/{diff_old}"]
    assert v1.lower() in {p.lower() for p in sim.host.files()}
    # Not a moment earlier: while the Differencing child exists, its base stays (checked over time).
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        assert v1.lower() in {p.lower() for p in sim.host.files()}
        time.sleep(0.2)
    assert kube.get_vm(NS, diff_old) is not None
    kube.delete_vm(NS, diff_old)
    while kube.get_vm(NS, diff_old) is not None:
        assert v1.lower() in {p.lower() for p in sim.host.files()}, "collected while its child still existed"
        time.sleep(0.1)
    collected = _image_where(kube, CLUSTER_IMAGE_PLURAL, image, lambda o: bool(_generation(o, 1).get("collected")),
                             what="generation 1 collected")
    files = {p.lower() for p in sim.host.files()}
    assert v1.lower() not in files and v2.lower() in files  # never the current one
    assert "g1:0(collected)" in collected["status"]["generationsSummary"]
    assert "GenerationCollected" in {e.reason for e in _events(kube, image, "ClusterVirtualMachineImage")}

    # Deleting the image while diff-new chains to generation 2: held, and the event names the VM.
    kube.objects.delete_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, image)
    _wait("InUse event", lambda: [e for e in _events(kube, image, "ClusterVirtualMachineImage")
                                  if e.reason == "InUse" and f"{NS}/{diff_new}" in e.message])
    time.sleep(2)
    assert _get(kube, CLUSTER_IMAGE_PLURAL, image) is not None
    # A new VM is not made from an image being deleted.
    refused = _name("late")
    _vm(kube, refused, "Differencing", image)
    late = kube.wait_vm(NS, refused, lambda o: (condition(o, "Stalled") or {}).get("status") == "True", what="stall")
    assert condition(late, "Stalled")["reason"] == "ImageDeleting"  # type: ignore[index]
    assert not (late.get("status") or {}).get("vmId")
    kube.delete_vm(NS, refused)
    kube.delete_vm(NS, diff_new)
    kube.delete_vm(NS, quick_old)
    _wait("image released", lambda: _get(kube, CLUSTER_IMAGE_PLURAL, image) is None)
    assert v2.lower() in {p.lower() for p in sim.host.files()}  # the image's own current file is never removed


def test_out_of_band_write_to_a_pinned_base_stalls_the_image_and_its_children(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, image_env: None,
) -> None:
    image = _name("gold")
    base = IMAGES + f"\\{image}.VHDX"
    sim.host.add_base_disk(base, 2 * 10**9)
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, IMAGE_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": "VirtualMachineImage", "metadata": {"name": image, "namespace": NS},
        "spec": {"hostRef": {"name": "hv01"}, "source": {"path": base}}})
    _image_where(kube, IMAGE_PLURAL, image, _ready, namespace=NS, what="Ready")
    child = _name("child")
    _vm(kube, child, "Differencing", image, kind="VirtualMachineImage", host={"name": "hv01"})
    vm = kube.wait_phase(NS, child, "Provisioned")
    identity = vm["status"]["image"]["identity"]
    assert identity.startswith(hostview.vhd(sim, base)["DiskIdentifier"])

    sim.host.write_disk_out_of_band(base, 3, b"patched in place")
    stalled = _image_where(kube, IMAGE_PLURAL, image,
                           lambda o: (condition(o, "Stalled") or {}).get("reason") == "BaseIdentityChanged",
                           namespace=NS, what="image Stalled")
    assert f"{NS}/{child}" in condition(stalled, "Stalled")["message"]  # type: ignore[index]
    assert not _ready(stalled)
    hit = kube.wait_vm(NS, child, lambda o: (condition(o, "Stalled") or {}).get("reason") == "BaseIdentityChanged",
                       what="VM Stalled")
    assert "changed out of band" in condition(hit, "Stalled")["message"]  # type: ignore[index]
    assert condition(hit, "Ready")["status"] == "False"  # type: ignore[index]
    # Nothing new is created on it.
    fresh = _name("fresh")
    _vm(kube, fresh, "Differencing", image, kind="VirtualMachineImage", host={"name": "hv01"})
    refused = kube.wait_vm(NS, fresh, lambda o: (condition(o, "Stalled") or {}).get("reason") == "BaseIdentityChanged",
                           what="new VM refused")
    assert not (refused.get("status") or {}).get("vmId") and not (refused.get("status") or {}).get("image")
    time.sleep(1.5)
    children = [p for p, d in sim.host.files().items() if str(d.get("ParentPath") or "").lower() == base.lower()]
    assert len(children) == 1, children  # only the first child's disk
    # Deletion still cleans up on the pinned path.
    kube.delete_vm(NS, fresh)
    kube.delete_vm(NS, child)
    kube.wait_gone(NS, child)
    assert not [p for p, d in sim.host.files().items() if str(d.get("ParentPath") or "").lower() == base.lower()]
    kube.objects.delete_namespaced_custom_object(api.GROUP, api.VERSION, NS, IMAGE_PLURAL, image)
    _wait("image gone", lambda: _get(kube, IMAGE_PLURAL, image, NS) is None)


def test_image_ref_is_immutable_and_cannot_replace_base_vhd(kube: Kube, image_env: None) -> None:
    def create(name: str, **spec: Any) -> None:
        body = {"apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": name, "namespace": NS},
                "spec": {"hostRef": {"name": "no-such-host"}, "strategy": "Differencing", **spec}}
        kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.VM_PLURAL, body)

    raw, ref = _name("raw"), _name("ref")
    create(raw, baseVhd=SHARE + "\\BASE.VHDX")
    create(ref, imageRef={"name": "one"})
    for name, patch, message in (
        (raw, {"spec": {"imageRef": {"name": "one"}}}, "exactly one of imageRef"),
        (ref, {"spec": {"imageRef": {"name": "two"}}}, "imageRef is immutable"),
        (ref, {"spec": {"imageRef": {"kind": "ClusterVirtualMachineImage"}}}, "imageRef is immutable"),
    ):
        with pytest.raises(kubernetes.client.ApiException) as err:
            kube.patch_vm(NS, name, patch)
        assert err.value.status == 422 and message in str(err.value.body), err.value.body
    for name in (raw, ref):
        kube.delete_vm(NS, name)
        kube.wait_gone(NS, name)


def test_an_image_outside_its_hosts_base_roots_is_stalled_and_the_host_never_sees_it(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, image_env: None,
    command_hook: hostview.CommandHook,
) -> None:
    seen: list[str] = []
    command_hook.set(lambda command, params, when: seen.append(f"{command} {params}"))
    image = _name("sys")
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, IMAGE_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": "VirtualMachineImage", "metadata": {"name": image, "namespace": NS},
        "spec": {"hostRef": {"name": "hv01"}, "source": {"path": "C:\\Windows\\System32\\secret.vhdx"}}})
    stalled = _image_where(kube, IMAGE_PLURAL, image,
                           lambda o: (condition(o, "Stalled") or {}).get("reason") == "SourceOutsideAllowedRoots",
                           namespace=NS, what="Stalled")
    assert "storage.baseRoots" in condition(stalled, "Stalled")["message"]  # type: ignore[index]
    child = _name("sysvm")
    _vm(kube, child, "Differencing", image, kind="VirtualMachineImage", host={"name": "hv01"})
    refused = kube.wait_vm(NS, child, lambda o: (condition(o, "Stalled") or {}).get("status") == "True",
                           what="VM refused")
    assert condition(refused, "Stalled")["reason"] == "SourceOutsideAllowedRoots"  # type: ignore[index]
    assert not (refused.get("status") or {}).get("image")  # nothing pinned
    time.sleep(2)  # a few image timer rounds
    assert not [c for c in seen if "system32" in c.lower()]
    kube.delete_vm(NS, child)
    kube.wait_gone(NS, child)
    kube.objects.delete_namespaced_custom_object(api.GROUP, api.VERSION, NS, IMAGE_PLURAL, image)
    _wait("image gone", lambda: _get(kube, IMAGE_PLURAL, image, NS) is None)


def test_a_retained_vms_disk_keeps_its_base_after_the_vm_object_is_gone(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess, image_env: None,
) -> None:
    image = _name("keep")
    v1, v2 = IMAGES + f"\\{image}-V1.VHDX", IMAGES + f"\\{image}-V2.VHDX"
    sim.host.add_base_disk(v1, 2 * 10**9, acl_read_only=False)
    sim.host.add_base_disk(v2, 2 * 10**9, acl_read_only=False)
    kube.objects.create_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": "ClusterVirtualMachineImage", "metadata": {"name": image},
        "spec": {"hostRef": {"name": CLUSTER_HOST}, "source": {"path": v1}, "retention": "Delete",
                 "namespaceSelector": {}}})
    _image_where(kube, CLUSTER_IMAGE_PLURAL, image, _ready, what="Ready")
    kept = _name("kept")
    body = {"apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": kept, "namespace": NS},
            "spec": {"hostRef": {"kind": "ClusterHyperVHost", "name": CLUSTER_HOST}, "deletionPolicy": "Retain",
                     "imageRef": {"kind": "ClusterVirtualMachineImage", "name": image}, "strategy": "Differencing"}}
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NS, api.VM_PLURAL, body)
    vm_id = kube.wait_phase(NS, kept, "Provisioned")["status"]["vmId"]
    kube.objects.patch_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, image,
                                             {"spec": {"source": {"path": v2}}})
    _image_where(kube, CLUSTER_IMAGE_PLURAL, image, lambda o: o["status"].get("currentGeneration") == 2,
                 what="generation 2")
    kube.delete_vm(NS, kept)
    kube.wait_gone(NS, kept)
    # The administrator removes the retained VM from Hyper-V but keeps its disk (a chain on the old base):
    # nothing on the host holds the base open any more.
    sim.host.delete_vm_out_of_band(vm_id)
    held = _image_where(kube, CLUSTER_IMAGE_PLURAL, image,
                        lambda o: _generation(o, 1)["dependentVMs"] == [f"{NS}/{kept} (retained)"], what="retained")
    assert held["status"]["retained"][f"{NS}/{kept}"]["path"] == v1
    time.sleep(8)  # well past the collection grace
    assert v1.lower() in {p.lower() for p in sim.host.files()}
    assert not _generation(_get(kube, CLUSTER_IMAGE_PLURAL, image) or {}, 1).get("collected")
    # The administrator releases it (after dealing with the retained disk): now it is collected.
    kube.objects.patch_cluster_custom_object_status(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, image,
                                                    {"status": {"retained": {f"{NS}/{kept}": None}}})
    _image_where(kube, CLUSTER_IMAGE_PLURAL, image, lambda o: bool(_generation(o, 1).get("collected")),
                 what="collected after release")
    assert v1.lower() not in {p.lower() for p in sim.host.files()}
    kube.objects.delete_cluster_custom_object(api.GROUP, api.VERSION, CLUSTER_IMAGE_PLURAL, image)
    _wait("image gone", lambda: _get(kube, CLUSTER_IMAGE_PLURAL, image) is None)
