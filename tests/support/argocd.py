"""Run the Argo CD health-check Lua scripts from manifests/argocd/ the way Argo CD runs them.

Argo CD (util/lua) runs a health script in gopher-lua, a Lua 5.1 VM, with the object as the
global ``obj`` (JSON numbers become Lua numbers), the base, table, string and math libraries and a
``require``-able safe ``os``; the script returns a table ``{status=..., message=...}``. Here the
same script runs in lupa's Lua 5.1 runtime with the libraries Argo CD does not open removed, so a
script that passes here uses nothing Argo CD lacks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import lupa.lua51 as lua51

REPO = Path(__file__).resolve().parents[2]
ARGOCD_DIR = REPO / "manifests" / "argocd"
LUA_BY_KIND = {
    "VirtualMachine": ARGOCD_DIR / "virtualmachine-health.lua",
    "HyperVHost": ARGOCD_DIR / "hypervhost-health.lua",
}
HEALTH_STATUSES = frozenset({"Healthy", "Progressing", "Degraded", "Suspended", "Missing", "Unknown"})
_NOT_IN_ARGOCD = ("io", "os", "debug", "coroutine", "dofile", "loadfile")


def _to_lua(runtime: Any, value: Any) -> Any:
    if isinstance(value, Mapping):
        table = runtime.table()
        for key, item in value.items():
            if item is not None:
                table[str(key)] = _to_lua(runtime, item)
        return table
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        table = runtime.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(runtime, item)
        return table
    return value


def _from_lua(value: Any) -> Any:
    if lua51.lua_type(value) != "table":
        return value
    items = {key: _from_lua(item) for key, item in value.items()}
    if items and all(isinstance(k, int) for k in items) and sorted(items) == list(range(1, len(items) + 1)):
        return [items[i] for i in range(1, len(items) + 1)]
    return items


def argocd_health(obj: Mapping[str, Any], lua_path: str | Path | None = None) -> dict[str, Any]:
    """The health Argo CD computes for `obj` with the Lua script (default: by the object's kind)."""
    path = Path(lua_path) if lua_path is not None else LUA_BY_KIND[str(obj["kind"])]
    runtime = lua51.LuaRuntime(unpack_returned_tuples=False, register_eval=False, register_builtins=False)
    lua_globals = runtime.globals()
    for name in _NOT_IN_ARGOCD:
        lua_globals[name] = None
    lua_globals.obj = _to_lua(runtime, obj)
    result = _from_lua(runtime.execute(path.read_text()))
    if not isinstance(result, dict):
        raise ValueError(f"{path.name} returned {result!r}, not a table")
    if result.get("status") not in HEALTH_STATUSES:
        raise ValueError(f"{path.name} returned an unknown health status {result.get('status')!r}")
    return result
