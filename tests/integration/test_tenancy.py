"""Many teams on one cluster: a ClusterHyperVHost shared by two tenant namespaces.

Its own control plane, simulated host and operator (the operator serves its admission webhook on
127.0.0.1; the API server calls it over HTTPS with the CA the operator generated and wrote into the
ValidatingWebhookConfiguration). Every hole is refused twice: at apply time by the webhook, and,
with the webhook configuration deleted, by the controller (Stalled with a reason). Either way the
simulated host never receives a command carrying the refused value, not even a Test-Path, and not
on a later retry. A tenant bound only to the shipped tenant roles works with VMs through the real
API server's authorization and can read no host credential.
"""

from __future__ import annotations

import base64
import json
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from hyperv_operator import api
from hyperv_operator.envtest.controlplane import (
    OPERATOR_NAMESPACE,
    TENANT_USER,
    ControlPlane,
    free_port,
    running_control_plane,
)
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import (
    SimulatedHyperV,
    apply_objects,
    install_operator_rbac,
    webhook_configuration_for_loopback,
)
from tests.integration.kube import Kube, condition

pytestmark = pytest.mark.integration

TEAM_A, TEAM_B, TEAM_C = "tenancy-a", "tenancy-b", "tenancy-c"
TENANT_LABEL = "hyperv-operator.io/tenant"
BASES, GOLD, VMS = "\\\\FS\\BASES", "\\\\FS\\GOLD", "\\\\FS\\VMS"
BASE = BASES + "\\BASE.VHDX"
DOLLAR_BASE = BASES + "\\WIN$11.VHDX"
GOLD_BASE = GOLD + "\\GOLD.VHDX"
SHARED = "shared"
RETRY_SECONDS = 10.0
"""handlers.HOST_MISSING_RETRY_SECONDS: a refused VM is re-checked (in the cluster) this often."""


@dataclass(frozen=True)
class Hole:
    id: str
    spec: dict[str, Any]
    reason: str
    refused_value: str
    """A string that must appear in no host command (compared case-insensitively)."""
    namespace: str = TEAM_A


HOLES = [
    Hole("system-file", {"baseVhd": "C:\\Windows\\System32\\x.vhdx"}, "BaseOutsideAllowedRoots", "System32"),
    Hole("attacker-smb", {"baseVhd": "\\\\attacker\\share\\base.vhdx"}, "BaseOutsideAllowedRoots", "attacker"),
    Hole("other-team-disk", {"baseVhd": VMS + "\\team-b-vm-1234\\team-b-vm.vhdx"}, "BaseOutsideAllowedRoots",
         "team-b-vm"),
    Hole("prefix-share", {"baseVhd": "\\\\FS\\BASES2\\BASE.VHDX"}, "BaseOutsideAllowedRoots", "BASES2"),
    Hole("vmpath-system", {"vmPath": "C:\\Tenant"}, "VmPathOutsideAllowedRoots", "C:\\Tenant"),
    Hole("short-name", {"baseVhd": BASES + "\\BASE~1.VHDX"}, "InvalidPath", "~1"),
    # ('..' and a name ending in a dot never get this far: the CRD's own rules refuse them.)
    Hole("quick-readonly-base", {"baseVhd": GOLD_BASE, "strategy": "Quick"}, "QuickCheckpointOutsideAllowedRoots",
         "GOLD"),
    Hole("namespace-not-admitted", {}, "NamespaceNotAdmitted", "hole-namespace-not-admitted", TEAM_C),
]


def vm_body(namespace: str, name: str, *, host: str = SHARED, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.VM_KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "hostRef": {"kind": "ClusterHyperVHost", "name": host},
            "baseVhd": BASE,
            "strategy": "Differencing",
            "memory": "512Mi",
            **spec,
        },
    }


@dataclass
class Recorder:
    """Every command the simulated host receives, with its parameters, as text."""

    commands: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, command: str, params: dict[str, Any], when: str) -> None:
        if when == "before":
            with self.lock:
                self.commands.append(f"{command} {json.dumps(params, default=str)}".lower())

    def carrying(self, value: str) -> list[str]:
        needle = json.dumps(value.lower())[1:-1]  # as it appears inside the JSON-encoded parameters
        with self.lock:
            return [c for c in self.commands if needle in c]


@dataclass
class Tenancy:
    plane: ControlPlane
    sim: SimulatedHyperV
    operator: OperatorProcess
    admin: Kube
    tenant: Kube
    recorder: Recorder
    webhook_port: int

    saved_webhook: dict[str, Any] | None = None

    def install_webhook(self) -> None:
        apply_objects(self.plane, [webhook_configuration_for_loopback(self.webhook_port)])

    def remove_webhook(self) -> None:
        """Delete the configuration (as an admin uninstalling the webhook would); keep a copy to restore."""
        stored = json.loads(self.plane.kubectl("get", "validatingwebhookconfiguration", "hyperv-operator",
                                               "-o", "json").stdout)
        assert stored["webhooks"][0]["clientConfig"].get("caBundle"), "the operator wrote its CA into it"
        self.saved_webhook = {"apiVersion": stored["apiVersion"], "kind": stored["kind"],
                              "metadata": {"name": stored["metadata"]["name"]}, "webhooks": stored["webhooks"]}
        self.plane.kubectl("delete", "validatingwebhookconfiguration", "hyperv-operator")

    def restore_webhook(self) -> None:
        assert self.saved_webhook is not None
        self.plane.kubectl("create", "-f", "-", input_text=json.dumps(self.saved_webhook))
        probe = vm_body(TEAM_A, "probe-webhook", baseVhd="\\\\attacker\\share\\x.vhdx")
        _wait(lambda: "denied the request" in (_denial(self, probe) or ""), 30, "the webhook to answer again")

    def create(self, body: dict[str, Any], *, as_tenant: bool = True, dry_run: bool = False) -> dict[str, Any]:
        kube = self.tenant if as_tenant and body["metadata"]["namespace"] == TEAM_A else self.admin
        return dict(kube.objects.create_namespaced_custom_object(
            api.GROUP, api.VERSION, body["metadata"]["namespace"], api.VM_PLURAL, body,
            **({"dry_run": "All"} if dry_run else {})))


def _b64(value: str | bytes) -> str:
    return base64.b64encode(value.encode() if isinstance(value, str) else value).decode()


def _cluster_host(sim: SimulatedHyperV, name: str) -> list[dict[str, Any]]:
    return [
        {"apiVersion": "v1", "kind": "Secret",
         "metadata": {"name": f"{name}-credentials", "namespace": OPERATOR_NAMESPACE},
         "type": "Opaque", "data": {"username": _b64(sim.username), "password": _b64(sim.password)}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-ca", "namespace": OPERATOR_NAMESPACE},
         "type": "Opaque", "data": {"ca.crt": _b64(sim.ca_pem)}},
        {"apiVersion": api.API_VERSION, "kind": "ClusterHyperVHost", "metadata": {"name": name},
         "spec": {
             "address": "127.0.0.1", "port": sim.port, "transport": "https", "auth": "basic",
             "credentialsSecretRef": {"name": f"{name}-credentials"}, "caBundleSecretRef": {"name": f"{name}-ca"},
             "defaultVmPath": VMS + "\\default",
             "namespaceSelector": {"matchLabels": {TENANT_LABEL: "true"}},
             # Quick writes its checkpoint beside the base: \\FS\BASES is writable, \\FS\GOLD is not.
             "storage": {"baseRoots": [BASES, GOLD], "vmRoots": [VMS, BASES]},
         }},
    ]


def _namespaces_and_tenant_roles() -> list[dict[str, Any]]:
    objects: list[dict[str, Any]] = [
        {"apiVersion": "v1", "kind": "Namespace",
         "metadata": {"name": ns, "labels": {TENANT_LABEL: "true"} if ns != TEAM_C else {}}}
        for ns in (TEAM_A, TEAM_B, TEAM_C)
    ]
    # What the built-in `edit` role aggregates from the operator (no kube-controller-manager runs
    # here to do the aggregation, so the two shipped tenant ClusterRoles are bound directly).
    for role in ("hyperv-operator-edit", "hyperv-operator-view"):
        objects.append({
            "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
            "metadata": {"name": f"tenant-{role}", "namespace": TEAM_A},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": TENANT_USER}],
        })
    return objects


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}; last: {last}")


def _denial(t: Tenancy, body: dict[str, Any]) -> str | None:
    """The API server's refusal message for a (dry-run) create, or None if it was accepted."""
    try:
        t.create(body, dry_run=True)
    except kubernetes.client.ApiException as exc:
        return str(json.loads(exc.body).get("message")) if exc.body else str(exc)
    return None


@pytest.fixture(scope="module")
def tenancy() -> Iterator[Tenancy]:
    with running_control_plane(apply_crds=False) as plane:
        install_operator_rbac(plane)
        plane.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd", "--all")
        sim = SimulatedHyperV(time_scale=60.0, guest_write_bytes_per_second=20e3).start()
        for folder in (BASES, GOLD, VMS):
            sim.host.add_folder(folder)
        for base in (BASE, DOLLAR_BASE, GOLD_BASE):
            sim.host.add_base_disk(base, 2 * 10**9, acl_read_only=True)
        recorder = Recorder()
        sim.host.on_command(recorder)
        apply_objects(plane, _namespaces_and_tenant_roles() + _cluster_host(sim, SHARED))
        port = free_port()
        log = Path(tempfile.mkdtemp(prefix="hyperv-operator-tenancy-")) / "operator.log"
        operator = OperatorProcess(plane.operator_kubeconfig, log, drift_interval=1.0, host_probe_interval=3.0,
                                   webhook_port=port)
        t = Tenancy(plane, sim, operator, Kube(plane.kubeconfig), Kube(plane.tenant_kubeconfig), recorder, port)
        # The configuration first (as manifests/ installs it), then the operator writes its CA into it.
        t.install_webhook()
        operator.start()
        try:
            probe = vm_body(TEAM_A, "probe-webhook", baseVhd="\\\\attacker\\share\\x.vhdx")
            _wait(lambda: "denied the request" in (_denial(t, probe) or ""), 60, "the webhook to answer")
            yield t
        finally:
            operator.stop()
            sim.stop()
            print(f"\ntenancy operator log: {log}")


SCHEMA_REFUSED = [
    # The CRD's own rules refuse these before any webhook is asked (a `.` segment, as in a device path).
    Hole("vmpath-pipe", {"vmPath": "\\\\.\\pipe\\evil"}, "spec.vmPath", "evil"),
    # Win32 strips a trailing dot (two spellings of one folder): refused by the CRD.
    Hole("trailing-dot", {"baseVhd": BASES + "\\team.\\BASE.VHDX"}, "spec.baseVhd", "team."),
]


def test_webhook_refuses_each_hole_at_apply_time(tenancy: Tenancy) -> None:
    for hole in SCHEMA_REFUSED:
        message = _denial(tenancy, vm_body(hole.namespace, f"hole-{hole.id}", **hole.spec))
        assert message is not None and hole.reason in message, (hole.id, message)
    for hole in HOLES:
        message = _denial(tenancy, vm_body(hole.namespace, f"hole-{hole.id}", **hole.spec))
        assert message is not None, f"{hole.id}: accepted"
        assert "virtualmachines.validate.hyperv-operator.io" in message and hole.reason in message, (hole.id, message)
    # NTFS-forbidden names are refused at admission too (by the schema, before the webhook).
    forbidden = _denial(tenancy, vm_body(TEAM_A, "forbidden-name", baseVhd=BASES + "\\a|b.vhdx"))
    assert forbidden is not None and "spec.baseVhd" in forbidden
    # A legal NTFS name is accepted literally, and the VM of an admitted namespace too.
    assert _denial(tenancy, vm_body(TEAM_A, "dollar", baseVhd=DOLLAR_BASE)) is None
    assert _denial(tenancy, vm_body(TEAM_B, "fine", strategy="Quick")) is None
    assert not any(tenancy.recorder.carrying(h.refused_value) for h in [*HOLES, *SCHEMA_REFUSED])


def test_controller_stalls_each_hole_without_the_webhook_and_sends_nothing(tenancy: Tenancy) -> None:
    tenancy.remove_webhook()
    try:
        _wait(lambda: _denial(tenancy, vm_body(TEAM_A, "hole-system-file", **HOLES[0].spec)) is None, 30,
              "the API server to drop the webhook")
        created = {hole.id: tenancy.create(vm_body(hole.namespace, f"hole-{hole.id}", **hole.spec)) for hole in HOLES}
        for hole in HOLES:
            obj = tenancy.admin.wait_vm(
                hole.namespace, f"hole-{hole.id}",
                lambda o, h=hole: (condition(o, "Stalled") or {}).get("reason") == h.reason, timeout=60,
                what=f"Stalled {hole.reason}")
            stalled = condition(obj, "Stalled") or {}
            assert stalled["status"] == "True" and stalled["message"], hole.id
            assert (condition(obj, "Reconciling") or {}).get("status") == "False"
        # Past a re-check and many drift ticks: still nothing on the host for any of them.
        time.sleep(RETRY_SECONDS + 3)
        for hole in HOLES:
            uid = created[hole.id]["metadata"]["uid"]
            for value in (hole.refused_value, f"hole-{hole.id}", uid):
                assert tenancy.recorder.carrying(value) == [], (hole.id, value)
            obj = tenancy.admin.get_vm(hole.namespace, f"hole-{hole.id}") or {}
            assert (obj.get("status") or {}).get("phase") == "Pending" and not obj["status"].get("vmId")
        # Deleting a refused VM sends nothing either.
        for hole in HOLES:
            tenancy.admin.delete_vm(hole.namespace, f"hole-{hole.id}")
        for hole in HOLES:
            tenancy.admin.wait_gone(hole.namespace, f"hole-{hole.id}", timeout=60)
        assert not any(tenancy.recorder.carrying(f"hole-{h.id}") for h in HOLES)
    finally:
        tenancy.restore_webhook()


def test_stalled_vm_recovers_when_the_namespace_is_admitted_or_the_host_appears(tenancy: Tenancy) -> None:
    tenancy.remove_webhook()  # the controller's path (with the webhook, the same VMs are accepted)
    try:
        late = "late-host"
        tenancy.create(vm_body(TEAM_C, "waits-for-admission"))
        tenancy.create(vm_body(TEAM_A, "waits-for-host", host=late))
        for ns, name, reason in ((TEAM_C, "waits-for-admission", "NamespaceNotAdmitted"),
                                 (TEAM_A, "waits-for-host", "HostNotFound")):
            tenancy.admin.wait_vm(ns, name, lambda o, r=reason: (condition(o, "Stalled") or {}).get("reason") == r
                                  and (condition(o, "Stalled") or {}).get("status") == "True",
                                  timeout=60, what=reason)
        assert tenancy.recorder.carrying("waits-for-admission") == []
        assert tenancy.recorder.carrying("waits-for-host") == []
        tenancy.plane.kubectl("label", "namespace", TEAM_C, f"{TENANT_LABEL}=true")
        apply_objects(tenancy.plane, _cluster_host(tenancy.sim, late))
        for ns, name in ((TEAM_C, "waits-for-admission"), (TEAM_A, "waits-for-host")):
            obj = tenancy.admin.wait_phase(ns, name, "Provisioned", timeout=90)
            assert (condition(obj, "Stalled") or {}).get("status") == "False"
            assert obj["status"]["vmId"]
        # The ClusterHyperVHost is probed like a HyperVHost, with its Secrets read in the operator's namespace.
        _wait(lambda: condition(tenancy.admin.objects.get_cluster_custom_object(
            api.GROUP, api.VERSION, api.CLUSTER_HOST_PLURAL, late), "Reachable"), 30, "the late host's probe")
        probed = tenancy.admin.objects.get_cluster_custom_object(api.GROUP, api.VERSION, api.CLUSTER_HOST_PLURAL, late)
        assert (condition(probed, "Reachable") or {}).get("status") == "True", probed.get("status")
    finally:
        tenancy.plane.kubectl("label", "namespace", TEAM_C, f"{TENANT_LABEL}-")
        tenancy.restore_webhook()


def test_legal_ntfs_name_is_sent_literally(tenancy: Tenancy) -> None:
    tenancy.create(vm_body(TEAM_A, "dollar-base", baseVhd=DOLLAR_BASE))
    obj = tenancy.admin.wait_phase(TEAM_A, "dollar-base", "Provisioned", timeout=90)
    assert obj["status"]["disk"]["parentPath"].lower() == DOLLAR_BASE.lower()
    assert tenancy.recorder.carrying(DOLLAR_BASE)


def test_tenant_editor_manages_vms_and_reads_no_credentials(tenancy: Tenancy) -> None:
    kubectl = tenancy.plane.kubectl
    tenant = str(tenancy.plane.tenant_kubeconfig)

    def can(*args: str) -> bool:
        answer = kubectl("auth", "can-i", *args, kubeconfig=Path(tenant), check=False).stdout.strip()
        assert answer in ("yes", "no")
        return answer == "yes"

    for verb in ("create", "get", "list", "watch", "update", "patch", "delete"):
        assert can(verb, "virtualmachines.hyperv-operator.io", "-n", TEAM_A), verb
    assert can("get", "hypervhosts.hyperv-operator.io", "-n", TEAM_A)
    for args in (("create", "hypervhosts.hyperv-operator.io", "-n", TEAM_A),
                 ("create", "clusterhypervhosts.hyperv-operator.io"),
                 ("patch", f"clusterhypervhosts.hyperv-operator.io/{SHARED}"),
                 ("get", "secrets", "-n", OPERATOR_NAMESPACE),
                 ("get", f"secrets/{SHARED}-credentials", "-n", OPERATOR_NAMESPACE),
                 ("list", "secrets", "-n", TEAM_A),
                 ("get", "secrets", "-n", TEAM_A),
                 ("create", "virtualmachines.hyperv-operator.io", "-n", TEAM_B),
                 ("patch", "virtualmachines.hyperv-operator.io", "--subresource=status", "-n", TEAM_A)):
        assert not can(*args), args
    # Real requests, authorized by the API server.
    denied = kubectl("get", "secret", f"{SHARED}-credentials", "-n", OPERATOR_NAMESPACE, "-o", "json",
                     kubeconfig=Path(tenant), check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()
    with pytest.raises(kubernetes.client.ApiException) as info:
        tenancy.tenant.core.read_namespaced_secret(f"{SHARED}-credentials", OPERATOR_NAMESPACE)
    assert info.value.status == 403

    watch = kubernetes.watch.Watch()
    seen: list[str] = []

    def watch_vms() -> None:
        for event in watch.stream(tenancy.tenant.objects.list_namespaced_custom_object, api.GROUP, api.VERSION,
                                  TEAM_A, api.VM_PLURAL, timeout_seconds=60):
            seen.append(f"{event['type']} {event['object']['metadata']['name']}")
            if "DELETED tenant-vm" in seen:
                watch.stop()

    watcher = threading.Thread(target=watch_vms, daemon=True)
    watcher.start()
    tenancy.create(vm_body(TEAM_A, "tenant-vm", strategy="Quick"))
    obj = tenancy.tenant.wait_phase(TEAM_A, "tenant-vm", "Provisioned", timeout=120)
    assert obj["status"]["vmId"]
    tenancy.tenant.delete_vm(TEAM_A, "tenant-vm")
    tenancy.tenant.wait_gone(TEAM_A, "tenant-vm", timeout=90)
    watcher.join(timeout=30)
    assert "ADDED tenant-vm" in seen and "DELETED tenant-vm" in seen


def test_drift_timer_does_not_retry_a_failed_vm_once_its_path_is_refused(tenancy: Tenancy) -> None:
    # A Failed VM is re-checked by the drift timer (so it starts once its base appears). Allowed, its
    # missing base is looked up on the host; once the admin narrows the roots, it never is again.
    missing = BASES + "\\MISSING.VHDX"
    tenancy.create(vm_body(TEAM_A, "failed-then-refused", baseVhd=missing))
    tenancy.admin.wait_phase(TEAM_A, "failed-then-refused", "Failed", timeout=60)
    _wait(lambda: len(tenancy.recorder.carrying(missing)) >= 2, 30, "the drift timer to re-check the base")
    narrowed = {"spec": {"storage": {"baseRoots": [GOLD], "vmRoots": [VMS, BASES]}}}
    restored = {"spec": {"storage": {"baseRoots": [BASES, GOLD], "vmRoots": [VMS, BASES]}}}
    objects = tenancy.admin.objects
    objects.patch_cluster_custom_object(api.GROUP, api.VERSION, "clusterhypervhosts", SHARED, narrowed)
    try:
        tenancy.admin.wait_vm(TEAM_A, "failed-then-refused",
                              lambda o: (condition(o, "Stalled") or {}).get("reason") == "BaseOutsideAllowedRoots",
                              timeout=30, what="Stalled BaseOutsideAllowedRoots")
        before = len(tenancy.recorder.carrying(missing))
        time.sleep(RETRY_SECONDS + 3)  # many drift ticks (1 s) and a re-check
        assert len(tenancy.recorder.carrying(missing)) == before
    finally:
        objects.patch_cluster_custom_object(api.GROUP, api.VERSION, "clusterhypervhosts", SHARED, restored)
    tenancy.admin.delete_vm(TEAM_A, "failed-then-refused")
    tenancy.admin.wait_gone(TEAM_A, "failed-then-refused", timeout=60)


def _class(name: str, **spec: Any) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": api.VM_CLASS_KIND, "metadata": {"name": name}, "spec": spec}


def test_webhook_refuses_a_vm_beyond_its_class(tenancy: Tenancy) -> None:
    """Issue 14: a tenant cannot size a VM beyond the VirtualMachineClass it names."""
    apply_objects(tenancy.plane, [_class("tenancy-small", cpus=2, memory="1Gi", namespaces=[TEAM_A])])
    sized = vm_body(TEAM_A, "too-big", className="tenancy-small", cpus=16)
    message = _denial(tenancy, sized)
    assert message is not None and "ClassOverrideRefused" in message, message
    by_class = vm_body(TEAM_A, "by-class", className="tenancy-small")
    del by_class["spec"]["memory"]
    _wait(lambda: _denial(tenancy, by_class) is None, 30, "the operator's class index to see the class")
    other = vm_body(TEAM_B, "other-team", className="tenancy-small")
    del other["spec"]["memory"]
    refused = _denial(tenancy, other)
    assert refused is not None and "ClassNotAdmitted" in refused, refused
