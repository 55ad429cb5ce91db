"""The tenancy decision for one VM: host existence, namespace admission, storage confinement."""

from __future__ import annotations

from typing import Any

import pytest

from hyperv_operator.tenancy.policy import check_vm, host_problems, selector_matches

HOST: dict[str, Any] = {
    "address": "hv01",
    "defaultVmPath": "\\\\FS\\VMS\\default",
    "namespaceSelector": {"matchLabels": {"hyperv-operator.io/tenant": "true"}},
    "storage": {"baseRoots": ["\\\\FS\\BASES", "\\\\FS\\GOLD"], "vmRoots": ["\\\\FS\\VMS", "\\\\FS\\BASES"]},
}
TENANT = {"hyperv-operator.io/tenant": "true"}


def vm(**spec: Any) -> dict[str, Any]:
    return {"hostRef": {"name": "shared", "kind": "ClusterHyperVHost"}, "baseVhd": "\\\\FS\\BASES\\BASE.VHDX",
            "strategy": "Differencing", **spec}


CASES: list[tuple[str, dict[str, Any], dict[str, Any] | None, dict[str, str] | None, str | None]] = [
    ("allowed", vm(), HOST, TENANT, None),
    ("quick beside a writable base", vm(strategy="Quick"), HOST, TENANT, None),
    ("vmPath inside", vm(vmPath="\\\\fs\\vms\\team-a\\"), HOST, TENANT, None),
    ("$ inside a name is literal", vm(baseVhd="\\\\FS\\BASES\\win$11.vhdx"), HOST, TENANT, None),
    ("host missing", vm(), None, TENANT, "HostNotFound"),
    ("namespace not labelled", vm(), HOST, {}, "NamespaceNotAdmitted"),
    ("namespace unknown", vm(), HOST, None, "NamespaceNotAdmitted"),
    ("system file", vm(baseVhd="C:\\Windows\\System32\\x.vhdx"), HOST, TENANT, "BaseOutsideAllowedRoots"),
    ("attacker SMB", vm(baseVhd="\\\\attacker\\share\\base.vhdx"), HOST, TENANT, "BaseOutsideAllowedRoots"),
    ("prefix trick", vm(baseVhd="\\\\FS\\BASES2\\b.vhdx"), HOST, TENANT, "BaseOutsideAllowedRoots"),
    ("another team's disk", vm(baseVhd="\\\\FS\\VMS\\team-b\\vm.vhdx"), HOST, TENANT, "BaseOutsideAllowedRoots"),
    ("vmPath C:", vm(vmPath="C:\\"), HOST, TENANT, "VmPathOutsideAllowedRoots"),
    ("quick beside a read-only base", vm(strategy="Quick", baseVhd="\\\\FS\\GOLD\\B.VHDX"), HOST, TENANT,
     "QuickCheckpointOutsideAllowedRoots"),
    # An image's Quick VM on another share may run on that share's cached copy: decided with its base
    # (images: choose_vm_base), not here. Its image's file must still be inside a base root.
    ("image quick on another share", vm(strategy="Quick", baseVhd="\\\\FS\\GOLD\\B.VHDX", imageRef={"name": "w"}),
     HOST, TENANT, None),
    ("image quick outside base roots", vm(strategy="Quick", baseVhd="\\\\FS\\VMS\\b\\B.VHDX", imageRef={"name": "w"}),
     HOST, TENANT, "BaseOutsideAllowedRoots"),
    ("dot-dot", vm(baseVhd="\\\\FS\\BASES\\..\\VMS\\x.vhdx"), HOST, TENANT, "InvalidPath"),
    ("pipe", vm(vmPath="\\\\.\\pipe\\x"), HOST, TENANT, "InvalidPath"),
    ("no storage on the host", vm(), {**HOST, "storage": None}, TENANT, "HostStorageNotConfigured"),
    ("default outside roots", vm(), {**HOST, "defaultVmPath": "C:\\VMs"}, TENANT, "HostStorageNotConfigured"),
    ("bad kind", vm(hostRef={"name": "x", "kind": "Node"}), HOST, TENANT, "InvalidHostRef"),
]


@pytest.mark.parametrize(("spec", "host", "labels", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_check_vm(spec: dict[str, Any], host: dict[str, Any] | None, labels: dict[str, str] | None,
                  reason: str | None) -> None:
    refusal = check_vm("team-a", spec, host, labels)
    assert (refusal.reason if refusal else None) == reason


def test_namespaced_host_ignores_the_selector() -> None:
    spec = vm(hostRef={"name": "hv01"})
    assert check_vm("team-a", spec, {**HOST, "namespaceSelector": None}, None) is None


@pytest.mark.parametrize(("selector", "labels", "matches"), [
    (None, {"a": "1"}, False),
    ({}, {}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"}, True),
    ({"matchLabels": {"a": "1"}}, {"a": "2"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1", "2"]}]}, {"a": "2"}, True),
    ({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {}, False),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {}, True),
    ({"matchExpressions": [{"key": "a", "operator": "NotIn", "values": ["1"]}]}, {"a": "1"}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": ""}, True),
    ({"matchExpressions": [{"key": "a", "operator": "DoesNotExist"}]}, {"a": ""}, False),
    ({"matchExpressions": [{"key": "a", "operator": "Bogus"}]}, {"a": ""}, False),
])
def test_selector(selector: dict[str, Any] | None, labels: dict[str, str], matches: bool) -> None:
    assert selector_matches(selector, labels) is matches


def test_host_problems() -> None:
    assert host_problems(HOST) == []
    assert "vmRoots" in host_problems({**HOST, "defaultVmPath": "D:\\x"})[0]
    assert "8.3" in host_problems({**HOST, "storage": {"baseRoots": ["C:\\PROGRA~1"], "vmRoots": ["D:\\"]}})[0]


def test_quick_checkpoint_lands_beside_the_base_it_runs_on() -> None:
    from hyperv_operator.tenancy.policy import quick_checkpoint_on_host

    assert quick_checkpoint_on_host("\\\\FS\\VMS\\ImageCache\\cluster.w\\g1\\B.VHDX", HOST) is None
    refused = quick_checkpoint_on_host("\\\\FS\\GOLD\\B.VHDX", HOST)
    assert refused is not None and refused.reason == "QuickCheckpointOutsideAllowedRoots"
    assert quick_checkpoint_on_host("\\\\FS\\VMS\\..\\x.vhdx", HOST) is not None
    assert quick_checkpoint_on_host("\\\\FS\\VMS\\b.vhdx", {**HOST, "storage": None}) is not None
