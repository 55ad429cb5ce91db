"""The second hop on the simulated host: which session identities may reach a file server's share."""

from __future__ import annotations

import pytest

from hyperv_operator.hyperv import cmdlets
from hyperv_operator.simulator.identity import SecondHop, SessionIdentity, acting_as

from .conftest import BASE, Sim

KERBEROS = SessionIdentity("op@HV.TEST", "kerberos")
NTLM = SessionIdentity("HV01\\op", "ntlm")
BASIC = SessionIdentity("op", "basic")
CREDSSP = SessionIdentity("HV\\op", "credssp", delegated_credential=True)


@pytest.fixture
def domain_sim(sim: Sim) -> Sim:
    sim.host.second_hop = SecondHop(host_name="HV01", file_servers={"FS"})
    return sim


@pytest.mark.parametrize("who", [KERBEROS, NTLM, BASIC], ids=lambda i: i.auth)
def test_network_logon_sessions_are_denied_on_the_share(domain_sim: Sim, who: SessionIdentity) -> None:
    with acting_as(who):
        assert domain_sim.one(cmdlets.test_path(BASE)).value is False  # $false, not an error
        item = domain_sim.fails(cmdlets.get_item(BASE))
        vhd = domain_sim.fails(cmdlets.get_vhd(BASE))
        folder = domain_sim.fails(cmdlets.new_directory("\\\\FS\\VMSHARE\\VMs\\x"))
    assert item.fq_error_id == "ItemExistsUnauthorizedAccessError,Microsoft.PowerShell.Commands.GetItemCommand"
    assert item.category == "PermissionDenied" and item.exception_type == "System.UnauthorizedAccessException"
    assert vhd.fq_error_id == "AccessDenied,Microsoft.Vhd.PowerShell.Cmdlets.GetVHD"
    assert folder.category == "PermissionDenied"
    assert "\\\\FS\\VMSHARE\\VMs\\x" not in domain_sim.host.folders()


def test_credssp_and_kerberos_with_smb_delegation_reach_the_share(domain_sim: Sim) -> None:
    with acting_as(CREDSSP):
        assert domain_sim.one(cmdlets.test_path(BASE)).value is True
    assert domain_sim.host.second_hop is not None
    domain_sim.host.second_hop.enable_smb_delegation("fs")
    with acting_as(KERBEROS):
        assert domain_sim.one(cmdlets.test_path(BASE)).value is True
        assert domain_sim.one(cmdlets.get_vhd(BASE)).get("VhdType") == "Dynamic"
    with acting_as(NTLM):  # constrained delegation starts from a Kerberos logon
        assert domain_sim.one(cmdlets.test_path(BASE)).value is False


def test_local_paths_and_hosts_without_the_model_are_unaffected(sim: Sim, domain_sim: Sim) -> None:
    with acting_as(KERBEROS):
        assert domain_sim.one(cmdlets.test_path("C:\\nothing")).value is False
        domain_sim.host.second_hop = None
        assert domain_sim.one(cmdlets.test_path(BASE)).value is True
