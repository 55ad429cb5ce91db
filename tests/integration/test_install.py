"""The installer (`kubectl kustomize manifests/`, i.e. make build-installer) on a real kube-apiserver.

Applies dist/install.yaml's content with server-side apply to a fresh control plane (its CRDs come
from the installer, not from the harness), then proves the operator ServiceAccount's grants with
`kubectl auth can-i`, a SelfSubjectRulesReview and real requests made with its token. The operator
itself is not started here (the operator tests run it with the same identity and check its log).
"""

from __future__ import annotations

import json
import ssl
import subprocess
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hyperv_operator.envtest.controlplane import ControlPlane, repo_root, running_control_plane
from tests.support.argocd import argocd_health
from tests.support.kstatus import kstatus_verdict

pytestmark = pytest.mark.integration

NS = "hyperv-operator-system"
REPO = repo_root()


class Installed:
    def __init__(self, plane: ControlPlane, install_yaml: str, apply_stderr: str,
                 webhook_configuration: dict[str, Any]) -> None:
        self.plane = plane
        self.install_yaml = install_yaml
        self.apply_stderr = apply_stderr
        self.webhook_configuration = webhook_configuration

    def admin(self, *args: str, check: bool = True, input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl(*args, check=check, input_text=input_text)

    def operator(self, *args: str, check: bool = True,
                 input_text: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.plane.kubectl(*args, kubeconfig=self.plane.operator_kubeconfig, check=check,
                                  input_text=input_text)

    def operator_patch(self, path: str, patch: dict[str, Any]) -> int:
        """PATCH (merge) with the operator's token, straight to the API like kopf (kubectl patch GETs first)."""
        config = yaml.safe_load(self.plane.operator_kubeconfig.read_text())
        token = config["users"][0]["user"]["token"]
        context = ssl.create_default_context(cafile=str(self.plane.ca_file))
        request = urllib.request.Request(
            f"{self.plane.server}{path}", method="PATCH", data=json.dumps(patch).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/merge-patch+json"})
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)

    def can_i(self, verb: str, resource: str, *extra: str) -> bool:
        result = self.operator("auth", "can-i", verb, resource, *extra, check=False)
        answer = result.stdout.strip()
        assert answer in ("yes", "no"), result.stderr
        return answer == "yes"


def build_installer(plane: ControlPlane) -> str:
    result = subprocess.run([str(plane.binaries.kubectl), "kustomize", str(REPO / "manifests")],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def installed() -> Iterator[Installed]:
    with running_control_plane(apply_crds=False) as plane:
        install_yaml = build_installer(plane)
        # One `kubectl apply` of the whole installer cannot create the ClusterKopfPeering object
        # before its CRD is established (no REST mapping yet); the second run does, as the
        # peering object's comment tells users (make deploy applies crds/ first).
        first = plane.kubectl("apply", "--server-side", "--field-manager=hyperv-operator-installer", "-f", "-",
                              input_text=install_yaml, check=False)
        plane.kubectl("wait", "--for=condition=Established", "--timeout=30s",
                      "crd/virtualmachines.hyperv-operator.io", "crd/hypervhosts.hyperv-operator.io",
                      "crd/clusterhypervhosts.hyperv-operator.io", "crd/clusterkopfpeerings.kopf.dev")
        assert first.returncode == 0 or "ClusterKopfPeering" in first.stderr, first.stderr
        applied = plane.kubectl("apply", "--server-side", "--field-manager=hyperv-operator-installer", "-f", "-",
                                input_text=install_yaml)
        # The webhook configuration as the server stored it; then removed, because no operator
        # serves it here (failurePolicy Fail would refuse the samples this module applies).
        # tests/integration/test_tenancy.py exercises it with the operator serving it.
        webhook = json.loads(plane.kubectl("get", "validatingwebhookconfiguration", "hyperv-operator",
                                           "-o", "json").stdout)
        plane.kubectl("delete", "validatingwebhookconfiguration", "hyperv-operator")
        yield Installed(plane, install_yaml, applied.stderr, webhook)


def get_json(inst: Installed, *args: str) -> dict[str, Any]:
    return dict(json.loads(inst.admin("get", *args, "-o", "json").stdout))


def test_installer_is_accepted_with_no_pod_security_warnings(installed: Installed) -> None:
    assert "Warning" not in installed.apply_stderr, installed.apply_stderr
    kinds = {(d["kind"], d["metadata"]["name"]) for d in
             json.loads(installed.admin("get", "-f", "-", "-o", "json", "--ignore-not-found",
                                        input_text=installed.install_yaml).stdout)[
                 "items"]}
    assert {("Namespace", NS), ("ServiceAccount", "hyperv-operator"), ("ClusterRole", "hyperv-operator"),
            ("ClusterRoleBinding", "hyperv-operator"), ("Deployment", "hyperv-operator"),
            ("Service", "hyperv-operator-metrics"),
            ("CustomResourceDefinition", "virtualmachines.hyperv-operator.io"),
            ("CustomResourceDefinition", "hypervhosts.hyperv-operator.io"),
            ("CustomResourceDefinition", "clusterhypervhosts.hyperv-operator.io"),
            ("Service", "hyperv-operator-webhook"),
            ("CustomResourceDefinition", "clusterkopfpeerings.kopf.dev"),
            ("ClusterKopfPeering", "hyperv-operator")} <= kinds
    # Stored by the server before the fixture removed it (see `installed`).
    assert installed.webhook_configuration["kind"] == "ValidatingWebhookConfiguration"


def test_webhook_configuration_as_stored_by_the_server(installed: Installed) -> None:
    (hook,) = installed.webhook_configuration["webhooks"]
    assert hook["name"] == "virtualmachines.validate.hyperv-operator.io"
    assert hook["clientConfig"]["service"] == {"name": "hyperv-operator-webhook", "namespace": NS,
                                              "path": "/validate-vm", "port": 443}
    assert hook["rules"] == [{"apiGroups": ["hyperv-operator.io"], "apiVersions": ["v1alpha1"],
                              "operations": ["CREATE", "UPDATE"], "resources": ["virtualmachines"],
                              "scope": "Namespaced"}]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"


def test_installed_crds_are_current_for_kstatus(installed: Installed) -> None:
    for name in ("virtualmachines.hyperv-operator.io", "hypervhosts.hyperv-operator.io",
                 "clusterhypervhosts.hyperv-operator.io", "virtualmachineimages.hyperv-operator.io",
                 "clustervirtualmachineimages.hyperv-operator.io"):
        assert kstatus_verdict(get_json(installed, "crd", name)) == ("Current", "CRD is established")


def test_deployment_as_stored_by_the_server(installed: Installed) -> None:
    deployment = get_json(installed, "deployment", "hyperv-operator", "-n", NS)
    spec = deployment["spec"]
    assert spec["replicas"] == 2 and spec["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    # The peering object the replicas share exists cluster-scoped (kopf does not create it).
    peering = get_json(installed, "clusterkopfpeering", "hyperv-operator")
    assert "namespace" not in peering["metadata"]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["template"]["spec"]["serviceAccountName"] == "hyperv-operator"


def test_restricted_pod_security_is_enforced_on_the_namespace(installed: Installed) -> None:
    # A privileged pod is refused in the operator's namespace; the operator's own template passed above.
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "bad", "namespace": NS},
           "spec": {"containers": [{"name": "c", "image": "busybox", "securityContext": {"privileged": True}}]}}
    result = installed.admin("apply", "--server-side", "--dry-run=server", "-f", "-", check=False,
                             input_text=json.dumps(pod))
    assert result.returncode != 0
    assert "violates PodSecurity" in result.stderr


GRANTED = [
    ("list", "customresourcedefinitions.apiextensions.k8s.io", "--all-namespaces"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io", "--all-namespaces"),
    ("list", "virtualmachines.hyperv-operator.io", "--all-namespaces"),
    ("watch", "virtualmachines.hyperv-operator.io", "--all-namespaces"),
    ("patch", "virtualmachines.hyperv-operator.io", "-n", "team-a"),
    ("patch", "virtualmachines.hyperv-operator.io", "--subresource=status", "-n", "team-a"),
    ("list", "hypervhosts.hyperv-operator.io", "--all-namespaces"),
    ("watch", "hypervhosts.hyperv-operator.io", "--all-namespaces"),
    ("patch", "hypervhosts.hyperv-operator.io", "-n", "default"),
    ("patch", "hypervhosts.hyperv-operator.io", "--subresource=status", "-n", "default"),
    ("list", "clusterhypervhosts.hyperv-operator.io", "--all-namespaces"),
    ("watch", "clusterhypervhosts.hyperv-operator.io", "--all-namespaces"),
    ("patch", "clusterhypervhosts.hyperv-operator.io", "--all-namespaces"),
    ("patch", "clusterhypervhosts.hyperv-operator.io", "--subresource=status", "--all-namespaces"),
    ("list", "virtualmachineimages.hyperv-operator.io", "--all-namespaces"),
    ("watch", "virtualmachineimages.hyperv-operator.io", "--all-namespaces"),
    ("patch", "virtualmachineimages.hyperv-operator.io", "--subresource=status", "-n", "team-a"),
    ("list", "clustervirtualmachineimages.hyperv-operator.io", "--all-namespaces"),
    ("watch", "clustervirtualmachineimages.hyperv-operator.io", "--all-namespaces"),
    ("patch", "clustervirtualmachineimages.hyperv-operator.io", "--subresource=status", "--all-namespaces"),
    ("list", "namespaces", "--all-namespaces"),
    ("watch", "namespaces", "--all-namespaces"),
    ("get", "virtualmachineclasses.hyperv-operator.io", "--all-namespaces"),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/hyperv-operator"),
    ("get", "secrets", "-n", "team-a"),
    ("get", "secrets", "-n", NS),
    ("list", "secrets", "-n", "team-a"),
    ("watch", "secrets", "--all-namespaces"),
    ("create", "events", "-n", "team-a"),
    ("list", "clusterkopfpeerings.kopf.dev", "--all-namespaces"),
    ("watch", "clusterkopfpeerings.kopf.dev", "--all-namespaces"),
    ("patch", "clusterkopfpeerings.kopf.dev/hyperv-operator"),
]

DENIED = [
    ("update", "secrets", "-n", "team-a"),
    ("patch", "secrets", "-n", "team-a"),
    ("create", "secrets", "-n", "team-a"),
    ("delete", "secrets", "-n", "team-a"),
    ("delete", "pods", "-n", "team-a"),
    ("create", "pods", "-n", NS),
    ("create", "virtualmachines.hyperv-operator.io", "-n", "team-a"),
    ("delete", "virtualmachines.hyperv-operator.io", "-n", "team-a"),
    ("update", "virtualmachines.hyperv-operator.io", "-n", "team-a"),
    ("update", "virtualmachines.hyperv-operator.io", "--subresource=status", "-n", "team-a"),
    ("create", "hypervhosts.hyperv-operator.io", "-n", "team-a"),
    ("delete", "hypervhosts.hyperv-operator.io", "-n", "team-a"),
    ("get", "customresourcedefinitions.apiextensions.k8s.io", "--all-namespaces"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io", "--all-namespaces"),
    ("patch", "events", "-n", "team-a"),
    ("create", "events.events.k8s.io", "-n", "team-a"),
    ("get", "namespaces", "--all-namespaces"),
    ("patch", "namespaces", "--all-namespaces"),
    ("patch", "virtualmachineclasses.hyperv-operator.io", "--all-namespaces"),
    ("create", "clusterhypervhosts.hyperv-operator.io", "--all-namespaces"),
    ("delete", "clusterhypervhosts.hyperv-operator.io", "--all-namespaces"),
    ("create", "virtualmachineimages.hyperv-operator.io", "-n", "team-a"),
    ("delete", "clustervirtualmachineimages.hyperv-operator.io", "--all-namespaces"),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/other-webhook"),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("create", "validatingwebhookconfigurations.admissionregistration.k8s.io"),
    ("delete", "validatingwebhookconfigurations.admissionregistration.k8s.io/hyperv-operator"),
    ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/hyperv-operator"),
    ("create", "clusterkopfpeerings.kopf.dev", "--all-namespaces"),
    ("delete", "clusterkopfpeerings.kopf.dev/hyperv-operator"),
    ("patch", "clusterkopfpeerings.kopf.dev/another-operator"),
    ("get", "clusterkopfpeerings.kopf.dev/hyperv-operator"),
    ("list", "kopfpeerings.kopf.dev", "-n", "team-a"),
    ("create", "leases.coordination.k8s.io", "-n", NS),
    ("get", "configmaps", "-n", "team-a"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io", "--all-namespaces"),
]


@pytest.mark.parametrize(("verb", "resource", "extra"), [(v, r, e) for v, r, *e in GRANTED],
                         ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_operator_can(installed: Installed, verb: str, resource: str, extra: list[str]) -> None:
    assert installed.can_i(verb, resource, *extra)


@pytest.mark.parametrize(("verb", "resource", "extra"), [(v, r, e) for v, r, *e in DENIED],
                         ids=lambda x: x if isinstance(x, str) else " ".join(x))
def test_operator_cannot(installed: Installed, verb: str, resource: str, extra: list[str]) -> None:
    assert not installed.can_i(verb, resource, *extra)


# What every authenticated identity may do anyway (system:basic-user).
_BASELINE = {("authorization.k8s.io", "selfsubjectaccessreviews", "create"),
             ("authorization.k8s.io", "selfsubjectrulesreviews", "create"),
             ("authentication.k8s.io", "selfsubjectreviews", "create")}


def test_rules_review_shows_exactly_the_role(installed: Installed) -> None:
    review = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
              "spec": {"namespace": "team-a"}}
    result = installed.operator("create", "-f", "-", "-o", "json", input_text=json.dumps(review))
    rules = json.loads(result.stdout)["status"]["resourceRules"]
    granted = {(group, resource, verb) for rule in rules for group in rule.get("apiGroups", [])
               for resource in rule.get("resources", []) for verb in rule["verbs"]}
    expected = {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        *(("hyperv-operator.io", r, v) for r in ("virtualmachines", "hypervhosts", "clusterhypervhosts",
                                                 "virtualmachineimages", "clustervirtualmachineimages")
          for v in ("list", "watch", "patch")),
        # the copy-slot ledger reads its host (and the VMs it names) right before a conditional write
        *(("hyperv-operator.io", r, "get") for r in ("virtualmachines", "hypervhosts", "clusterhypervhosts")),
        ("hyperv-operator.io", "virtualmachines/status", "patch"),
        ("hyperv-operator.io", "hypervhosts/status", "patch"),
        ("hyperv-operator.io", "clusterhypervhosts/status", "patch"),
        ("hyperv-operator.io", "virtualmachineimages/status", "patch"),
        ("hyperv-operator.io", "clustervirtualmachineimages/status", "patch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
        ("hyperv-operator.io", "virtualmachineclasses", "get"),  # issue 14: spec.className
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch"),
        *(("", "secrets", v) for v in ("get", "list", "watch")),
        ("", "events", "create"),
        ("kopf.dev", "clusterkopfpeerings", "list"),
        ("kopf.dev", "clusterkopfpeerings", "watch"),
        ("kopf.dev", "clusterkopfpeerings", "patch"),  # resourceNames: hyperv-operator
    }
    assert granted - _BASELINE == expected


def test_operator_identity_does_its_job_and_nothing_more(installed: Installed) -> None:
    installed.admin("create", "namespace", "team-b")
    installed.admin("create", "secret", "generic", "hv01-credentials", "-n", "team-b",
                    "--from-literal=username=u", "--from-literal=password=p")
    # The samples as Flux would apply them (kustomize build of manifests/samples).
    installed.admin("apply", "--server-side", "-n", "team-b", "-k", str(REPO / "manifests" / "samples"))
    # Reads across namespaces (kopf's cluster-wide list), a Secret by name; Secrets are listed and
    # watched (the Secret cache), never written.
    assert "vm-quick" in installed.operator("get", "virtualmachines.hyperv-operator.io", "-A", "-o", "name").stdout
    assert installed.operator("get", "secret", "hv01-credentials", "-n", "team-b", "-o",
                              "jsonpath={.data.username}").stdout == "dQ=="
    assert "hv01-credentials" in installed.operator("get", "secrets", "-n", "team-b", "-o", "name").stdout
    # Finalizer / progress annotations (merge-patch) and status (subresource), as kopf writes them.
    vm_path = "/apis/hyperv-operator.io/v1alpha1/namespaces/team-b/virtualmachines/vm-quick"
    finalizer = {"metadata": {"finalizers": ["hyperv-operator.io/finalizer"],
                              "annotations": {"hyperv-operator.io/last-handled-configuration": "{}"}}}
    assert installed.operator_patch(vm_path, finalizer) == 200
    assert installed.operator_patch(vm_path, {"metadata": {"finalizers": None}}) == 200
    status = {"status": {"phase": "Pending", "observedGeneration": 1, "conditions": [
        {"type": "Reconciling", "status": "True", "reason": "Pending", "message": "waiting for a copy slot",
         "lastTransitionTime": "2026-01-01T12:00:00Z", "observedGeneration": 1}]}}
    assert installed.operator_patch(vm_path + "/status", status) == 200
    host_path = "/apis/hyperv-operator.io/v1alpha1/namespaces/team-b/hypervhosts/hv01"
    assert installed.operator_patch(host_path + "/status", {"status": {"observedGeneration": 1}}) == 200
    assert installed.operator_patch("/api/v1/namespaces/team-b/secrets/hv01-credentials",
                                    {"metadata": {"labels": {"x": "y"}}}) == 403
    stored = get_json(installed, "virtualmachines.hyperv-operator.io", "vm-quick", "-n", "team-b")
    assert stored["status"]["phase"] == "Pending"
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "vm-quick.", "namespace": "team-b"},
             "involvedObject": {"apiVersion": "hyperv-operator.io/v1alpha1", "kind": "VirtualMachine",
                                "name": "vm-quick", "namespace": "team-b"},
             "reason": "Test", "message": "posted like kopf does", "type": "Normal"}
    installed.operator("create", "-f", "-", input_text=json.dumps(event))
    # It never creates or deletes the users' objects.
    refused = installed.operator("delete", "virtualmachines.hyperv-operator.io", "vm-copy", "-n", "team-b",
                                 check=False)
    assert refused.returncode != 0 and "forbidden" in refused.stderr.lower()


def test_helpers_on_objects_stored_by_the_server(installed: Installed) -> None:
    installed.admin("create", "namespace", "team-c")
    installed.admin("apply", "--server-side", "-n", "team-c", "-f",
                    str(REPO / "manifests" / "samples" / "hyperv-operator.io_v1alpha1_virtualmachine_copy.yaml"))
    fresh = get_json(installed, "virtualmachines.hyperv-operator.io", "vm-copy", "-n", "team-c")
    assert kstatus_verdict(fresh) == ("Current", "Resource is current")  # kstatus: no status yet = Current
    assert argocd_health(fresh)["status"] == "Progressing"
    conditions = [
        {"type": t, "status": s, "reason": "BaseNotFound", "message": "base disk not found",
         "lastTransitionTime": "2026-01-01T12:00:00Z", "observedGeneration": 1}
        for t, s in (("Ready", "False"), ("Reconciling", "False"), ("Stalled", "True"))
    ]
    installed.admin("patch", "virtualmachines.hyperv-operator.io", "vm-copy", "-n", "team-c",
                    "--subresource=status", "--type=merge",
                    "-p", json.dumps({"status": {"phase": "Failed", "observedGeneration": 1,
                                                 "conditions": conditions}}))
    stalled = get_json(installed, "virtualmachines.hyperv-operator.io", "vm-copy", "-n", "team-c")
    assert kstatus_verdict(stalled) == ("Failed", "base disk not found")
    assert argocd_health(stalled) == {"status": "Degraded", "message": "base disk not found"}
    installed.admin("patch", "virtualmachines.hyperv-operator.io", "vm-copy", "-n", "team-c", "--type=merge",
                    "-p", json.dumps({"spec": {"cpus": 4}}))
    bumped = get_json(installed, "virtualmachines.hyperv-operator.io", "vm-copy", "-n", "team-c")
    assert kstatus_verdict(bumped)[0] == "InProgress"
    assert argocd_health(bumped)["status"] == "Progressing"


def test_user_roles_aggregate_into_view_edit_admin(installed: Installed) -> None:
    # Aggregation itself is kube-controller-manager's job (not running here): check the labels it uses.
    labels = {name: get_json(installed, "clusterrole", name)["metadata"].get("labels", {})
              for name in ("hyperv-operator-view", "hyperv-operator-edit")}
    assert labels["hyperv-operator-view"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert labels["hyperv-operator-edit"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert labels["hyperv-operator-edit"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"


def test_argocd_cm_snippet_merges_into_an_existing_argocd_cm(installed: Installed, tmp_path: Path) -> None:
    installed.admin("create", "namespace", "argocd")
    installed.admin("create", "configmap", "argocd-cm", "-n", "argocd", "--from-literal=url=https://argocd.example")
    installed.admin("apply", "--server-side", "--field-manager=hyperv-operator-health", "-f",
                    str(REPO / "manifests" / "argocd" / "argocd-cm.yaml"))
    data = get_json(installed, "configmap", "argocd-cm", "-n", "argocd")["data"]
    assert data["url"] == "https://argocd.example"
    assert data["resource.customizations.health.hyperv-operator.io_VirtualMachine"] == (
        REPO / "manifests" / "argocd" / "virtualmachine-health.lua").read_text()
    assert "resource.customizations.health.hyperv-operator.io_HyperVHost" in data
