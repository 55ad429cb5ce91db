"""The local control plane is a real Kubernetes API server: schema, CEL, printer columns, generation."""

from __future__ import annotations

import json
import time
import uuid

import pytest

from hyperv_operator.envtest.controlplane import ControlPlane

pytestmark = pytest.mark.integration


def _vm(name: str, *, base: str = "\\\\FS\\VMSHARE\\BASE.VHDX", strategy: str = "Quick", memory: str = "1Gi") -> str:
    return json.dumps(
        {
            "apiVersion": "hyperv-operator.io/v1alpha1",
            "kind": "VirtualMachine",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"hostRef": {"name": "hv01"}, "baseVhd": base, "strategy": strategy, "memory": memory},
        }
    )


def _name() -> str:
    return "cp-" + uuid.uuid4().hex[:8]


def test_valid_vm_is_accepted_with_defaults(control_plane: ControlPlane) -> None:
    name = _name()
    control_plane.kubectl("apply", "-f", "-", input_text=_vm(name))
    obj = json.loads(control_plane.kubectl("get", "hvvm", name, "-o", "json").stdout)
    # Sizes are not defaulted by the schema (a VirtualMachineClass may set them); the operator reads an
    # unset generation as 2 (api.VirtualMachineSpec).
    assert "generation" not in obj["spec"] and "cpus" not in obj["spec"]
    assert obj["spec"]["readiness"] == "Heartbeat" and obj["spec"]["updatePolicy"] == "OnPowerOff"
    assert obj["spec"]["powerState"] == "Running"
    assert obj["spec"]["deletionPolicy"] == "Delete"
    assert obj["metadata"]["generation"] == 1


@pytest.mark.parametrize(
    ("base", "strategy", "memory", "expected"),
    [
        ("\\\\FS\\VMSHARE\\BASE.VHD", "Quick", "1Gi", "spec.baseVhd"),
        ("\\\\FS\\VMSHARE\\x'; Remove-Item C:\\ -Recurse; '.vhdx", "Quick", "1Gi", "spec.baseVhd"),
        ("\\\\FS\\VMSHARE\\..\\secret.vhdx", "Quick", "1Gi", "'..'"),
        ("\\\\FS\\VMSHARE\\BASE.VHDX", "Linked", "1Gi", "spec.strategy"),
        ("\\\\FS\\VMSHARE\\BASE.VHDX", "Copy", "1Mi", "memory must be between 32Mi and 1Ti"),
        ("\\\\FS\\VMSHARE\\BASE.VHDX", "Copy", "lots", "spec.memory"),
    ],
)
def test_schema_and_cel_reject_bad_specs_with_the_servers_error(
    control_plane: ControlPlane, base: str, strategy: str, memory: str, expected: str
) -> None:
    result = control_plane.kubectl(
        "apply", "-f", "-", input_text=_vm(_name(), base=base, strategy=strategy, memory=memory), check=False
    )
    assert result.returncode != 0
    assert "is invalid" in result.stderr
    assert expected in result.stderr


def test_immutable_fields_are_enforced_by_cel(control_plane: ControlPlane) -> None:
    name = _name()
    control_plane.kubectl("apply", "-f", "-", input_text=_vm(name))
    result = control_plane.kubectl(
        "patch", "hvvm", name, "--type=merge", "-p", '{"spec":{"strategy":"Copy"}}', check=False
    )
    assert result.returncode != 0
    assert "strategy is immutable" in result.stderr


def test_generation_bumps_on_spec_change_not_on_status_change(control_plane: ControlPlane) -> None:
    name = _name()
    control_plane.kubectl("apply", "-f", "-", input_text=_vm(name))
    control_plane.kubectl(
        "patch", "hvvm", name, "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Pending"}}'
    )
    obj = json.loads(control_plane.kubectl("get", "hvvm", name, "-o", "json").stdout)
    assert obj["metadata"]["generation"] == 1
    assert obj["status"]["phase"] == "Pending"
    control_plane.kubectl("patch", "hvvm", name, "--type=merge", "-p", '{"spec":{"powerState":"Off"}}')
    obj = json.loads(control_plane.kubectl("get", "hvvm", name, "-o", "json").stdout)
    assert obj["metadata"]["generation"] == 2


def test_unknown_status_fields_are_pruned(control_plane: ControlPlane) -> None:
    name = _name()
    control_plane.kubectl("apply", "-f", "-", input_text=_vm(name))
    control_plane.kubectl(
        "patch",
        "hvvm",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Copying","notInSchema":1,"copy":{"percent":40}}}',
    )
    status = json.loads(control_plane.kubectl("get", "hvvm", name, "-o", "json").stdout)["status"]
    # (the operator, if running, may add its own conditions meanwhile: only pruning is judged here)
    assert "notInSchema" not in status and status.get("copy") == {"percent": 40}, status


def test_printer_columns_show_in_kubectl_get(control_plane: ControlPlane) -> None:
    name = _name()
    control_plane.kubectl("apply", "-f", "-", input_text=_vm(name))
    control_plane.kubectl(
        "patch",
        "hvvm",
        name,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"CopyingBase","powerState":"Running","copy":{"percent":42},'
        '"vmId":"0b5b6a33-0000-4000-8000-000000000001","disk":{"path":"C:\\\\VMs\\\\x.avhdx"}}}',
    )
    out = control_plane.kubectl("get", "hvvm", name).stdout.splitlines()
    assert out[0].split() == ["NAME", "PHASE", "STRATEGY", "HOST", "POWER", "READY", "IP", "PROGRESS", "AGE"]
    assert out[1].split()[:5] == [name, "CopyingBase", "Quick", "hv01", "Running"]
    assert "42" in out[1].split()
    wide = control_plane.kubectl("get", "hvvm", name, "-o", "wide").stdout.splitlines()
    assert wide[0].split()[-2:] == ["VM-ID", "DISK"]
    assert "0b5b6a33-0000-4000-8000-000000000001" in wide[1]
    short = control_plane.kubectl("get", "hyperv").stdout
    assert name in short


def test_kubectl_explain_shows_field_descriptions(control_plane: ControlPlane) -> None:
    deadline = time.monotonic() + 30
    result = control_plane.kubectl("explain", "virtualmachine.spec.strategy", check=False)
    while result.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)  # the OpenAPI document is published a few seconds after the CRD
        result = control_plane.kubectl("explain", "virtualmachine.spec.strategy", check=False)
    assert result.returncode == 0, result.stderr
    text = " ".join(result.stdout.split())
    assert "Differencing: a child disk on the base" in text
    assert "Quick:" in text


def test_operator_identity_is_not_an_admin(control_plane: ControlPlane) -> None:
    result = control_plane.kubectl(
        "auth", "can-i", "delete", "namespaces", kubeconfig=control_plane.operator_kubeconfig, check=False
    )
    assert result.stdout.strip() == "no"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"vmPath": "C:\\VMs.\\web"}, "ending in a space or a period"),
        ({"vmPath": "C:\\VMs \\web"}, "ending in a space or a period"),
        ({"vmPath": "C:\\CON\\web"}, "reserved Windows device name"),
        ({"baseVhd": "\\\\FS\\VMSHARE\\nul.txt\\BASE.VHDX"}, "reserved Windows device name"),
        ({"vmPath": "C:\\VMs\\a\tb"}, "spec.vmPath"),  # control characters: the pattern refuses them
        ({"generation": 1, "secureBoot": {"enabled": True}}, "generation 2 VMs only"),
        ({"secureBoot": {"template": "Linux"}}, "spec.secureBoot.template"),
    ],
)
def test_names_windows_forbids_and_secure_boot_rules_are_rejected_at_apply(
    control_plane: ControlPlane, extra: dict[str, object], expected: str
) -> None:
    body = json.loads(_vm(_name()))
    body["spec"].update(extra)
    result = control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(body), check=False)
    assert result.returncode != 0 and expected in result.stderr, result.stderr


def test_secure_boot_for_linux_is_accepted(control_plane: ControlPlane) -> None:
    body = json.loads(_vm(_name()))
    body["spec"]["secureBoot"] = {"template": "MicrosoftUEFICertificateAuthority"}
    control_plane.kubectl("apply", "-f", "-", input_text=json.dumps(body))
    obj = json.loads(control_plane.kubectl("get", "hvvm", body["metadata"]["name"], "-o", "json").stdout)
    assert obj["spec"]["secureBoot"] == {"enabled": True, "template": "MicrosoftUEFICertificateAuthority"}
