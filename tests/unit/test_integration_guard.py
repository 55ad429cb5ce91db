"""The integration guard of tests/conftest.py (what .ci/run relies on) counts the same with and without
parallel workers: `make test` runs pytest-xdist, where tests run in worker processes and the summary
is written by the controller, which collects nothing itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent

INTEGRATION_A = """
import pytest

def test_passes():
    pass

def test_also_passes():
    pass

def test_skipped():
    pytest.skip("not here")

def test_fails():
    assert False

def test_dropped_by_k():
    pass
"""

INTEGRATION_B = """
def test_passes_elsewhere():
    pass
"""

UNIT = """
def test_unit_is_not_counted():
    pass
"""


def _suite(root: Path, *, clean: bool = False) -> Path:
    (root / "tests" / "integration").mkdir(parents=True)
    (root / "tests" / "unit").mkdir()
    shutil.copy(HERE.parent / "conftest.py", root / "tests" / "conftest.py")
    (root / "tests" / "integration" / "test_a.py").write_text(
        INTEGRATION_B.replace("elsewhere", "in_a") if clean else INTEGRATION_A
    )
    (root / "tests" / "integration" / "test_b.py").write_text(INTEGRATION_B)
    (root / "tests" / "unit" / "test_u.py").write_text(UNIT)
    (root / "pytest.ini").write_text(
        "[pytest]\naddopts = --import-mode=importlib -p no:cacheprovider\nmarkers =\n    integration: stack\n"
    )
    return root


def _run(root: Path, *args: str) -> tuple[int, dict[str, Any], str]:
    summary = root / "summary.json"
    env = dict(os.environ, HYPERV_OPERATOR_REQUIRE_INTEGRATION="1", HYPERV_OPERATOR_INTEGRATION_SUMMARY=str(summary))
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_XDIST_WORKER", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", *args, "tests"], cwd=root, env=env,
                            capture_output=True, text=True, timeout=120)
    data: dict[str, Any] = json.loads(summary.read_text())
    return result.returncode, data, result.stdout + result.stderr


PARALLEL = ("-n", "2", "--dist", "loadfile")
SERIAL = ("-p", "no:xdist")


@pytest.mark.parametrize("mode", [PARALLEL, SERIAL], ids=["xdist", "one-process"])
def test_skipped_failed_and_deselected_integration_tests_are_counted_and_fail_the_guard(
    tmp_path: Path, mode: tuple[str, ...]
) -> None:
    code, summary, output = _run(_suite(tmp_path), *mode, "-k", "not dropped")
    assert code != 0, output
    assert "INTEGRATION GUARD FAILED" in output, output
    counts = {k: summary[k] for k in ("collected", "deselected", "passed", "failed", "skipped", "ran")}
    assert counts == {"collected": 6, "deselected": 1, "passed": 3, "failed": 1, "skipped": 1, "ran": 4}, output
    assert summary["skipped_tests"] == ["tests/integration/test_a.py::test_skipped"]


def test_a_clean_parallel_run_passes_the_guard_with_every_integration_test_counted(tmp_path: Path) -> None:
    code, summary, output = _run(_suite(tmp_path, clean=True), *PARALLEL)
    assert code == 0, output
    assert "INTEGRATION GUARD FAILED" not in output
    assert (summary["ran"], summary["passed"], summary["collected"]) == (2, 2, 2), summary
    assert (summary["failed"], summary["skipped"], summary["deselected"]) == (0, 0, 0), summary
