"""Domain authentication over the real wire: WinRMClient (pypsrp) -> WSManServer -> SimulatedHost.

Kerberos against a real MIT KDC (the `kdc` fixture), CredSSP through pypsrp/requests-credssp against
pyspnego's acceptor, client-certificate auth over HTTPS; and the second hop: which of those sessions
may read a base on a file server.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hyperv_operator.envtest.kdc import KDC
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.errors import HostError
from hyperv_operator.hyperv.winrm import WinRMClient, WinRMSettings
from hyperv_operator.simulator.host import SimulatedHost
from hyperv_operator.simulator.identity import SecondHop
from hyperv_operator.simulator.tls import TLSFiles, generate_tls
from hyperv_operator.simulator.wsman import WSManServer

pytestmark = pytest.mark.integration

SHARE = "\\\\FS\\VMSHARE"
BASE = SHARE + "\\BASE.VHDX"
PRINCIPAL = "hvoperator@HV.TEST"
PASSWORD = "Kerb-Passw0rd-it"


@dataclass
class Domain:
    host: SimulatedHost
    server: WSManServer
    tls: TLSFiles
    kdc: KDC

    def settings(self, auth: str, **kw: object) -> WinRMSettings:
        base: dict[str, object] = {
            "server": "localhost", "port": self.server.port, "ssl": True, "auth": auth,
            "ca_bundle": str(self.tls.ca_cert), "read_timeout": 10, "operation_timeout": 8,
        }
        base.update(kw)
        return WinRMSettings(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def domain(kdc: KDC, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Domain]:
    host = SimulatedHost()
    host.add_folder(SHARE)
    host.add_base_disk(BASE, 1024**3, acl_read_only=True)
    host.second_hop = SecondHop(host_name="HV01", file_servers={"FS"})
    tls = generate_tls(tmp_path_factory.mktemp("tls-domain"), client_common_name="hvcert")
    server = WSManServer(
        host, username="hvadmin", password="Ntlm-Passw0rd", ntlm=True, credssp=True,
        kerberos_keytab=str(kdc.keytab("HTTP/localhost")),
        client_ca=str(tls.ca_cert), client_certificates={"hvcert": "HV01\\hvcert"},
    ).start(host="127.0.0.1", tls=tls.server_pair)
    yield Domain(host, server, tls, kdc)
    server.stop()


def _run(settings: WinRMSettings, statements: list) -> list:  # type: ignore[type-arg]
    client = WinRMClient(settings)
    try:
        return asyncio.run(client.run(statements))
    finally:
        client.close_sync()


def _test_path(domain: Domain, settings: WinRMSettings) -> bool:
    out = _run(settings, [cmdlets.test_path(BASE)])
    return bool(out[0].value)


def test_kerberos_with_password_authenticates_against_the_kdc(domain: Domain) -> None:
    before = len(domain.server.identities)
    _run(domain.settings("kerberos", username=PRINCIPAL, password=PASSWORD), [cmdlets.test_path("C:\\")])
    who = domain.server.identities[before]
    assert (who.user, who.auth) == (PRINCIPAL, "kerberos")


def test_kerberos_with_keytab_and_message_encryption_over_http(domain: Domain, tmp_path: Path) -> None:
    before, encrypted = len(domain.server.identities), domain.server.encrypted_requests
    plain = WSManServer(domain.host, username="x", password="y", basic=False,
                        kerberos_keytab=str(domain.kdc.keytab("HTTP/localhost"))).start(host="127.0.0.1")
    try:
        settings = WinRMSettings(server="localhost", port=plain.port, ssl=False, auth="kerberos",
                                 username=PRINCIPAL, keytab=str(domain.kdc.keytab("hvoperator")),
                                 read_timeout=10, operation_timeout=8)
        _run(settings, [cmdlets.test_path("C:\\")])
        assert plain.encrypted_requests > 0
        assert [(i.user, i.auth) for i in plain.identities] == [(PRINCIPAL, "kerberos")]
    finally:
        plain.stop()
    assert len(domain.server.identities) == before and domain.server.encrypted_requests == encrypted


def test_negotiate_chooses_kerberos(domain: Domain) -> None:
    before = len(domain.server.identities)
    _run(domain.settings("negotiate", username=PRINCIPAL, password=PASSWORD), [cmdlets.test_path("C:\\")])
    assert domain.server.identities[before].auth == "kerberos"


def test_wrong_kerberos_password_is_an_authentication_error(domain: Domain) -> None:
    with pytest.raises(HostError) as info:
        _run(domain.settings("kerberos", username=PRINCIPAL, password="wrong"), [cmdlets.test_path("C:\\")])
    assert "wrong" not in str(info.value)


def test_credssp_session_holds_a_delegated_credential(domain: Domain) -> None:
    before = len(domain.server.identities)
    assert _test_path(domain, domain.settings("credssp", username="hvadmin", password="Ntlm-Passw0rd"))
    who = domain.server.identities[before]
    assert who.auth == "credssp" and who.delegated_credential


def test_certificate_auth_maps_the_client_certificate_to_a_user(domain: Domain) -> None:
    before = len(domain.server.identities)
    settings = domain.settings("certificate", cert_pem=str(domain.tls.client_cert), key_pem=str(domain.tls.client_key))
    _run(settings, [cmdlets.test_path("C:\\")])
    who = domain.server.identities[before]
    assert (who.user, who.auth) == ("HV01\\hvcert", "certificate")


def test_second_hop_kerberos_without_delegation_ntlm_and_basic_are_denied(domain: Domain) -> None:
    for settings in (
        domain.settings("kerberos", username=PRINCIPAL, password=PASSWORD),
        domain.settings("ntlm", username="hvadmin", password="Ntlm-Passw0rd"),
        domain.settings("basic", username="hvadmin", password="Ntlm-Passw0rd"),
    ):
        assert _test_path(domain, settings) is False, settings.auth
        with pytest.raises(HostError) as info:
            _run(settings, [cmdlets.get_item(BASE)])
        assert info.value.fq_error_id == (
            "ItemExistsUnauthorizedAccessError,Microsoft.PowerShell.Commands.GetItemCommand")
        with pytest.raises(HostError) as vhd:
            _run(settings, [cmdlets.get_vhd(BASE)])
        assert vhd.value.fq_error_id == "AccessDenied,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD"


def test_second_hop_credssp_and_kerberos_with_smb_delegation_succeed(domain: Domain) -> None:
    assert _test_path(domain, domain.settings("credssp", username="hvadmin", password="Ntlm-Passw0rd"))
    assert domain.host.second_hop is not None
    domain.host.second_hop.enable_smb_delegation("FS")
    try:
        assert _test_path(domain, domain.settings("kerberos", username=PRINCIPAL, password=PASSWORD))
        assert not _test_path(domain, domain.settings("ntlm", username="hvadmin", password="Ntlm-Passw0rd"))
    finally:
        domain.host.second_hop.kerberos_delegation_to.clear()


def test_check_host_detects_the_second_hop_and_prints_the_fix(domain: Domain) -> None:
    from hyperv_operator.preflight import run_checks

    def checks(settings: WinRMSettings) -> dict[str, str]:
        client = WinRMClient(settings)
        try:
            found = asyncio.run(run_checks(client, BASE, None))
        finally:
            client.close_sync()
        return {c.name: f"{c.verdict} {c.detail}" for c in found}

    denied = checks(domain.settings("kerberos", username=PRINCIPAL, password=PASSWORD))["second hop"]
    assert denied.startswith("FAIL") and f"session of {PRINCIPAL} over kerberos" in denied
    assert "Enable-SmbDelegation -SmbServer FS -SmbClient HV01" in denied and "auth: credssp" in denied
    ok = checks(domain.settings("credssp", username="hvadmin", password="Ntlm-Passw0rd"))["second hop"]
    assert ok.startswith("OK") and "FS is reachable" in ok


def test_kerberos_failures_name_the_cause_and_are_permanent(domain: Domain) -> None:
    from hyperv_operator.hyperv.errors import PermanentHostError

    with pytest.raises(PermanentHostError) as wrong:
        _run(domain.settings("kerberos", username=PRINCIPAL, password="wrong-one"), [cmdlets.test_path("C:\\")])
    assert "refused the password" in str(wrong.value) and "wrong-one" not in str(wrong.value)
    with pytest.raises(PermanentHostError) as by_ip:
        _run(domain.settings("kerberos", server="127.0.0.1", username=PRINCIPAL, password=PASSWORD,
                             cert_validation=False, ca_bundle=None), [cmdlets.test_path("C:\\")])
    assert "no service principal HTTP/127.0.0.1" in str(by_ip.value)


def test_credssp_over_http_uses_credssp_message_encryption(domain: Domain) -> None:
    plain = WSManServer(domain.host, username="hvadmin", password="Ntlm-Passw0rd", basic=False,
                        credssp=True).start(host="127.0.0.1")
    try:
        settings = WinRMSettings(server="localhost", port=plain.port, ssl=False, auth="credssp", username="hvadmin",
                                 password="Ntlm-Passw0rd", read_timeout=10, operation_timeout=8)
        assert _test_path(domain, settings)  # the share: the delegated credential reaches FS
        assert plain.encrypted_requests > 0
        assert [(i.auth, i.delegated_credential) for i in plain.identities] == [("credssp", True)]
    finally:
        plain.stop()
