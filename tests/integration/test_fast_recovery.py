"""Fast recovery (issue 10): a VM waiting for something in the cluster is re-checked as soon as that
thing is created or edited, not at its next backoff; the user annotations (retry) act at once.

The operator here waits at least 120 s between checks of a waiting VM and checks drift every 600 s,
so every "within seconds" below can only come from the wake-up, never from a backoff or timer."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hyperv_operator import api
from hyperv_operator.envtest.controlplane import OPERATOR_NAMESPACE, ControlPlane
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SHARE, SimulatedHyperV, apply_objects, host_objects
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

LONG_WAIT = 120.0
"""--wait-retry-min: the shortest wait between two checks of a waiting VM."""
SOON = 25.0
"""What "at once" may take on a busy 2-core machine: a fraction of LONG_WAIT."""
TOUCH = "hyperv-operator.io/touch-dummy"


@pytest.fixture(scope="module")
def patient(operator: OperatorProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    """The shared operator makes way for one with long backoffs, drift checks and probes."""
    operator.stop()
    process = OperatorProcess(operator.kubeconfig, tmp_path_factory.mktemp("patient") / "operator.log",
                              drift_interval=600.0, host_probe_interval=600.0, env=operator.env,
                              extra_args=("--wait-retry-min", str(LONG_WAIT), "--wait-retry-max", str(LONG_WAIT)))
    process.start()
    try:
        yield process
    finally:
        process.stop()
        print(f"\noperator log (long backoffs): {process.log_path}")
        operator.start()


def _waiting(kube: Kube, name: str, reason: str) -> dict[str, Any]:
    """Wait until the VM is stalled for `reason` with its next check at least LONG_WAIT/2 away."""
    def stalled(obj: dict[str, Any]) -> bool:
        c = condition(obj, "Stalled") or {}
        return c.get("status") == "True" and c.get("reason") == reason and bool((obj.get("status") or {}).get("retry"))
    return kube.wait_vm(NAMESPACE, name, stalled, timeout=60, what=f"Stalled {reason}")


def _provisioned_within(kube: Kube, name: str, seconds: float) -> float:
    started = time.monotonic()
    kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=seconds)
    return time.monotonic() - started


def test_a_vm_waiting_for_its_host_goes_on_as_soon_as_the_host_is_created(
    control_plane: ControlPlane, sim: SimulatedHyperV, kube: Kube, patient: OperatorProcess,
) -> None:
    tag = uuid.uuid4().hex[:5]
    host, other_host = f"hv-late-{tag}", f"hv-never-{tag}"
    name, bystander = f"early-{tag}", f"bystander-{tag}"
    kube.create_vm(NAMESPACE, name, "Differencing", host=host)
    kube.create_vm(NAMESPACE, bystander, "Differencing", host=other_host)
    waiting = _waiting(kube, name, "HostNotFound")
    before = _waiting(kube, bystander, "HostNotFound")
    assert waiting["status"]["retry"]["nextRetryAt"]  # at least LONG_WAIT away

    apply_objects(control_plane, host_objects(NAMESPACE, host, sim))
    took = _provisioned_within(kube, name, SOON)
    print(f"\nProvisioned {took:.1f}s after its host was created (backoff {LONG_WAIT:.0f}s)")

    # A VM waiting for another host is left alone: not touched, not re-checked.
    after = kube.get_vm(NAMESPACE, bystander) or {}
    assert TOUCH not in (after["metadata"].get("annotations") or {})
    assert after["status"]["retry"] == before["status"]["retry"]


def test_a_vm_waiting_for_its_credentials_goes_on_as_soon_as_the_secret_is_created(
    control_plane: ControlPlane, sim: SimulatedHyperV, kube: Kube, patient: OperatorProcess,
) -> None:
    tag = uuid.uuid4().hex[:5]
    host, name = f"hv-nocreds-{tag}", f"nocreds-{tag}"
    credentials, ca, host_object = host_objects(NAMESPACE, host, sim)
    apply_objects(control_plane, [ca, host_object])  # its credentials Secret does not exist yet
    kube.create_vm(NAMESPACE, name, "Differencing", host=host)
    waiting = _waiting(kube, name, "HostMisconfigured")
    assert "credentials" in waiting["status"]["message"] or host in waiting["status"]["message"]

    apply_objects(control_plane, [credentials])
    took = _provisioned_within(kube, name, SOON)
    print(f"\nProvisioned {took:.1f}s after its Secret was created (backoff {LONG_WAIT:.0f}s)")


def test_the_retry_annotation_on_a_stalled_vm_acts_at_once(
    sim: SimulatedHyperV, kube: Kube, patient: OperatorProcess,
) -> None:
    """The annotation shares kopf's storage prefix; kopf left it out of the object's essence, so adding
    it was no change and it was only seen by the next drift check (600 s here)."""
    name = f"again-{uuid.uuid4().hex[:5]}"
    late = f"\\\\FS\\VMSHARE\\AGAIN-{name.upper()}.VHDX"
    kube.create_vm(NAMESPACE, name, "Differencing", baseVhd=late)
    failed = kube.wait_phase(NAMESPACE, name, "Failed")
    assert (condition(failed, "Stalled") or {}).get("reason") == "BaseDiskNotFound"
    sim.host.add_base_disk(late, 2 * 1024**3, acl_read_only=True)
    time.sleep(2)
    assert (kube.get_vm(NAMESPACE, name) or {})["status"]["phase"] == "Failed"  # nothing retries it by itself

    kube.patch_vm(NAMESPACE, name, {"metadata": {"annotations": {"hyperv-operator.io/retry": "1"}}})
    took = _provisioned_within(kube, name, SOON)
    print(f"\nProvisioned {took:.1f}s after the retry annotation (drift interval 600s)")
    vm = kube.get_vm(NAMESPACE, name) or {}
    assert vm["status"]["retryRequest"] == "1"
    assert [e for e in kube.events_for(NAMESPACE, name) if e.reason == "RetryRequested"]


def _reachable(read: Callable[[], dict[str, Any]], what: str) -> None:
    """The host's probe has said Reachable=True: its turning reachable (which wakes its waiting VMs
    too) cannot be what carries the VM on below."""
    deadline = time.monotonic() + 60
    while (condition(read(), "Reachable") or {}).get("status") != "True":
        assert time.monotonic() < deadline, f"{what} never Reachable: {read().get('status')}"
        time.sleep(0.2)


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def test_a_vm_waiting_for_its_image_goes_on_as_soon_as_the_image_is_ready(
    sim: SimulatedHyperV, kube: Kube, patient: OperatorProcess,
) -> None:
    """Waiting for a VirtualMachineImage that does not exist yet (ImageNotFound) was a fixed 10 s
    re-check; it now waits on the waits' backoff (120 s here) and goes on when the image turns Ready."""
    tag = uuid.uuid4().hex[:5]
    image, name = f"late-image-{tag}", f"imaged-{tag}"
    _reachable(lambda: kube.get_host(NAMESPACE, "hv01"), "hv01")
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, api.VM_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"hostRef": {"name": "hv01"}, "imageRef": {"kind": "VirtualMachineImage", "name": image},
                 "strategy": "Differencing", "memory": "1Gi"}})
    waiting = _waiting(kube, name, "ImageNotFound")
    assert image in waiting["status"]["message"]

    base = SHARE + f"\\IMAGE-{tag.upper()}.VHDX"
    sim.host.add_base_disk(base, 2 * 1024**3, acl_read_only=True)
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, NAMESPACE, "virtualmachineimages", {
        "apiVersion": api.API_VERSION, "kind": "VirtualMachineImage",
        "metadata": {"name": image, "namespace": NAMESPACE},
        "spec": {"hostRef": {"name": "hv01"}, "source": {"path": base}}})
    took = _provisioned_within(kube, name, SOON)
    print(f"\nProvisioned {took:.1f}s after its image was created (backoff {LONG_WAIT:.0f}s)")
    assert (kube.get_vm(NAMESPACE, name) or {})["status"]["image"]["path"].lower() == base.lower()


def test_a_vm_refused_for_its_namespace_goes_on_as_soon_as_the_namespace_is_labelled(
    control_plane: ControlPlane, sim: SimulatedHyperV, kube: Kube, patient: OperatorProcess,
) -> None:
    """A ClusterHyperVHost admits namespaces by label: labelling the VM's namespace re-checks it now."""
    tag = uuid.uuid4().hex[:5]
    namespace, host, name = f"fr-tenant-{tag}", f"fr-cluster-{tag}", f"tenant-vm-{tag}"
    label = f"hyperv-operator.io/fast-recovery-{tag}"
    apply_objects(control_plane, [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"{host}-credentials", "namespace": OPERATOR_NAMESPACE}, "type": "Opaque",
         "data": {"username": _b64(sim.username), "password": _b64(sim.password)}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{host}-ca", "namespace": OPERATOR_NAMESPACE},
         "type": "Opaque", "data": {"ca.crt": _b64(sim.ca_pem)}},
        {"apiVersion": api.API_VERSION, "kind": "ClusterHyperVHost", "metadata": {"name": host},
         "spec": {"address": "127.0.0.1", "port": sim.port, "transport": "https", "auth": "basic",
                  "credentialsSecretRef": {"name": f"{host}-credentials"}, "caBundleSecretRef": {"name": f"{host}-ca"},
                  "defaultVmPath": SHARE + "\\VMs", "namespaceSelector": {"matchLabels": {label: "true"}},
                  "storage": {"baseRoots": [SHARE], "vmRoots": [SHARE]}}},
    ])
    _reachable(lambda: dict(kube.objects.get_cluster_custom_object(api.GROUP, api.VERSION, api.CLUSTER_HOST_PLURAL,
                                                                   host)), host)
    kube.objects.create_namespaced_custom_object(api.GROUP, api.VERSION, namespace, api.VM_PLURAL, {
        "apiVersion": api.API_VERSION, "kind": api.VM_KIND, "metadata": {"name": name, "namespace": namespace},
        "spec": {"hostRef": {"kind": "ClusterHyperVHost", "name": host}, "baseVhd": SHARE + "\\BASE.VHDX",
                 "strategy": "Differencing", "memory": "1Gi"}})

    def refused(obj: dict[str, Any]) -> bool:
        c = condition(obj, "Stalled") or {}
        return c.get("reason") == "NamespaceNotAdmitted" and bool((obj.get("status") or {}).get("retry"))
    kube.wait_vm(namespace, name, refused, timeout=60, what="Stalled NamespaceNotAdmitted")

    kube.core.patch_namespace(namespace, {"metadata": {"labels": {label: "true"}}})
    started = time.monotonic()
    kube.wait_phase(namespace, name, "Provisioned", timeout=SOON)
    print(f"\nProvisioned {time.monotonic() - started:.1f}s after its namespace was labelled "
          f"(backoff {LONG_WAIT:.0f}s)")
