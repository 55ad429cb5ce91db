"""Guest readiness end to end against the simulated host (in process): the engine's observation
reads heartbeat, KVP and addresses, and Ready follows spec.readiness."""

from __future__ import annotations

from typing import Any

from tests.unit.provisioning.test_engine_simulator import HOST, World, merged, provision, ref, run, spec

from hyperv_operator.provisioning.engine import reconcile


def _ready(status: dict[str, Any]) -> dict[str, Any]:
    return dict(next(c for c in status["conditions"] if c["type"] == "Ready"))


def test_ip_readiness_is_ready_only_once_the_guest_reports_an_address() -> None:
    world = World()
    vm = ref("ready-ip")
    s = spec("Differencing", readiness="IPAddress", switchName="Default Switch")
    status = run(provision(world, vm, s))
    assert _ready(status)["status"] == "True" and _ready(status)["reason"] == "IPAddress"
    address = status["guest"]["ipAddresses"][0]
    assert address.startswith("172.20.")
    assert status["guest"]["hostname"] == "localhost" and status["guest"]["heartbeat"] == "OkApplicationsUnknown"
    assert status["guest"]["adapters"][0]["ipAddresses"] == [address]


def test_ip_readiness_without_a_switch_stalls_after_the_timeout() -> None:
    world = World()
    vm = ref("ready-noswitch")
    s = spec("Differencing", readiness="IPAddress", readinessTimeoutSeconds=60)
    status: dict[str, Any] = {}
    stalled: dict[str, Any] | None = None
    for _ in range(200):
        outcome = run(reconcile(world.client, vm, s, status, HOST, "hv1", world.slots, world.now))
        status = merged(status, outcome)
        stalled = next((c for c in status.get("conditions") or [] if c["type"] == "Stalled"), None)
        if stalled and stalled["status"] == "True":
            break
        assert outcome.requeue_after is not None
        run(world.wait(outcome.requeue_after))
    assert stalled is not None and stalled["reason"] == "NoIPAddress"
    assert _ready(status)["status"] == "False"
    assert status["guest"]["heartbeat"] == "OkApplicationsUnknown"
    assert "ipAddresses" not in status["guest"]




def test_the_kvp_read_asks_the_host_for_this_vms_component_only() -> None:
    world = World()
    for other in ("kvp-other-1", "kvp-other-2"):
        run(provision(world, ref(other), spec("Differencing")))
    vm = ref("kvp-mine")
    status = run(provision(world, vm, spec("Differencing")))
    reads = [params for name, params in world.host.call_log()
             if name.endswith("Get-CimInstance") and params.get("ClassName") == "Msvm_KvpExchangeComponent"]
    assert reads and all("Filter" in p for p in reads)
    assert f"SystemName = '{status['vmId'].upper()}'" in [p["Filter"] for p in reads]
    assert status["guest"]["hostname"] == "localhost"


def test_a_german_host_reports_the_heartbeat_too() -> None:
    """On a German host the heartbeat integration service is "Takt", and `Get-VMIntegrationService
    -Name Heartbeat` fails with InvalidParameter (PlagueHO/LabBuilder#183): the VM went Failed. The
    heartbeat is read from Get-VM's Heartbeat, whose names do not depend on the host's language."""
    world = World()
    world.host.set_ui_culture("de-DE")
    status = run(provision(world, ref("ready-de"), spec("Differencing")))
    assert _ready(status)["status"] == "True" and _ready(status)["reason"] == "Heartbeat", status.get("message")
    assert status["phase"] == "Provisioned"
    services = [c for c in world.host.call_log() if c[0].rsplit("\\", 1)[-1] == "Get-VMIntegrationService"]
    assert services == []  # not asked by a name that is English only
