"""The per-host connection bound: below Windows' shell quota, the same in the CRD, the API and the client."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from hyperv_operator.api import HyperVHostSpec
from hyperv_operator.hyperv.winrm import MAX_CONNECTIONS, WinRMSettings

CRD = Path(__file__).resolve().parents[3] / "crds" / "hyperv-operator.io_hypervhosts.yaml"


def test_max_connections_bounded_below_the_shell_quota() -> None:
    # MaxShellsPerUser: 25 in the Microsoft.PowerShell plugin quota (MS-WSMV 3.1.4.1.34.3.4);
    # VM connections + the reserved probe connection must fit.
    assert MAX_CONNECTIONS + 1 <= 25
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    field = schema["properties"]["spec"]["properties"]["maxConnections"]
    assert (field["minimum"], field["maximum"], field["default"]) == (1, MAX_CONNECTIONS, 4)
    assert HyperVHostSpec.from_dict({"address": "h", "defaultVmPath": "C:\\V"}).max_connections == 4
    nine = HyperVHostSpec.from_dict({"address": "h", "defaultVmPath": "C:\\V", "maxConnections": 9})
    assert nine.max_connections == 9
    base = dict(server="h", auth="basic", username="u", password="p")
    assert WinRMSettings(**base, max_connections=MAX_CONNECTIONS).max_connections == MAX_CONNECTIONS  # type: ignore[arg-type]
    for bad in (0, MAX_CONNECTIONS + 1):
        with pytest.raises(ValueError, match="max_connections must be between 1 and 24"):
            WinRMSettings(**base, max_connections=bad)  # type: ignore[arg-type]
