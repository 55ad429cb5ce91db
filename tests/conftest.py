"""Suite-wide fixtures and the guard that integration tests really ran.

With HYPERV_OPERATOR_REQUIRE_INTEGRATION=1 (set by .ci/run) the session fails if any test marked
`integration` was skipped or deselected, or if none ran; a summary is written to the file named by
HYPERV_OPERATOR_INTEGRATION_SUMMARY so .ci/run can check it independently.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest

from hyperv_operator.envtest.controlplane import ControlPlane, running_control_plane

_counts = {"collected": 0, "deselected": 0, "passed": 0, "failed": 0, "skipped": 0}
_skipped_names: list[str] = []


def _is_integration(item: pytest.Item) -> bool:
    return item.get_closest_marker("integration") is not None


def _is_xdist_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


# Counting works the same with and without pytest-xdist (`make test` runs `-n`): collection and
# deselection happen in every worker (each collects the whole suite), test reports reach the
# controller through pytest_runtest_logreport. So results are counted from the reports in the
# process that writes the summary (the controller, or the only process), and the collection counts
# travel from the workers to the controller in `workeroutput`.


LONG_FILES_FIRST = (
    "tests/integration/test_reliability.py",
    "tests/integration/test_crash_and_delete.py",
    "tests/integration/test_standby.py",
    "tests/integration/test_images.py",
    "tests/integration/test_resize.py",
    "tests/integration/test_provisioning.py",
    "tests/integration/test_faults.py",
    "tests/integration/test_guest.py",
    "tests/integration/test_conformance.py",
    "tests/integration/test_tenancy.py",
    "tests/integration/test_install.py",
    "tests/integration/test_host_reachability.py",
)
"""The slowest files, longest first (sum of their tests' durations in a full run with 3 workers: 500 s
for test_reliability.py down to 50 s for test_host_reachability.py; the other files take under 50 s).
Parallel workers (`make test`) take whole files in collection order, so a long file started last
would run alone at the end; started first, the short files fill the gaps. Only the order changes: a
file missing from this list runs after these, in the usual order, and a stale entry does nothing."""


def _file_rank(item: pytest.Item) -> int:
    path = item.nodeid.replace(os.sep, "/").split("::", 1)[0]
    return LONG_FILES_FIRST.index(path) if path in LONG_FILES_FIRST else len(LONG_FILES_FIRST)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration/" in item.nodeid.replace(os.sep, "/") and not _is_integration(item):
            item.add_marker(pytest.mark.integration)
    _counts["collected"] = sum(1 for item in items if _is_integration(item))
    # Stable: each file's tests keep their order, and test_zz_gitops_and_health.py stays the last
    # integration file in a one-process run (its RBAC check reads everything the operator did).
    items.sort(key=_file_rank)


def pytest_deselected(items: list[pytest.Item]) -> None:
    _counts["deselected"] += sum(1 for item in items if _is_integration(item))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # A report's keywords carry the item's markers, including the one added above on the worker.
    if "integration" not in report.keywords:
        return
    if report.skipped:
        _counts["skipped"] += 1
        _skipped_names.append(report.nodeid)
    elif report.when == "call":
        _counts["passed" if report.passed else "failed"] += 1
    elif report.failed:
        _counts["failed"] += 1


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object | None) -> None:
    """xdist controller: a worker finished; every worker collected the same suite, so the largest
    counts are the session's (a worker that died before collecting reports none)."""
    collection = getattr(node, "workeroutput", {}).get("hyperv_operator_collection") or {}
    for key in ("collected", "deselected"):
        _counts[key] = max(_counts[key], int(collection.get(key, 0)))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _is_xdist_worker(session.config):
        # Results are counted by the controller; it only needs what this worker collected.
        session.config.workeroutput["hyperv_operator_collection"] = {  # type: ignore[attr-defined]
            "collected": _counts["collected"],
            "deselected": _counts["deselected"],
        }
        return
    summary_path = os.environ.get("HYPERV_OPERATOR_INTEGRATION_SUMMARY")
    ran = _counts["passed"] + _counts["failed"]
    if summary_path:
        with open(summary_path, "w") as fh:
            json.dump({**_counts, "ran": ran, "skipped_tests": _skipped_names}, fh)
    if os.environ.get("HYPERV_OPERATOR_REQUIRE_INTEGRATION") == "1":
        problems = []
        if _counts["skipped"]:
            problems.append(f"{_counts['skipped']} integration test(s) skipped: {_skipped_names}")
        if _counts["deselected"]:
            problems.append(f"{_counts['deselected']} integration test(s) deselected")
        if ran == 0:
            problems.append("no integration test ran")
        if problems:
            print("\nINTEGRATION GUARD FAILED: " + "; ".join(problems))
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One real etcd + kube-apiserver for the whole session, CRDs applied; the operator's writes and
    Secret reads are audited (`plane.audit_events()`)."""
    with running_control_plane(audit=True) as plane:
        yield plane
