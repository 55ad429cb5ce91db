"""VirtualMachineClass (issue 14): who may use a class, and what a VM naming one may still set."""

from __future__ import annotations

from hyperv_operator.api import VirtualMachineSpec
from hyperv_operator.tenancy import classes

SMALL = {"cpus": 2, "memory": "2Gi", "generation": 2, "namespaces": ["team-a"]}
OPEN = {"cpus": 2, "memory": "2Gi", "allowOverrides": True}
VM = {"hostRef": {"name": "hv1"}, "baseVhd": "C:\\B\\b.vhdx", "strategy": "Differencing", "className": "small"}


def test_no_class_no_check() -> None:
    assert classes.check("team-a", {"cpus": 64}, None) is None


def test_a_tenant_cannot_exceed_the_class() -> None:
    refusal = classes.check("team-a", {**VM, "cpus": 8, "memory": "64Gi"}, SMALL)
    assert refusal is not None and refusal.reason == "ClassOverrideRefused"
    assert "cpus, memory" in refusal.message
    assert classes.check("team-a", VM, SMALL) is None


def test_class_admits_only_its_namespaces() -> None:
    refusal = classes.check("team-b", VM, SMALL)
    assert refusal is not None and refusal.reason == "ClassNotAdmitted"
    missing = classes.check("team-a", VM, None)
    assert missing is not None and missing.reason == "ClassNotFound"


def test_effective_spec_takes_the_class_size() -> None:
    spec = VirtualMachineSpec.from_dict(classes.effective(VM, SMALL))
    assert (spec.cpus, spec.memory_bytes, spec.generation) == (2, 2 * 2**30, 2)


def test_overrides_only_where_the_class_allows_them() -> None:
    assert classes.check("any", {**VM, "cpus": 6}, OPEN) is None
    spec = VirtualMachineSpec.from_dict(classes.effective({**VM, "cpus": 6}, OPEN))
    assert (spec.cpus, spec.memory_bytes) == (6, 2 * 2**30)
    closed = VirtualMachineSpec.from_dict(classes.effective({**VM, "cpus": 6}, SMALL))
    assert closed.cpus == 2  # never the refused value, even if the webhook was bypassed


def test_the_shipped_class_sample_sizes_the_shipped_vm_sample() -> None:
    from pathlib import Path

    import yaml

    samples = Path(__file__).resolve().parents[3] / "manifests" / "samples"
    klass = yaml.safe_load((samples / "hyperv-operator.io_v1alpha1_virtualmachineclass.yaml").read_text())
    vm = yaml.safe_load((samples / "hyperv-operator.io_v1alpha1_virtualmachine_class_ip.yaml").read_text())
    assert vm["spec"]["className"] == klass["metadata"]["name"]
    assert classes.check("team-a", vm["spec"], klass["spec"]) is None
    spec = VirtualMachineSpec.from_dict(classes.effective(vm["spec"], klass["spec"]))
    assert (spec.cpus, spec.memory_bytes, spec.readiness.value) == (2, 2 * 2**30, "IPAddress")
