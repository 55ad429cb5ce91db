"""Objects as Windows PowerShell 5.1 serializes them, through the simulator's serializer and pypsrp's
deserializer, and the client's reading of them (`to_host_object`).

Golden fixtures: the Extended Primitive Object example of MS-PSRP 2.2.5.2.5
(https://learn.microsoft.com/en-us/openspecs/windows_protocols/ms-psrp/94e6e968-73e8-46b0-8de4-4228621ce629)
and a Get-Content -Raw string shaped like the one in pypsrp issue #105 (string + PSPath, PSParentPath,
PSChildName, PSDrive, PSProvider, ReadCount notes).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from psrpcore.types import serialize
from pypsrp.complex_objects import GenericComplexObject
from pypsrp.serializer import Serializer

from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.commands import cmd, pipe
from hyperv_operator.hyperv.winrm import to_host_object
from hyperv_operator.provisioning.observation import kind_of
from hyperv_operator.simulator.host import SimulatedHost
from hyperv_operator.simulator.wsman.psrp import host_object_to_ps

MS_PSRP_EXTENDED_PRIMITIVE = '<Obj RefId="RefId-0"> <S>This is a string</S> <MS> <S N="Note1">My note</S> </MS> </Obj>'

STATUS_JSON = '{"state":"Running","bytesCopied":5,"bytesTotal":10,"processId":4120}'
GET_CONTENT_RAW = (
    '<Obj RefId="0"><S>' + STATUS_JSON.replace('"', "&quot;") + "</S><MS>"
    '<S N="PSPath">Microsoft.PowerShell.Core\\FileSystem::\\\\FS\\VMs\\vm.vhdx.copy.json</S>'
    '<S N="PSParentPath">Microsoft.PowerShell.Core\\FileSystem::\\\\FS\\VMs</S>'
    '<S N="PSChildName">vm.vhdx.copy.json</S><Nil N="PSDrive" />'
    '<Obj N="PSProvider" RefId="1"><TN RefId="0"><T>System.Management.Automation.ProviderInfo</T>'
    "<T>System.Object</T></TN><ToString>Microsoft.PowerShell.Core\\FileSystem</ToString>"
    '<Props><S N="Name">FileSystem</S></Props></Obj><I64 N="ReadCount">1</I64></MS></Obj>'
)


def test_ms_psrp_extended_primitive_is_read_as_its_string() -> None:
    obj = Serializer().deserialize(MS_PSRP_EXTENDED_PRIMITIVE)
    assert isinstance(obj, GenericComplexObject)  # what pypsrp 0.9 hands the client
    host = to_host_object(obj)
    assert host.value == "This is a string"
    assert host.type_names == ("System.String",)
    assert host.properties == {"Note1": "My note"}
    assert kind_of(host) == "string"


def test_get_content_raw_string_with_provider_notes_is_read() -> None:
    host = to_host_object(Serializer().deserialize(GET_CONTENT_RAW))
    assert host.value == STATUS_JSON
    assert host.properties["PSChildName"] == "vm.vhdx.copy.json"
    assert host.properties["PSDrive"] is None


def _sim() -> SimulatedHost:
    sim = SimulatedHost()
    sim.add_folder("\\\\FS\\VMs")
    sim.add_folder("C:\\data")
    return sim


def _wire(obj: object) -> ET.Element:
    return serialize(host_object_to_ps(obj), None)  # type: ignore[arg-type]


def test_simulated_get_content_travels_as_an_extended_primitive() -> None:
    sim = _sim()
    path = "\\\\FS\\VMs\\s.json"
    new_item = cmd("Microsoft.PowerShell.Management\\New-Item", Path=path, ItemType="File", Value=STATUS_JSON)
    sim.execute([pipe(new_item)])
    [out] = sim.execute([cmdlets.read_text_file(path)])
    element = _wire(out)
    assert element.tag == "Obj" and element.find("TN") is None and element.find("Props") is None
    assert element.find("S") is not None and element.find("S").text == STATUS_JSON  # type: ignore[union-attr]
    notes = [child.attrib["N"] for child in element.find("MS")]  # type: ignore[union-attr]
    assert notes == ["PSPath", "PSParentPath", "PSChildName", "PSDrive", "PSProvider", "ReadCount"]
    host = to_host_object(Serializer().deserialize(ET.tostring(element, encoding="unicode")))
    assert host.value == STATUS_JSON


def test_test_path_is_a_plain_boolean() -> None:
    sim = _sim()
    [out] = sim.execute([cmdlets.test_path("\\\\FS\\VMs")])
    element = _wire(out)
    assert element.tag == "B" and element.text == "true"


def test_get_item_keeps_net_properties_adapted_and_provider_notes_extended() -> None:
    sim = _sim()
    path = "C:\\data\\a.txt"
    sim.execute([pipe(cmd("Microsoft.PowerShell.Management\\New-Item", Path=path, ItemType="File", Value="x"))])
    [out] = sim.execute([cmdlets.get_item(path)])
    element = _wire(out)
    props = {c.attrib["N"]: c for c in element.find("Props")}  # type: ignore[union-attr]
    notes = {c.attrib["N"]: c for c in element.find("MS")}  # type: ignore[union-attr]
    assert {"Name", "Length", "FullName", "IsReadOnly", "LastWriteTimeUtc"} <= set(props)
    assert props["Length"].tag == "I64"
    assert {"PSPath", "PSParentPath", "PSChildName", "PSDrive", "PSProvider", "PSIsContainer", "Mode"} <= set(notes)
    assert not set(props) & set(notes)
    assert element.findtext("ToString") == path
    drive = notes["PSDrive"]
    assert drive.findtext("ToString") == "C"
    host = to_host_object(Serializer().deserialize(ET.tostring(element, encoding="unicode")))
    assert host.is_a("FileInfo") and host["Length"] == 1 and host["FullName"] == path


def test_commands_spared_pypsrps_deep_copy_serialize_to_the_same_bytes() -> None:
    """The client spares pypsrp's per-serialization deep copy of every command (winrm._lighten): the
    pipeline it sends is byte for byte the one pypsrp would have sent, the first statement (which
    pypsrp serializes twice, in Cmds and in ExtraCmds) with typed values included."""
    from types import SimpleNamespace
    from xml.etree import ElementTree

    from pypsrp.complex_objects import Pipeline
    from pypsrp.powershell import PowerShell
    from pypsrp.serializer import Serializer

    from hyperv_operator.hyperv import scripts
    from hyperv_operator.hyperv.winrm import _lighten, add_statements

    def wire(spared: bool) -> bytes:
        ps = PowerShell.__new__(PowerShell)
        ps.runspace_pool = SimpleNamespace(protocol_version="2.3")
        ps.commands = []
        # The first statement goes out twice (pypsrp's Cmds and ExtraCmds), typed values (I64) included.
        add_statements(ps, [cmdlets.new_configured_vm("v", "C:\\a", "C:\\b.vhdx", 1 << 30, 2, None, notes="n",
                                                      processor_count=2, checkpoint_type="Standard", checkpoint="q"),
                            cmdlets.new_directory("C:\\a"), scripts.start_background_copy("s", "d", "p", "t"),
                            cmdlets.test_paths(["a", "b"]), cmdlets.set_vm_memory("id", 1 << 31)])
        if spared:
            for command in ps.commands:
                _lighten(command)
        pipeline = Pipeline(is_nested=False, cmds=ps.commands, history=None, redirect_err_to_out=False)
        return ElementTree.tostring(Serializer().serialize(pipeline))

    assert wire(spared=True) == wire(spared=False)
