"""manifests/: what `make deploy` / `make build-installer` install, checked without a server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
MANIFESTS = REPO / "manifests"
NAMESPACE = "hyperv-operator-system"


def _kustomization() -> dict[str, Any]:
    return dict(yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text()))


def _docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for resource in _kustomization()["resources"]:
        path = MANIFESTS / resource
        files = [path / r for r in yaml.safe_load((path / "kustomization.yaml").read_text())["resources"]] \
            if path.is_dir() else [path]
        for file in files:
            docs.extend(d for d in yaml.safe_load_all(file.read_text()) if d)
    return docs


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def test_kustomization_lists_every_install_manifest_and_nothing_else() -> None:
    resources = _kustomization()["resources"]
    assert "../crds" in resources
    listed = {MANIFESTS / r for r in resources if r != "../crds"}
    on_disk = {
        p for p in MANIFESTS.rglob("*.yaml")
        if p.name != "kustomization.yaml" and not {"samples", "argocd"} & set(p.relative_to(MANIFESTS).parts)
    }
    assert listed == on_disk
    assert _kustomization()["namespace"] == NAMESPACE


def test_crds_base_lists_every_crd_file() -> None:
    crds = REPO / "crds"
    listed = sorted(yaml.safe_load((crds / "kustomization.yaml").read_text())["resources"])
    assert listed == sorted(p.name for p in crds.glob("*.yaml") if p.name != "kustomization.yaml")


def _normalized(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in rules
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


HOST_KINDS = ("hypervhosts", "clusterhypervhosts")
IMAGE_KINDS = ("virtualmachineimages", "clustervirtualmachineimages")
EXPECTED_OPERATOR_GRANTS = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
    # get: the copy-slot ledger reads its host (and the VMs it names) right before a conditional write
    *(("hyperv-operator.io", r, v) for r in ("virtualmachines", *HOST_KINDS)
      for v in ("get", "list", "watch", "patch")),
    *(("hyperv-operator.io", r, v) for r in IMAGE_KINDS for v in ("list", "watch", "patch")),
    ("hyperv-operator.io", "virtualmachines/status", "patch"),
    *(("hyperv-operator.io", f"{r}/status", "patch") for r in (*HOST_KINDS, *IMAGE_KINDS)),
    ("", "namespaces", "list"),
    ("", "namespaces", "watch"),
    ("hyperv-operator.io", "virtualmachineclasses", "get"),  # issue 14: spec.className
    ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "patch"),
    *(("", "secrets", v) for v in ("get", "list", "watch")),
    ("", "events", "create"),
    # kopf's peering: active/standby replicas (patch only on the one peering object, see below).
    *(("kopf.dev", "clusterkopfpeerings", v) for v in ("list", "watch", "patch")),
}


def test_operator_cluster_role_is_exactly_least_privilege() -> None:
    role = _one("ClusterRole", "hyperv-operator")
    for rule in role["rules"]:
        if rule["resources"] == ["validatingwebhookconfigurations"]:
            # Only its own configuration (the webhook's caBundle), never another webhook.
            assert rule["resourceNames"] == ["hyperv-operator"] and rule["verbs"] == ["patch"]
            continue
        if "resourceNames" in rule and rule["resources"] == ["clusterkopfpeerings"]:
            # Keep-alives go into our own peering object only (the one manifests/peering installs
            # and the Deployment names with --peering).
            assert rule["resourceNames"] == [_peering_name()] and rule["verbs"] == ["patch"]
            continue
        assert set(rule) == {"apiGroups", "resources", "verbs"}, "no resourceNames/nonResourceURLs tricks"
        assert "*" not in rule["apiGroups"] + rule["resources"] + rule["verbs"]
    assert _normalized(role["rules"]) == EXPECTED_OPERATOR_GRANTS


def test_binding_grants_the_role_to_the_service_account_only() -> None:
    binding = _one("ClusterRoleBinding", "hyperv-operator")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                                  "name": "hyperv-operator"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "hyperv-operator", "namespace": NAMESPACE}]
    sa = _one("ServiceAccount", "hyperv-operator")
    assert sa["metadata"]["namespace"] == NAMESPACE


def test_aggregated_user_roles_never_touch_status() -> None:
    view = _one("ClusterRole", "hyperv-operator-view")
    edit = _one("ClusterRole", "hyperv-operator-edit")
    assert {v for _, _, v in _normalized(view["rules"])} == {"get", "list", "watch"}
    assert not any(r.endswith("/status") for _, r, _ in _normalized(edit["rules"]))
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-view" not in edit["metadata"]["labels"]


def test_tenant_roles_cannot_manage_hosts_and_host_admin_is_not_aggregated() -> None:
    # Whoever edits a namespace may manage its VMs, and only read its hosts: a host names the
    # credentials and the storage roots that confine every tenant.
    tenant_roles = [_one("ClusterRole", n) for n in ("hyperv-operator-view", "hyperv-operator-edit")]
    for role in tenant_roles:
        for _, resource, verb in _normalized(role["rules"]):
            assert resource.startswith(("virtualmachines", "virtualmachineimages")) or verb in {"get", "list", "watch"}
            assert "clusterhypervhosts" not in resource
            assert "clustervirtualmachineimages" not in resource  # the cluster admin's
    assert {r for _, r, _ in _normalized(tenant_roles[1]["rules"])} == {"virtualmachines", "virtualmachineimages"}
    for name in ("hyperv-operator-host-admin", "hyperv-operator-clusterhost-view", "hyperv-operator-clusterimage-view"):
        role = _one("ClusterRole", name)
        assert not any("aggregate" in k for k in (role["metadata"].get("labels") or {})), name
    admin = _normalized(_one("ClusterRole", "hyperv-operator-host-admin")["rules"])
    assert ("hyperv-operator.io", "clusterhypervhosts", "create") in admin
    assert not any(r == "secrets" for _, r, _ in admin)


def test_webhook_configuration_targets_the_operator_service() -> None:
    config = _one("ValidatingWebhookConfiguration", "hyperv-operator")
    (hook,) = config["webhooks"]
    assert hook["name"] == "virtualmachines.validate.hyperv-operator.io"
    assert hook["clientConfig"]["service"] == {"name": "hyperv-operator-webhook", "namespace": NAMESPACE,
                                              "path": "/validate-vm", "port": 443}
    assert hook["rules"][0]["resources"] == ["virtualmachines"]
    assert hook["rules"][0]["operations"] == ["CREATE", "UPDATE"]
    assert hook["failurePolicy"] == "Fail" and hook["sideEffects"] == "None"
    service = _one("Service", "hyperv-operator-webhook")
    assert service["spec"]["selector"].items() <= _deployment()["spec"]["template"]["metadata"]["labels"].items()
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert service["spec"]["ports"][0]["targetPort"] == "webhook" and ports["webhook"] == 9443
    assert "--webhook-port=9443" in container["args"]


def test_namespace_enforces_restricted_pod_security() -> None:
    ns = _one("Namespace", NAMESPACE)
    labels = ns["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def _deployment() -> dict[str, Any]:
    return _one("Deployment", "hyperv-operator")


def _peering_name() -> str:
    (peering,) = [d for d in _docs() if d["kind"] == "ClusterKopfPeering"]
    assert peering["apiVersion"] == "kopf.dev/v1"
    return str(peering["metadata"]["name"])


def _arg(container: dict[str, Any], name: str) -> str | None:
    values = [a.split("=", 1)[1] for a in container["args"] if a.startswith(f"--{name}=")]
    assert len(values) <= 1
    return values[0] if values else None


def test_deployment_runs_an_active_and_a_standby_replica_through_peering() -> None:
    spec = _deployment()["spec"]
    assert spec["replicas"] == 2
    # A rollout never drops below two replicas: the new pod stands by before an old one stops.
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    (container,) = spec["template"]["spec"]["containers"]
    assert "--standalone" not in container["args"]
    assert _arg(container, "peering") == _peering_name()
    # Default priority (no --priority): by start time, so both pods of one template differ.
    assert _arg(container, "priority") is None
    assert _arg(container, "peering-lifetime") == "60"
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_peering_crd_is_kopfs_cluster_kind_and_in_the_crd_base() -> None:
    crd = yaml.safe_load((REPO / "crds" / "kopf.dev_clusterkopfpeerings.yaml").read_text())
    assert crd["metadata"]["name"] == "clusterkopfpeerings.kopf.dev"
    assert crd["spec"]["scope"] == "Cluster" and crd["spec"]["group"] == "kopf.dev"
    (version,) = crd["spec"]["versions"]
    assert version["name"] == "v1" and version["served"] and version["storage"]
    assert "subresources" not in version, "kopf merge-patches status on the object itself"
    assert version["schema"]["openAPIV3Schema"]["properties"]["status"]["x-kubernetes-preserve-unknown-fields"]


def test_deployment_template_runs_the_operator() -> None:
    spec = _deployment()["spec"]
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "hyperv-operator"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    (container,) = pod["containers"]
    assert container["image"] == "hyperv-operator:0.1.0"
    assert container["args"][:2] == ["run", "--all-namespaces"]
    assert "--metrics-port=8080" in container["args"]
    assert "--liveness-port=8081" in container["args"]


def test_deployment_probes_kopf_liveness_endpoint() -> None:
    (container,) = _deployment()["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "healthz": 8081, "webhook": 9443}
    probe = container["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert ports[probe["port"]] == 8081


def test_deployment_is_hardened() -> None:
    pod = _deployment()["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    resources = container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert set(mounts) == {"/tmp"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_metrics_service_selects_the_operator_pod() -> None:
    service = _one("Service", "hyperv-operator-metrics")
    pod_labels = _deployment()["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]


@pytest.mark.parametrize("kind", ["VirtualMachine", "HyperVHost"])
def test_argocd_cm_snippet_embeds_the_lua_files(kind: str) -> None:
    cm = yaml.safe_load((MANIFESTS / "argocd" / "argocd-cm.yaml").read_text())
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["name"] == "argocd-cm"
    script = (MANIFESTS / "argocd" / f"{kind.lower()}-health.lua").read_text()
    assert cm["data"][f"resource.customizations.health.hyperv-operator.io_{kind}"] == script
