"""Domain hosts end to end: the operator process provisions every strategy on a UNC base over Kerberos
(keytab, real MIT KDC, host allowed to delegate to the file server), CredSSP and certificate auth; over
Kerberos without delegation the same VM is Stalled with the second-hop reason, not BaseDiskNotFound.
No password, keytab or private key reaches the operator log, a status or an event."""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hyperv_operator.envtest.controlplane import ControlPlane
from hyperv_operator.envtest.domain import DomainHyperV, domain_host_objects
from hyperv_operator.envtest.kdc import KDC
from hyperv_operator.envtest.operator_process import OperatorProcess
from hyperv_operator.envtest.stack import BASE_VHD, apply_objects
from tests.integration import hostview
from tests.integration.conftest import NAMESPACE, TIME_SCALE
from tests.integration.kube import Kube, condition

pytestmark = pytest.mark.integration

STRATEGIES = ["Differencing", "Copy", "Quick"]
PRINCIPAL = "hvoperator@HV.TEST"
PASSWORD = "Kerb-Passw0rd-it"  # the conftest's kdc fixture


def _start(kdc: KDC, delegation: bool, host_name: str) -> DomainHyperV:
    return DomainHyperV(kdc=kdc, delegation=delegation, host_name=host_name, time_scale=TIME_SCALE,
                        guest_write_bytes_per_second=20e3).start()


@pytest.fixture(scope="module")
def domain_hosts(kdc: KDC, control_plane: ControlPlane, operator: OperatorProcess) -> Iterator[dict[str, Any]]:
    delegating, plain = _start(kdc, True, "HV11"), _start(kdc, False, "HV12")
    keytab = kdc.keytab("hvoperator").read_bytes()
    objects = [
        *domain_host_objects(NAMESPACE, "dom-kerberos", delegating, "kerberos", principal=PRINCIPAL, keytab=keytab),
        *domain_host_objects(NAMESPACE, "dom-credssp", plain, "credssp"),
        *domain_host_objects(NAMESPACE, "dom-certificate", plain, "certificate"),
        *domain_host_objects(NAMESPACE, "dom-kerberos-nodeleg", plain, "kerberos", principal=PRINCIPAL,
                             keytab=keytab),
        *domain_host_objects(NAMESPACE, "dom-negotiate-password", delegating, "negotiate", principal=PRINCIPAL,
                             password=PASSWORD),
    ]
    apply_objects(control_plane, objects)
    assert plain.tls.client_key is not None
    secrets = [base64.b64encode(keytab).decode(), PASSWORD, plain.password, delegating.password,
               plain.tls.client_key.read_text().splitlines()[1]]
    yield {"delegating": delegating, "plain": plain, "secrets": secrets}
    delegating.stop()
    plain.stop()


def _assert_provisioned(sim: DomainHyperV, obj: dict[str, Any], strategy: str) -> None:
    vms = hostview.vms_tagged(sim, obj["metadata"]["uid"])
    assert len(vms) == 1 and vms[0]["State"] == "Running"
    drive = hostview.drive_paths(sim, vms[0]["Id"])
    disk = hostview.vhd(sim, drive[0])
    if strategy == "Differencing":
        assert disk["ParentPath"].lower() == BASE_VHD.lower()
    else:
        assert not disk.get("ParentPath")


@pytest.mark.parametrize(("host", "sim_key", "auth"), [
    ("dom-kerberos", "delegating", "kerberos"),
    ("dom-credssp", "plain", "credssp"),
    ("dom-certificate", "plain", "certificate"),
])
def test_every_strategy_on_a_unc_base_over_domain_auth(
    host: str, sim_key: str, auth: str, domain_hosts: dict[str, Any], kube: Kube, running_operator: OperatorProcess
) -> None:
    sim: DomainHyperV = domain_hosts[sim_key]
    names = {s: f"{host[4:8]}-{s.lower()}-{uuid.uuid4().hex[:5]}" for s in STRATEGIES}
    for strategy, name in names.items():
        kube.create_vm(NAMESPACE, name, strategy, host=host)
    for strategy, name in names.items():
        obj = kube.wait_phase(NAMESPACE, name, "Provisioned", timeout=120)
        _assert_provisioned(sim, obj, strategy)
    # The sessions that did it authenticated the way the HyperVHost says.
    assert auth in {i.auth for i in sim.server.identities}
    if auth == "kerberos":
        assert PRINCIPAL in {i.user for i in sim.server.identities if i.auth == "kerberos"}


def test_negotiate_with_a_password_in_the_secret_chooses_kerberos(
    domain_hosts: dict[str, Any], kube: Kube, running_operator: OperatorProcess
) -> None:
    import time

    sim: DomainHyperV = domain_hosts["delegating"]
    deadline = time.monotonic() + 60
    reachable: dict[str, Any] | None = None
    while time.monotonic() < deadline:
        reachable = condition(kube.get_host(NAMESPACE, "dom-negotiate-password"), "Reachable")
        if reachable is not None and reachable["status"] == "True":
            break
        time.sleep(0.3)
    assert reachable is not None and reachable["status"] == "True", reachable
    assert ("kerberos", PRINCIPAL) in {(i.auth, i.user) for i in sim.server.identities}


def test_kerberos_without_delegation_stalls_with_the_second_hop_reason(
    domain_hosts: dict[str, Any], kube: Kube, running_operator: OperatorProcess
) -> None:
    sim: DomainHyperV = domain_hosts["plain"]
    name = f"nodeleg-{uuid.uuid4().hex[:6]}"
    kube.create_vm(NAMESPACE, name, "Differencing", host="dom-kerberos-nodeleg")
    obj = kube.wait_vm(NAMESPACE, name, lambda o: (condition(o, "Stalled") or {}).get("status") == "True",
                       what="Stalled=True")
    stalled = condition(obj, "Stalled")
    assert stalled is not None and stalled["reason"] == "BaseDiskAccessDenied"
    message = stalled["message"]
    assert "second hop" in message and "credssp" in message
    assert "Enable-SmbDelegation -SmbServer FS -SmbClient" in message
    assert hostview.vms_tagged(sim, obj["metadata"]["uid"]) == []
    assert obj["status"].get("createdFiles") in (None, [])
    mutating = [c for c in sim.host.call_log() if hostview.is_mutating(c[0]) and name in repr(c[1])]
    assert mutating == []


def test_no_domain_credential_in_log_status_or_events(
    domain_hosts: dict[str, Any], kube: Kube, running_operator: OperatorProcess
) -> None:
    log = running_operator.log_text()
    assert log
    texts = [log]
    for host in ("dom-kerberos", "dom-credssp", "dom-certificate", "dom-kerberos-nodeleg", "dom-negotiate-password"):
        texts.append(repr(kube.get_host(NAMESPACE, host).get("status")))
    vms = kube.objects.list_namespaced_custom_object("hyperv-operator.io", "v1alpha1", NAMESPACE, "virtualmachines")
    texts += [repr(v.get("status")) for v in vms["items"]]
    texts += [repr(e.message) for e in kube.core.list_namespaced_event(NAMESPACE).items]
    for secret in domain_hosts["secrets"]:
        assert secret and not any(secret in t for t in texts), "a credential leaked into the log, a status or an event"
