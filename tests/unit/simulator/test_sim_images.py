"""Simulated host: what an image controller relies on (a base written out of band)."""

from __future__ import annotations

from tests.unit.simulator.conftest import BASE, SHARE, Sim
from tests.unit.simulator.test_sim_strategies import new_vm

from hyperv_operator.hyperv import cmdlets as c


def test_a_base_written_out_of_band_moves_last_write_time_and_breaks_its_children(sim: Sim) -> None:
    child = SHARE + "\\VM9.VHDX"
    sim.run(c.new_differencing_vhd(child, BASE))
    before_vhd, before_item = sim.one(c.get_vhd(BASE)), sim.one(c.get_item(BASE))
    sim.wait(30)
    sim.host.write_disk_out_of_band(BASE, 3, b"patched")
    after_vhd, after_item = sim.one(c.get_vhd(BASE)), sim.one(c.get_item(BASE))
    assert after_vhd["DiskIdentifier"] == before_vhd["DiskIdentifier"]  # same disk, different data
    assert after_item["LastWriteTimeUtc"] > before_item["LastWriteTimeUtc"]
    assert after_item["Length"] == before_item["Length"]
    vm_id = new_vm(sim, "VM9", child)
    err = sim.fails(c.start_vm(vm_id))
    assert err.category == "InvalidData" and "mismatch" in err.message
