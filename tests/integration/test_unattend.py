"""Issue 14, unattend.xml for sysprepped Windows bases (spec.bootstrap.format Unattend), through the real
API server, the operator process and the simulated host over WinRM: the Secret's unattend.xml is
written into the VM's own disk before its first start, the simulated Windows Setup applies it (its
ComputerName is the guest's hostname in KVP), the base is byte-identical, and the Secret's content
shows nowhere in the VM's status or events. The API server refuses format Unattend with Quick."""

from __future__ import annotations

import json
import uuid
from typing import Any

import kubernetes
import pytest

from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import SHARE, SimulatedHyperV
from tests.integration.conftest import NAMESPACE
from tests.integration.kube import Kube, condition

MARKER = "Pw-" + uuid.uuid4().hex[:10]


def _answer(computer: str) -> str:
    return ('<?xml version="1.0" encoding="utf-8"?>\n<unattend xmlns="urn:schemas-microsoft-com:unattend">'
            '<settings pass="specialize"><component name="Microsoft-Windows-Shell-Setup" '
            'processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" '
            f'versionScope="nonSxS"><ComputerName>{computer}</ComputerName></component></settings>'
            '<settings pass="oobeSystem"><component name="Microsoft-Windows-Shell-Setup" '
            'processorArchitecture="amd64" publicKeyToken="31bf3856ad364e35" language="neutral" '
            'versionScope="nonSxS"><UserAccounts><AdministratorPassword>'
            f'<Value>{MARKER}</Value><PlainText>true</PlainText></AdministratorPassword></UserAccounts>'
            '</component></settings></unattend>')


def _ready(obj: dict[str, Any]) -> bool:
    return (condition(obj, "Ready") or {}).get("status") == "True"


def test_unattend_xml_reaches_windows_setup_and_the_base_is_untouched(
    sim: SimulatedHyperV, kube: Kube, running_operator: OperatorProcess
) -> None:
    name = f"win-{uuid.uuid4().hex[:6]}"
    base = f"{SHARE}\\WIN-{name}.VHDX"
    sim.host.add_windows_base(base, 64 * 1024 * 1024)
    before = sim.host.disk_fingerprint(base)
    computer = name.upper()[:15]
    kube.core.create_namespaced_secret(NAMESPACE, kubernetes.client.V1Secret(
        metadata=kubernetes.client.V1ObjectMeta(name=f"{name}-init"), string_data={"unattend.xml": _answer(computer)}))
    kube.create_vm(NAMESPACE, name, "Differencing", baseVhd=base,
                   bootstrap={"secretRef": {"name": f"{name}-init"}, "format": "Unattend"})
    done = kube.wait_vm(NAMESPACE, name, lambda o: _ready(o)
                        and (o["status"].get("bootstrap") or {}).get("state") == "Applied",
                        timeout=120, what="Ready with unattend.xml applied")
    status = done["status"]
    assert status["guest"]["hostname"] == computer  # Windows Setup applied ComputerName (KVP)
    assert sim.host.guest_answer_file(status["vmId"]) == "Windows\\Panther\\unattend.xml"
    own = str(status["disk"]["path"])
    assert sim.host.os_files(own)["Windows\\Panther\\unattend.xml"] == _answer(computer).encode()  # bytes unchanged
    assert sim.host.disk_fingerprint(base) == before  # the base is byte-identical
    assert "Windows\\Panther\\unattend.xml" not in sim.host.os_files(base)
    assert MARKER not in json.dumps(done)
    events = kube.events_for(NAMESPACE, name)
    assert any(e.reason == "UnattendWritten" for e in events) and any(e.reason == "BootstrapCompleted" for e in events)
    assert not any(MARKER in (e.message or "") for e in events)
    kube.delete_vm(NAMESPACE, name)
    kube.wait_gone(NAMESPACE, name)
    assert sim.host.disk_fingerprint(base) == before


def test_the_api_server_refuses_unattend_with_quick(kube: Kube) -> None:
    with pytest.raises(kubernetes.client.ApiException) as refused:
        kube.create_vm(NAMESPACE, f"winq-{uuid.uuid4().hex[:6]}", "Quick",
                       bootstrap={"secretRef": {"name": "x"}, "format": "Unattend"})
    assert refused.value.status == 422 and "bootstrap.format Unattend needs strategy" in str(refused.value.body)
