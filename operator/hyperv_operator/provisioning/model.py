"""Small value types shared by the planner and the engine (re-exported by `engine`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VmRef:
    """Identity of the Kubernetes object."""

    namespace: str
    name: str
    uid: str
    generation: int  # metadata.generation


@dataclass(frozen=True)
class Event:
    type: str  # "Normal" | "Warning"
    reason: str  # CamelCase, e.g. "PhaseChanged", "CopyStarted", "Stalled"
    message: str
