"""A real, throwaway Kubernetes control plane on loopback: etcd + kube-apiserver.

Used by the integration tests and `make demo`. Random free ports, a temporary data dir, RBAC
authorization with static tokens (an admin and the operator's ServiceAccount identity), a written
kubeconfig, the project's CRDs applied. Children get PR_SET_PDEATHSIG so they die with us even if we
are killed without a chance to clean up.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hyperv_operator.envtest.build import ControlPlaneBinaries, build

OPERATOR_NAMESPACE = "hyperv-operator-system"
OPERATOR_SERVICE_ACCOUNT = "hyperv-operator"
OPERATOR_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{OPERATOR_SERVICE_ACCOUNT}"
OPERATOR_GROUPS = ("system:serviceaccounts", f"system:serviceaccounts:{OPERATOR_NAMESPACE}", "system:authenticated")

TENANT_USER = "tenant"
"""A person with no cluster role of their own: tests bind roles to it (multi-tenancy checks)."""

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    os.setpgrp()


PORT_BLOCKS_START = 12000
PORT_BLOCK_SIZE = 2000
PORT_BLOCKS = 10
"""Ports for the stack's servers: 12000-31999, below Linux's ephemeral range (32768-60999 by default),
in one block per test worker (gw0..gw8; block 9 for a process outside pytest-xdist: bench, demo)."""
_next_port: dict[int, int] = {}


def free_port() -> int:
    """A port for one of the stack's servers to bind (API server, etcd, simulated hosts, the operator's
    endpoints). Not the kernel's "port 0" choice: that comes from the ephemeral range, where any
    connection's source port is drawn too, and another test worker may be handed the same number
    after it was let go; a server then found its port taken, or (worse) a health check reached another
    worker's operator. So: below the ephemeral range, in this worker's own block, each port once per
    process (from a random place in the block, cycling), and bindable right now."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    block = int(worker[2:]) % (PORT_BLOCKS - 1) if worker.startswith("gw") and worker[2:].isdigit() else PORT_BLOCKS - 1
    low = PORT_BLOCKS_START + block * PORT_BLOCK_SIZE
    offset = _next_port.get(block, secrets.randbelow(PORT_BLOCK_SIZE))
    for step in range(PORT_BLOCK_SIZE):
        port = low + (offset + step) % PORT_BLOCK_SIZE
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As the servers bind (Go, aiohttp and http.server set SO_REUSEADDR): a port that only
            # has connections in TIME_WAIT is free for them; one with a listener is not.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _next_port[block] = (offset + step + 1) % PORT_BLOCK_SIZE
        return port
    raise RuntimeError(f"no free port in {low}-{low + PORT_BLOCK_SIZE - 1}")


def repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "crds").is_dir() and (parent / "pyproject.toml").is_file():
            return parent
    raise RuntimeError("cannot find the repository root (a folder with crds/ and pyproject.toml)")


@dataclass
class ControlPlane:
    binaries: ControlPlaneBinaries
    workdir: Path
    apiserver_port: int = 0
    etcd_port: int = 0
    admin_token: str = field(default_factory=lambda: secrets.token_hex(16))
    operator_token: str = field(default_factory=lambda: secrets.token_hex(16))
    tenant_token: str = field(default_factory=lambda: secrets.token_hex(16))
    audit: bool = False
    """Write an audit log of the operator's writes (create/update/patch/delete) and of its Secret
    reads (get/list/watch) to `audit_log`: tests and the benchmark count them."""
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def ca_file(self) -> Path:
        return self.workdir / "certs" / "apiserver.crt"

    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (system:masters)."""
        return self.workdir / "kubeconfig"

    @property
    def operator_kubeconfig(self) -> Path:
        """Kubeconfig for the operator's ServiceAccount identity: only what RBAC grants it."""
        return self.workdir / "operator.kubeconfig"

    @property
    def tenant_kubeconfig(self) -> Path:
        """Kubeconfig for TENANT_USER: nothing but what tests bind to it."""
        return self.workdir / "tenant.kubeconfig"

    @property
    def log_dir(self) -> Path:
        return self.workdir / "logs"

    @property
    def audit_log(self) -> Path:
        return self.log_dir / "audit.jsonl"

    def _audit_args(self) -> list[str]:
        if not self.audit:
            return []
        policy = self.workdir / "audit-policy.yaml"
        policy.write_text(
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n"
            f'  - level: Metadata\n    users: ["{OPERATOR_USER}"]\n    verbs: [create, update, patch, delete]\n'
            f'  - level: Metadata\n    users: ["{OPERATOR_USER}"]\n'
            '    resources: [{group: "", resources: [secrets]}]\n'
            "  - level: None\n"
        )
        return ["--audit-policy-file", str(policy), "--audit-log-path", str(self.audit_log), "--audit-log-maxsize=0"]

    def audit_events(self) -> list[dict[str, Any]]:
        """The audit log so far (completed requests only)."""
        if not self.audit_log.exists():
            return []
        events = []
        for line in self.audit_log.read_text().splitlines():
            try:
                event = json.loads(line)
            except ValueError:  # a line being written right now
                continue
            if event.get("stage") == "ResponseComplete":
                events.append(event)
        return events

    def start(self, timeout: float = 60.0) -> None:
        started = time.monotonic()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "certs").mkdir(exist_ok=True)
        self._write_service_account_key()
        self._write_tokens()
        self.etcd_port = free_port()
        etcd_peer_port = free_port()
        self._spawn(
            "etcd",
            [
                str(self.binaries.etcd),
                "--data-dir",
                str(self.workdir / "etcd"),
                "--listen-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--advertise-client-urls",
                f"http://127.0.0.1:{self.etcd_port}",
                "--listen-peer-urls",
                f"http://127.0.0.1:{etcd_peer_port}",
                "--initial-advertise-peer-urls",
                f"http://127.0.0.1:{etcd_peer_port}",
                "--initial-cluster",
                f"default=http://127.0.0.1:{etcd_peer_port}",
                "--unsafe-no-fsync",
                "--log-level",
                "warn",
            ],
        )
        self._wait_http(f"http://127.0.0.1:{self.etcd_port}/health", timeout, "etcd")
        self.apiserver_port = free_port()
        self._spawn(
            "kube-apiserver",
            [
                str(self.binaries.kube_apiserver),
                "--bind-address",
                "127.0.0.1",
                "--advertise-address",
                "127.0.0.1",
                "--secure-port",
                str(self.apiserver_port),
                "--cert-dir",
                str(self.workdir / "certs"),
                "--etcd-servers",
                f"http://127.0.0.1:{self.etcd_port}",
                "--token-auth-file",
                str(self.workdir / "tokens.csv"),
                "--authorization-mode",
                "RBAC",
                "--service-account-issuer",
                "https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file",
                str(self.workdir / "sa.key"),
                "--service-account-signing-key-file",
                str(self.workdir / "sa.key"),
                "--service-cluster-ip-range",
                "10.0.0.0/24",
                "--allow-privileged=true",
                "--disable-admission-plugins",
                "ServiceAccount",
                "--enable-priority-and-fairness=false",
                "--profiling=false",
                "--v=0",
                *self._audit_args(),
            ],
        )
        self._wait_ready(timeout - (time.monotonic() - started))
        self._write_kubeconfig(self.kubeconfig, "admin", self.admin_token)
        self._write_kubeconfig(self.operator_kubeconfig, "operator", self.operator_token)
        self._write_kubeconfig(self.tenant_kubeconfig, TENANT_USER, self.tenant_token)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.log_dir / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, preexec_fn=_die_with_parent)
        log.close()
        self._procs.append(proc)

    def _write_service_account_key(self) -> None:
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (self.workdir / "sa.key").write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )

    def _write_tokens(self) -> None:
        groups = ",".join(OPERATOR_GROUPS)
        (self.workdir / "tokens.csv").write_text(
            f'{self.admin_token},admin,admin,"system:masters"\n'
            f'{self.operator_token},{OPERATOR_USER},operator-uid,"{groups}"\n'
            f'{self.tenant_token},{TENANT_USER},tenant-uid,"system:authenticated"\n'
        )

    def _check_alive(self) -> None:
        for proc in self._procs:
            if proc.poll() is not None:
                name = Path(str(proc.args[0])).name  # type: ignore[index]
                tail = (self.log_dir / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}:\n{tail}")

    def _wait_http(self, url: str, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._check_alive()
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=1) as response,  # noqa: S310 - loopback
            ):
                if response.status == 200:
                    return
            time.sleep(0.1)
        raise TimeoutError(f"{what} did not become ready within {timeout:.0f}s")

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last_error = ""
        while time.monotonic() < deadline:
            self._check_alive()
            if self.ca_file.exists():
                context = ssl.create_default_context(cafile=str(self.ca_file))
                request = urllib.request.Request(  # noqa: S310 - https on loopback
                    f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"}
                )
                try:
                    with urllib.request.urlopen(request, context=context, timeout=2) as response:  # noqa: S310
                        if response.status == 200:
                            return
                except (OSError, urllib.error.URLError, ssl.SSLError) as exc:
                    last_error = str(exc)
            time.sleep(0.1)
        raise TimeoutError(f"kube-apiserver did not become ready within the timeout: {last_error}")

    def _write_kubeconfig(self, path: Path, user: str, token: str) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "envtest", "cluster": {"server": self.server, "certificate-authority": str(self.ca_file)}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "envtest", "user": user, "namespace": "default"}}],
            "current-context": user,
        }
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o600)

    def kubectl(
        self, *args: str, kubeconfig: Path | None = None, check: bool = True, input_text: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.binaries.kubectl), "--kubeconfig", str(kubeconfig or self.kubeconfig), *args]
        result = subprocess.run(argv, capture_output=True, text=True, input=input_text, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
        return result

    def apply_crds(self, crd_dir: Path | None = None) -> None:
        crd_dir = crd_dir or repo_root() / "crds"
        self.kubectl("apply", "--server-side", "-k", str(crd_dir))
        self.kubectl("wait", "--for=condition=Established", "--timeout=30s", "crd", "--all")

    def stop(self, grace: float = 1.0) -> None:
        # A throwaway cluster: its data directory is deleted next, so nothing is lost by not waiting
        # for a graceful shutdown. kube-apiserver drains for 10 s and more after SIGTERM (measured:
        # every stop ran into the old 10 s timeout), which every test session and demo paid.
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + grace
        for proc in reversed(self._procs):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self._procs.clear()


@contextlib.contextmanager
def running_control_plane(
    apply_crds: bool = True, keep_dir: bool = False, audit: bool = False
) -> Iterator[ControlPlane]:
    """Build (once per machine) and start a control plane; stop it and delete its data on exit."""
    binaries = build()
    workdir = Path(tempfile.mkdtemp(prefix="hyperv-operator-envtest-"))
    plane = ControlPlane(binaries=binaries, workdir=workdir, audit=audit)
    previous_sigterm = signal.getsignal(signal.SIGTERM)

    def _on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    in_main_thread = _in_main_thread()
    if in_main_thread:
        signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        plane.start()
        if apply_crds:
            plane.apply_crds()
        yield plane
    finally:
        plane.stop()
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)
        if not keep_dir:
            shutil.rmtree(workdir, ignore_errors=True)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def main() -> int:
    """`python -m hyperv_operator.envtest.controlplane`: start one and wait (Ctrl-C to stop)."""
    t0 = time.monotonic()
    with running_control_plane() as plane:
        print(f"control plane ready in {time.monotonic() - t0:.1f}s at {plane.server}")
        print(f"export KUBECONFIG={plane.kubeconfig}")
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
