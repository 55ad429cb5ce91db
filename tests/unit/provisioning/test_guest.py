"""Guest readiness (issue 14): parsing what integration services report, and Ready per spec.readiness."""

from __future__ import annotations

from tests.unit.provisioning.helpers import DISK, LAYOUT, NOW, REF, VM_ID, later, observe, spec, status, vm

from hyperv_operator import conditions as cond
from hyperv_operator.api import Readiness
from hyperv_operator.hyperv.commands import HostObject
from hyperv_operator.provisioning import guest
from hyperv_operator.provisioning.guest import Adapter, GuestInfo
from hyperv_operator.provisioning.planner import plan

KVP_TYPE = "Microsoft.Management.Infrastructure.CimInstance#root/virtualization/v2/Msvm_KvpExchangeComponent"


def kvp_xml(name: str, data: str) -> str:
    return (f'<INSTANCE CLASSNAME="Msvm_KvpExchangeDataItem"><PROPERTY NAME="Data" TYPE="string"><VALUE>{data}'
            f'</VALUE></PROPERTY><PROPERTY NAME="Name" TYPE="string"><VALUE>{name}</VALUE></PROPERTY></INSTANCE>')


def host_objects(vm_id: str = VM_ID) -> list[HostObject]:
    return [
        HostObject(("Microsoft.HyperV.PowerShell.VirtualMachine",),
                   {"Id": vm_id, "Heartbeat": "OkApplicationsUnknown"}),
        HostObject(("Microsoft.HyperV.PowerShell.VMNetworkAdapter",),
                   {"Name": "Network Adapter", "MacAddress": "00155D000001", "SwitchName": "Default Switch",
                    "IPAddresses": ["172.20.0.3", "fe80::215:5dff:fe00:1"]}),
        HostObject(("Microsoft.HyperV.PowerShell.VMNetworkAdapter",),
                   {"Name": "Backend", "MacAddress": "00155D000002", "SwitchName": None,
                    "IPAddresses": ["169.254.10.1"]}),
        HostObject((KVP_TYPE,), {"SystemName": "11111111-2222-3333-4444-555555555555",
                                 "GuestIntrinsicExchangeItems": [kvp_xml("FullyQualifiedDomainName", "other")]}),
        HostObject((KVP_TYPE,), {"SystemName": vm_id.upper(),
                                 "GuestIntrinsicExchangeItems": [kvp_xml("FullyQualifiedDomainName", "web.lab"),
                                                                 kvp_xml("OSName", "Ubuntu 22.04.4 LTS")]}),
    ]


def test_parse_reads_heartbeat_addresses_and_this_vms_kvp_only() -> None:
    info = guest.parse(host_objects(), VM_ID)
    assert info.heartbeat_ok
    assert info.hostname == "web.lab"  # not the other VM's component
    assert info.os_name == "Ubuntu 22.04.4 LTS"
    assert [a.name for a in info.adapters] == ["Network Adapter", "Backend"]
    assert info.addresses == ("172.20.0.3",)  # link-local fe80:: and 169.254.x.x are not addresses to use


def test_kvp_with_a_doctype_is_ignored_not_expanded() -> None:
    evil = '<!DOCTYPE x [<!ENTITY a "aaaa">]><INSTANCE><PROPERTY NAME="Name"><VALUE>&a;</VALUE></PROPERTY></INSTANCE>'
    assert guest.kvp_items([evil, "not xml", kvp_xml("OSName", "Windows")]) == {"OSName": "Windows"}


def test_guest_objects_are_not_mistaken_for_vms_or_disks() -> None:
    for obj in host_objects():
        if obj.is_a("VirtualMachine"):
            assert guest.kind(obj) is None  # the VM itself stays in the observation (its Heartbeat is read)
        else:
            assert guest.kind(obj) is not None


def test_the_heartbeat_is_read_from_get_vm_in_any_host_language() -> None:
    """Get-VM's Heartbeat (VMHeartbeatStatus) has the same names on every host; the integration
    service's name ("Takt" on a German host) and status text are localized."""
    vm = HostObject(("Microsoft.HyperV.PowerShell.VirtualMachine",),
                    {"Id": VM_ID, "Heartbeat": "OkApplicationsHealthy"})
    other = HostObject(("Microsoft.HyperV.PowerShell.VirtualMachine",), {"Id": "0" * 8, "Heartbeat": "NoContact"})
    assert guest.parse([other, vm], VM_ID).heartbeat_ok
    for heartbeat in ("NoContact", "LostCommunication", "Error", "Paused", None):
        off = HostObject(("Microsoft.HyperV.PowerShell.VirtualMachine",), {"Id": VM_ID, "Heartbeat": heartbeat})
        assert not guest.parse([off], VM_ID).heartbeat_ok, heartbeat


def test_verdict_per_readiness() -> None:
    booting = GuestInfo(heartbeat="No Contact")
    up_no_ip = GuestInfo(heartbeat="OK", adapters=(Adapter("Network Adapter", addresses=("fe80::1",)),))
    up_ip = GuestInfo(heartbeat="OK", adapters=(Adapter("Network Adapter", addresses=("fe80::1", "10.0.0.5")),))
    assert guest.verdict(Readiness.RUNNING, 600, VM_ID, None, None, NOW).ready
    waiting = guest.verdict(Readiness.HEARTBEAT, 600, VM_ID, booting, None, NOW)
    assert (waiting.ready, waiting.reason, waiting.stalled) == (False, "WaitingForHeartbeat", False)
    assert guest.verdict(Readiness.HEARTBEAT, 600, VM_ID, up_no_ip, None, NOW).ready
    assert guest.verdict(Readiness.IP_ADDRESS, 600, VM_ID, up_no_ip, None, NOW).reason == "WaitingForIPAddress"
    ok = guest.verdict(Readiness.IP_ADDRESS, 600, VM_ID, up_ip, None, NOW)
    assert (ok.ready, ok.reason) == (True, "IPAddress") and "10.0.0.5" in ok.message
    since = {"waitingSince": cond.timestamp(NOW)}
    assert not guest.verdict(Readiness.IP_ADDRESS, 600, VM_ID, up_no_ip, since, later(599)).stalled
    late = guest.verdict(Readiness.IP_ADDRESS, 600, VM_ID, up_no_ip, since, later(600))
    assert (late.ready, late.reason, late.stalled) == (False, "NoIPAddress", True)


def _provisioned(**extra: object) -> dict[str, object]:
    return status("Provisioned", vmId=VM_ID, disk={"path": DISK}, createdFiles=[DISK], powerState="Running",
                  observedGeneration=1, **extra)


def _conditions(result_status: dict[str, object]) -> dict[str, dict[str, object]]:
    return {c["type"]: c for c in result_status["conditions"]}  # type: ignore[attr-defined, index]


def test_planner_ip_readiness_waits_then_stalls_then_recovers() -> None:
    s = spec("Differencing", readiness="IPAddress", readinessTimeoutSeconds=120)
    no_ip = GuestInfo(heartbeat="OK", hostname="web", adapters=(Adapter("Network Adapter", "00155D000001",
                                                                          "Default Switch", ("fe80::1",)),))
    obs = observe(files=(DISK,), host_vm=vm("Running"), drives=(DISK,), guest=no_ip)
    first = plan(s, _provisioned(), obs, NOW, vm=REF, layout=LAYOUT)
    ready = _conditions(first.status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForIPAddress")
    assert first.requeue_after == guest.GUEST_POLL
    assert first.status["guest"]["waitingSince"] == cond.timestamp(NOW)
    assert first.status["guest"]["hostname"] == "web"
    assert first.status["guest"]["adapters"] == [{"name": "Network Adapter", "macAddress": "00155D000001",
                                                  "switchName": "Default Switch"}]
    # the timeout counts from the first wait, not from each step
    still = plan(s, first.status, obs, later(60), vm=REF, layout=LAYOUT)
    assert still.status["guest"]["waitingSince"] == cond.timestamp(NOW)
    stalled = plan(s, still.status, obs, later(121), vm=REF, layout=LAYOUT)
    conditions = _conditions(stalled.status)
    assert (conditions["Stalled"]["status"], conditions["Stalled"]["reason"]) == ("True", "NoIPAddress")
    assert conditions["Ready"]["status"] == "False"
    assert stalled.requeue_after is not None  # keeps watching
    assert [e.reason for e in stalled.events] == ["NoIPAddress"]
    with_ip = GuestInfo(heartbeat="OK", adapters=(Adapter("Network Adapter", addresses=("fe80::1", "10.1.2.3")),))
    obs_ip = observe(files=(DISK,), host_vm=vm("Running"), drives=(DISK,), guest=with_ip)
    done = plan(s, stalled.status, obs_ip, later(130), vm=REF, layout=LAYOUT)
    conditions = _conditions(done.status)
    assert (conditions["Ready"]["status"], conditions["Ready"]["reason"]) == ("True", "IPAddress")
    assert conditions["Stalled"]["status"] == "False"
    assert done.status["guest"]["ipAddresses"] == ["10.1.2.3"]
    assert "waitingSince" not in done.status["guest"]
    assert done.requeue_after is None


def test_planner_running_readiness_is_ready_without_a_guest() -> None:
    s = spec("Differencing", readiness="Running")
    obs = observe(files=(DISK,), host_vm=vm("Running"), drives=(DISK,), guest=GuestInfo(heartbeat="No Contact"))
    result = plan(s, _provisioned(), obs, NOW, vm=REF, layout=LAYOUT)
    assert _conditions(result.status)["Ready"]["status"] == "True"
    assert result.requeue_after is None


def test_planner_heartbeat_default_waits_for_the_guest() -> None:
    obs = observe(files=(DISK,), host_vm=vm("Running"), drives=(DISK,), guest=GuestInfo(heartbeat="No Contact"))
    result = plan(spec("Differencing"), _provisioned(), obs, NOW, vm=REF, layout=LAYOUT)
    ready = _conditions(result.status)["Ready"]
    assert (ready["status"], ready["reason"]) == ("False", "WaitingForHeartbeat")
    assert "No Contact" in str(ready["message"])
