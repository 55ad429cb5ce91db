"""Build kube-apiserver, kubectl and etcd from the Go module registry, once per machine.

Like controller-runtime's envtest, but nothing is downloaded as a prebuilt binary: a throwaway
Go module in the cache requires ``k8s.io/kubernetes`` at a pinned release, replaces its staging
modules with their published ``v0.x`` twins, and builds the three commands. etcd comes from the
version that Kubernetes release itself requires, so the pair is one the Kubernetes tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

KUBERNETES_VERSION = "v1.35.4"
ETCD_VERSION = "v3.6.5"
BINARIES = ("kube-apiserver", "kubectl", "etcd")

_PACKAGES = {
    "kube-apiserver": "k8s.io/kubernetes/cmd/kube-apiserver",
    "kubectl": "k8s.io/kubernetes/cmd/kubectl",
    "etcd": "go.etcd.io/etcd/server/v3",
}


@dataclass(frozen=True)
class ControlPlaneBinaries:
    kube_apiserver: Path
    kubectl: Path
    etcd: Path

    @classmethod
    def in_dir(cls, bin_dir: Path) -> ControlPlaneBinaries:
        return cls(bin_dir / "kube-apiserver", bin_dir / "kubectl", bin_dir / "etcd")

    def all_exist(self) -> bool:
        return all(p.is_file() and os.access(p, os.X_OK) for p in (self.kube_apiserver, self.kubectl, self.etcd))


def cache_root() -> Path:
    base = os.environ.get("HYPERV_OPERATOR_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "hyperv-operator"
    )
    return Path(base)


def version_dir() -> Path:
    return cache_root() / "controlplane" / f"kubernetes-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}"


def cached_binaries() -> ControlPlaneBinaries:
    return ControlPlaneBinaries.in_dir(version_dir() / "bin")


def _go(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    proc = subprocess.run(["go", *args], cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"go {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc.stdout


def _staging_modules(kubernetes_go_mod: str) -> list[str]:
    return re.findall(r"^\s*(k8s\.io/[\w.-]+)\s+=>\s+\./staging/", kubernetes_go_mod, flags=re.MULTILINE)


def _go_mod_text(kubernetes_go_mod: str) -> str:
    staging_version = "v0." + KUBERNETES_VERSION.split(".", 1)[1]
    go_line = re.search(r"^go (\S+)$", kubernetes_go_mod, flags=re.MULTILINE)
    lines = [
        "module hyperv-operator.io/envtest-build",
        "",
        f"go {go_line.group(1) if go_line else '1.25.0'}",
        "",
        "require (",
        f"\tk8s.io/kubernetes {KUBERNETES_VERSION}",
        f"\tgo.etcd.io/etcd/server/v3 {ETCD_VERSION}",
        ")",
        "",
        "replace (",
    ]
    lines += [f"\t{module} => {module} {staging_version}" for module in _staging_modules(kubernetes_go_mod)]
    lines += [")", ""]
    return "\n".join(lines)


def _version_ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBERNETES_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


def build(force: bool = False, log: bool = True) -> ControlPlaneBinaries:
    """Return the cached binaries, building them first if this machine has none."""
    binaries = cached_binaries()
    if binaries.all_exist() and not force:
        return binaries
    if shutil.which("go") is None:
        raise RuntimeError("the Go toolchain is needed to build the local control plane (go not on PATH)")
    root = version_dir()
    src = root / "src"
    bin_dir = root / "bin"
    src.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, CGO_ENABLED="0", GOFLAGS="-mod=mod", GOTOOLCHAIN=os.environ.get("GOTOOLCHAIN", "local"))
    started = time.monotonic()
    if log:
        print(
            f"building kube-apiserver/kubectl {KUBERNETES_VERSION} and etcd {ETCD_VERSION} into {bin_dir} "
            "(first time on this machine; takes several minutes on 2 cores)",
            file=sys.stderr,
            flush=True,
        )
    info = json.loads(_go(["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"], src, env))
    kubernetes_go_mod = Path(info["GoMod"]).read_text()
    (src / "go.mod").write_text(_go_mod_text(kubernetes_go_mod))
    (src / "go.sum").touch()
    tmp_bin = root / "bin.tmp"
    shutil.rmtree(tmp_bin, ignore_errors=True)
    tmp_bin.mkdir()
    for name in BINARIES:
        t0 = time.monotonic()
        _go(
            ["build", "-trimpath", "-ldflags", _version_ldflags(), "-o", str(tmp_bin / name), _PACKAGES[name]], src, env
        )
        if log:
            print(f"  built {name} in {time.monotonic() - t0:.0f}s", file=sys.stderr, flush=True)
    shutil.rmtree(bin_dir, ignore_errors=True)
    tmp_bin.rename(bin_dir)
    if log:
        print(f"control plane built in {time.monotonic() - started:.0f}s", file=sys.stderr, flush=True)
    return cached_binaries()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--print-dir", action="store_true", help="print the binaries' folder and exit")
    args = parser.parse_args(argv)
    if args.print_dir:
        print(cached_binaries().kube_apiserver.parent)
        return 0
    binaries = build(force=args.force)
    print(binaries.kube_apiserver.parent)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
