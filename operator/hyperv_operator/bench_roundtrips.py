"""WinRM round trips per strategy: `python -m hyperv_operator.bench_roundtrips`.

Starts a SimulatedHost behind a WSManServer (HTTPS, Basic auth, its own CA: what `envtest.stack`
serves to the operator), then drives the provisioning engine through a real `WinRMClient`, one VM
per strategy: `engine.reconcile` until Provisioned and converged, then `engine.finalize` until the
finalizer may go. No Kubernetes.

Time is virtual: the simulated host runs on a clock that the loop moves forward by each step's
`requeue_after` (the delay kopf would wait), so a 120-simulated-second copy takes no wall time and
the counts do not depend on the machine's speed. Measured per strategy and per phase (provision,
delete), as deltas of the server's own counters:

- engine steps: reconcile/finalize calls;
- pipelines: PowerShell pipelines the server received (`len(server.received)`), i.e. `client.run` calls
  that reached the host; one pipeline may carry several statements;
- HTTP requests: every WS-Management request (`server.request_count`), including shell creation;
- commands: cmdlets/scripts the host ran (`host.call_log()`);
- simulated seconds: the sum of the requeue delays (the host's time to converge).

The RunspacePool is opened once before the first strategy (like a long-running operator); its cost
is printed separately.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from hyperv_operator.api import HyperVHostSpec, Strategy, Transport, VirtualMachineSpec
from hyperv_operator.envtest.stack import BASE_VHD, POST_BASE_SIZE, SHARE, VM_ROOT
from hyperv_operator.hyperv.winrm import WinRMClient, WinRMSettings
from hyperv_operator.provisioning.engine import CopySlots, StepOutcome, VmRef, finalize, reconcile
from hyperv_operator.simulator.host import SimulatedHost
from hyperv_operator.simulator.tls import generate_tls
from hyperv_operator.simulator.wsman.server import WSManServer

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
MIN_STEP = 0.05
"""Smallest clock advance between steps (a requeue of 0 would otherwise spin on one instant)."""


class VirtualClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


@dataclass
class Counts:
    steps: int = 0
    pipelines: int = 0
    http_requests: int = 0
    commands: int = 0
    simulated_seconds: float = 0.0
    wall_seconds: float = 0.0


@dataclass
class Row:
    strategy: str
    provision: Counts
    delete: Counts
    final_phase: str


class Bench:
    def __init__(self, base_size: int, workdir: Path) -> None:
        self.clock = VirtualClock()
        self.host = SimulatedHost(clock=self.clock)
        self.host.add_folder(SHARE)
        self.host.add_folder(VM_ROOT)
        self.host.add_base_disk(BASE_VHD, base_size, acl_read_only=True)
        self.tls = generate_tls(workdir)
        password = uuid.uuid4().hex
        self.server = WSManServer(self.host, username="hvadmin", password=password)
        self.server.start(host="127.0.0.1", port=0, tls=self.tls.server_pair)
        self.client = WinRMClient(WinRMSettings(
            server="127.0.0.1", port=self.server.port, auth="basic", username="hvadmin", password=password,
            ca_bundle=str(self.tls.ca_cert), read_timeout=30, operation_timeout=20))
        self.host_spec = HyperVHostSpec(address="127.0.0.1", default_vm_path=VM_ROOT, port=self.server.port,
                                        transport=Transport.HTTPS, auth="basic", max_concurrent_copies=2)
        self.slots = CopySlots()

    def close(self) -> None:
        self.client.close_sync()
        self.server.stop()

    @property
    def now(self) -> datetime:
        return EPOCH + timedelta(seconds=self.clock.t)

    def snapshot(self) -> tuple[int, int, int]:
        return len(self.server.received), self.server.request_count, len(self.host.call_log())

    def delta(self, before: tuple[int, int, int], counts: Counts) -> None:
        after = self.snapshot()
        counts.pipelines = after[0] - before[0]
        counts.http_requests = after[1] - before[1]
        counts.commands = after[2] - before[2]

    def open_session(self) -> Counts:
        counts = Counts()
        before = self.snapshot()
        started = time.monotonic()
        probe = self.client.probe_sync("C")
        counts.wall_seconds = time.monotonic() - started
        counts.steps = 1
        self.delta(before, counts)
        if probe.missing_commands:
            raise RuntimeError(f"the simulated host lacks probe commands: {probe.missing_commands}")
        return counts

    async def run_strategy(self, strategy: Strategy, max_steps: int) -> Row:
        name = f"bench-{strategy.value.lower()}"
        ref = VmRef("bench", name, str(uuid.uuid4()), 1)
        # readiness Running: the guest's boot is host time, like the copy; the table counts the operator.
        spec = VirtualMachineSpec.from_dict({"hostRef": {"name": "sim"}, "baseVhd": BASE_VHD,
                                             "strategy": strategy.value, "memory": "1Gi", "cpus": 2,
                                             "readiness": "Running"})
        status: dict[str, Any] = {}
        provision, delete = Counts(), Counts()

        before, started, sim_start = self.snapshot(), time.monotonic(), self.clock.t
        outcome: StepOutcome | None = None
        for _ in range(max_steps):
            outcome = await reconcile(self.client, ref, spec, status, self.host_spec, "bench/sim", self.slots, self.now)
            provision.steps += 1
            status = {k: v for k, v in outcome.status.items() if v is not None}
            if outcome.requeue_after is None:
                break
            self.clock.t += max(outcome.requeue_after, MIN_STEP)
        else:
            raise RuntimeError(f"{strategy}: not converged after {max_steps} steps: {status.get('message')}")
        provision.wall_seconds = time.monotonic() - started
        provision.simulated_seconds = self.clock.t - sim_start
        self.delta(before, provision)
        final_phase = str(status.get("phase"))
        if final_phase != "Provisioned":
            raise RuntimeError(f"{strategy}: ended in {final_phase}: {status.get('message')}")

        before, started, sim_start = self.snapshot(), time.monotonic(), self.clock.t
        for _ in range(max_steps):
            outcome = await finalize(self.client, ref, spec, status, self.host_spec, "bench/sim", self.slots, self.now)
            delete.steps += 1
            status = {k: v for k, v in outcome.status.items() if v is not None}
            if outcome.finished:
                break
            self.clock.t += max(outcome.requeue_after if outcome.requeue_after is not None else 1.0, MIN_STEP)
        else:
            raise RuntimeError(f"{strategy}: deletion not finished after {max_steps} steps: {status.get('message')}")
        delete.wall_seconds = time.monotonic() - started
        delete.simulated_seconds = self.clock.t - sim_start
        self.delta(before, delete)
        leftovers = [vm for vm in self.host.vms() if ref.uid in str(vm.get("Notes") or "")]
        if leftovers:
            raise RuntimeError(f"{strategy}: VM still on the host after deletion: {leftovers}")
        return Row(strategy.value, provision, delete, final_phase)


def format_table(session: Counts, rows: Sequence[Row]) -> str:
    header = ("strategy", "phase", "steps", "pipelines", "HTTP requests", "HTTP/step", "commands", "sim s", "wall s")
    lines: list[tuple[str, ...]] = [header]

    def line(strategy: str, phase: str, c: Counts) -> tuple[str, ...]:
        per_step = f"{c.http_requests / c.steps:.1f}" if c.steps else "-"
        return (strategy, phase, str(c.steps), str(c.pipelines), str(c.http_requests), per_step, str(c.commands),
                f"{c.simulated_seconds:.1f}", f"{c.wall_seconds:.2f}")

    lines.append(line("(session)", "open+probe", session))
    total_p, total_d = Counts(), Counts()
    for row in rows:
        lines.append(line(row.strategy, "provision", row.provision))
        lines.append(line("", "delete", row.delete))
        for total, c in ((total_p, row.provision), (total_d, row.delete)):
            total.steps += c.steps
            total.pipelines += c.pipelines
            total.http_requests += c.http_requests
            total.commands += c.commands
            total.simulated_seconds += c.simulated_seconds
            total.wall_seconds += c.wall_seconds
    if len(rows) > 1:
        lines.append(line("total", "provision", total_p))
        lines.append(line("", "delete", total_d))
    widths = [max(len(r[i]) for r in lines) for i in range(len(header))]
    numeric = range(2, len(header))

    def render(r: tuple[str, ...]) -> str:
        cells = [r[i].rjust(widths[i]) if i in numeric else r[i].ljust(widths[i]) for i in range(len(r))]
        return "  ".join(cells).rstrip()

    rule = "  ".join("-" * w for w in widths)
    out = [render(lines[0]), rule, render(lines[1]), rule]
    out += [render(r) for r in lines[2:2 + 2 * len(rows)]]
    if len(rows) > 1:
        out += [rule, *(render(r) for r in lines[2 + 2 * len(rows):])]
    return "\n".join(out)


async def _run(strategies: Sequence[Strategy], base_size: int, max_steps: int) -> tuple[Counts, list[Row]]:
    with tempfile.TemporaryDirectory(prefix="hyperv-bench-") as workdir:
        bench = Bench(base_size, Path(workdir))
        try:
            session = await asyncio.to_thread(bench.open_session)
            rows = [await bench.run_strategy(s, max_steps) for s in strategies]
        finally:
            bench.close()
    return session, rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyperv_operator.bench_roundtrips",
                                     description="WinRM round trips per provisioning strategy (simulated host)")
    parser.add_argument("--strategy", action="append", choices=[s.value for s in Strategy],
                        help="run only this strategy (repeatable); default: all")
    parser.add_argument("--base-size", type=int, default=POST_BASE_SIZE, help="base VHDX file size in bytes")
    parser.add_argument("--max-steps", type=int, default=2000)
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    strategies = [Strategy(s) for s in args.strategy] if args.strategy else list(Strategy)
    session, rows = asyncio.run(_run(strategies, args.base_size, args.max_steps))
    if args.json:
        print(json.dumps({"session": asdict(session), "strategies": [asdict(r) for r in rows]}, indent=2))
    else:
        print(f"WinRM round trips per strategy (base {args.base_size:,} bytes, HTTPS + Basic, one reused "
              "RunspacePool, virtual time)")
        print(format_table(session, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
