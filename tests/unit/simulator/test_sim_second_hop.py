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


def test_a_vm_on_the_share_runs_as_the_computer_account(domain_sim: Sim) -> None:
    disk = "\\\\FS\\VMSHARE\\VMs\\vm1\\vm1.vhdx"
    with acting_as(CREDSSP):  # creating files on the share needs the session's own access
        domain_sim.run(cmdlets.new_directory("\\\\FS\\VMSHARE\\VMs\\vm1"), cmdlets.new_differencing_vhd(disk, BASE))
        vm = domain_sim.one(cmdlets.new_vm("vm1", "\\\\FS\\VMSHARE\\VMs", disk, 2**30, 2, None))
    with acting_as(KERBEROS):  # no delegation: the share is out of reach for the session ...
        assert domain_sim.one(cmdlets.test_path(disk)).value is False
        domain_sim.run(cmdlets.start_vm(str(vm.get("Id"))))  # ... but the VM's I/O is the host's own
    assert [v["State"] for v in domain_sim.host.vms()] == ["Running"]


@pytest.mark.parametrize("who", [KERBEROS, NTLM, BASIC], ids=lambda i: i.auth)
def test_test_path_answers_each_path_of_its_array_on_its_own(domain_sim: Sim, who: SessionIdentity) -> None:
    """One Test-Path for several paths (as an observation sends it): the share the session may not
    reach is $false, the local paths are still answered, one bool per path in order."""
    domain_sim.host.add_folder("C:\\VMs")
    with acting_as(who):
        out = domain_sim.run(cmdlets.test_paths(["C:\\VMs", BASE, "C:\\nothing", "C:\\VMs"]))
    assert [o.value for o in out] == [True, False, False, True]
