"""The operator as a separate process, the way production runs it (`hyperv-operator run`).

Tests kill it with SIGKILL at chosen moments and start it again; the demo runs it for the show.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from hyperv_operator.envtest.controlplane import _die_with_parent, free_port


class OperatorProcess:
    def __init__(
        self,
        kubeconfig: Path,
        log_path: Path,
        *,
        drift_interval: float = 2.0,
        host_probe_interval: float = 5.0,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        webhook_port: int = 0,
        peering: str | None = None,
        priority: int | None = None,
        peering_lifetime: int | None = None,
        identity: str | None = None,
    ) -> None:
        self.kubeconfig = kubeconfig
        self.log_path = log_path
        self.drift_interval = drift_interval
        self.host_probe_interval = host_probe_interval
        self.extra_args = extra_args
        self.env = env or {}
        self.webhook_port = webhook_port
        """0: no admission webhook server (the shared test stack has no webhook configuration)."""
        self.peering = peering
        """None: `--standalone` (one process per stack); a name: an active/standby replica on that peering."""
        self.priority = priority
        self.peering_lifetime = peering_lifetime
        self.identity = identity
        """kopf's peer id (POD_ID, as the Deployment sets it) in the peering object's status."""
        self.metrics_port = 0
        self.liveness_port = 0
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, wait: bool = True, timeout: float = 60.0) -> None:
        """Start the operator on free ports. A port found free may be taken before the process binds it
        (another process's connection draws it as its source port: several test workers make many), so
        an operator that exits at once with "Address already in use" is started again on new ports."""
        for attempt in range(3):
            try:
                self._start_once(wait, timeout)
                return
            except RuntimeError as err:
                # "Address already in use" (prometheus_client), "address already in use" (aiohttp: kopf's probe)
                if attempt == 2 or "address already in use" not in str(err).lower():
                    raise

    def _start_once(self, wait: bool, timeout: float) -> None:
        if self.running:
            raise RuntimeError("operator already running")
        self.metrics_port = free_port()
        self.liveness_port = free_port()
        argv = [
            sys.executable,
            "-m",
            "hyperv_operator.cli",
            "run",
            "--all-namespaces",
            "--metrics-port",
            str(self.metrics_port),
            "--metrics-address",
            "127.0.0.1",
            "--liveness-port",
            str(self.liveness_port),
            "--liveness-address",
            "127.0.0.1",
            "--drift-interval",
            str(self.drift_interval),
            "--host-probe-interval",
            str(self.host_probe_interval),
            "--winrm-read-timeout",
            "10",
            "--winrm-operation-timeout",
            "8",
            "--winrm-connection-timeout",
            "5",
            "--webhook-port",
            str(self.webhook_port),
            *(
                ("--webhook-address", "127.0.0.1", "--webhook-name", "127.0.0.1")
                if self.webhook_port
                else ()
            ),
            *self._peering_args(),
            *self.extra_args,
        ]
        env = dict(os.environ, KUBECONFIG=str(self.kubeconfig), PYTHONUNBUFFERED="1", **self.env)
        if self.identity:
            env["POD_ID"] = self.identity
        self.starts += 1
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        log.write(f"\n===== operator start #{self.starts} =====\n".encode())
        log.flush()
        self._proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=env, preexec_fn=_die_with_parent)
        log.close()
        if wait:
            self.wait_ready(timeout)

    def _peering_args(self) -> tuple[str, ...]:
        if self.peering is None:
            return ("--standalone",)
        args: tuple[str, ...] = ("--peering", self.peering)
        if self.priority is not None:
            args += ("--priority", str(self.priority))
        if self.peering_lifetime is not None:
            args += ("--peering-lifetime", str(self.peering_lifetime))
        return args

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.liveness_port}/healthz"
        while time.monotonic() < deadline:
            if not self.running:
                raise RuntimeError(f"operator exited early:\n{self.log_tail()}")
            with (
                contextlib.suppress(OSError, urllib.error.URLError),
                urllib.request.urlopen(url, timeout=1) as response,
            ):
                if response.status == 200:
                    return
            time.sleep(0.2)
        raise TimeoutError(f"operator not healthy within {timeout}s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL: no cleanup, no chance to write status — a crash."""
        if self._proc is not None and self._proc.poll() is None:
            os.kill(self._proc.pid, signal.SIGKILL)
            self._proc.wait()
        self._proc = None

    def stop(self, timeout: float = 15.0) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.send_signal(signal.SIGTERM)
            try:
                self._proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        self._proc = None

    def metrics_text(self) -> str:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def winrm_round_trips(self) -> int:
        """Round trips this process made to any host (its own metrics): 0 while it stands by."""
        total = 0.0
        for line in self.metrics_text().splitlines():
            if line.startswith("hyperv_operator_winrm_call_duration_seconds_count"):
                total += float(line.rsplit(" ", 1)[1])
        return int(total)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, chars: int = 6000) -> str:
        return self.log_text()[-chars:]
