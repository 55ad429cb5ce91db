"""Image metrics as Prometheus exposes them."""

from __future__ import annotations

from prometheus_client import REGISTRY

from hyperv_operator import metrics


def _value(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


def test_dependents_per_generation_and_forgetting_collected_generations() -> None:
    labels = {"kind": "ClusterVirtualMachineImage", "namespace": "", "image": "metrics-win"}
    status = {"generations": [
        {"generation": 1, "dependents": 2, "identity": "D1/9000/t"},
        {"generation": 2, "dependents": 1, "identity": "D2/9500/t"}]}
    metrics.observe_image("ClusterVirtualMachineImage", "", "metrics-win", status, ready=True)
    assert _value("hyperv_operator_image_ready", **labels) == 1
    assert _value("hyperv_operator_image_dependents", **labels, generation="1") == 2
    assert _value("hyperv_operator_image_generation_bytes", **labels, generation="2") == 9500
    status["generations"][0]["collected"] = True
    metrics.observe_image("ClusterVirtualMachineImage", "", "metrics-win", status, ready=False)
    assert _value("hyperv_operator_image_ready", **labels) == 0
    assert _value("hyperv_operator_image_dependents", **labels, generation="1") is None
    assert _value("hyperv_operator_image_dependents", **labels, generation="2") == 1
    metrics.forget_image("ClusterVirtualMachineImage", "", "metrics-win")
    assert _value("hyperv_operator_image_ready", **labels) is None
    assert _value("hyperv_operator_image_dependents", **labels, generation="2") is None


def test_cache_bytes_and_dependents_per_share() -> None:
    labels = {"kind": "VirtualMachineImage", "namespace": "team", "image": "cached"}
    entries = [{"share": "\\\\FS2\\VMS", "state": "Ready", "bytes": 5000, "dependents": 3},
               {"share": "D:", "state": "Copying", "bytes": 0, "dependents": 0, "waiting": 2},
               {"share": "\\\\FS3\\X", "state": "Collected", "bytes": 7000}]
    metrics.observe_image_caches("VirtualMachineImage", "team", "cached", entries)
    assert _value("hyperv_operator_image_cache_bytes", **labels, share="\\\\FS2\\VMS") == 5000
    assert _value("hyperv_operator_image_cache_bytes", **labels, share="D:") == 0
    assert _value("hyperv_operator_image_cache_dependents", **labels, share="D:") == 2
    assert _value("hyperv_operator_image_cache_bytes", **labels, share="\\\\FS3\\X") is None
    assert (_value("hyperv_operator_images", kind="VirtualMachineImage") or 0) >= 1
    metrics.observe_image_caches("VirtualMachineImage", "team", "cached", entries[1:])
    assert _value("hyperv_operator_image_cache_bytes", **labels, share="\\\\FS2\\VMS") is None
    metrics.forget_image("VirtualMachineImage", "team", "cached")
    assert _value("hyperv_operator_image_cache_dependents", **labels, share="D:") is None
