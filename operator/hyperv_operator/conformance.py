"""`hyperv-operator conformance`: prove the operator's assumptions on YOUR Hyper-V host.

`check-host` only reads. This command writes, but only inside a scratch folder it creates
(`<folder>\\hvop-conformance-<random>`): a tiny empty base (`New-VHD -SizeBytes 8MB -Dynamic`), then one
scratch VM per strategy provisioned end to end by the PRODUCTION engine (`provisioning.engine.reconcile`
/ `finalize` in a loop, with a made-up VmRef and spec: no Kubernetes), observing on the way:

    connect / Hyper-V module       the probe answers, every probe command exists
    base created                   New-VHD -Dynamic gives a Dynamic VHDX
    not-found error ids            Get-VM -Id <unknown>, Get-VHD <missing>: the ids the host returns,
                                   and whether the operator reads them as "not found"
    <strategy> provisions          Differencing, Copy, Quick reach Provisioned
    copy worker starts             the background copy ran to completion (Copy, Quick)
    status file readable           the copy's status file read (Get-Content -Raw) while it was written
    checkpoint beside its parent   Quick's .avhdx lands in the base's folder
    online re-parent (-LeafPath)   Set-VHD -LeafPath moved the running VM's .avhdx onto its own disk
    merge                          Remove-VMSnapshot merged the .avhdx into the VM's disk
    stop                           powerState Off stops the VM (graceful first, -TurnOff on failure)
    delete                         finalize removes the VM and every file of its layout

and prints a table. Everything it created is removed at the end, also when it fails or is interrupted
(Ctrl-C, SIGTERM): the created objects are recorded before each step (VMs are found again by the uid
tag in their Notes), and cleanup removes only what lies inside the scratch folder.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from hyperv_operator.api import UID_TAG_PREFIX, HyperVHostSpec, PowerState, Strategy, VirtualMachineSpec
from hyperv_operator.hyperv import cmdlets
from hyperv_operator.hyperv.client import HyperVClient
from hyperv_operator.hyperv.errors import HostError
from hyperv_operator.provisioning import planner
from hyperv_operator.provisioning.engine import CopySlots, VmRef, finalize, reconcile
from hyperv_operator.provisioning.layout import Layout, is_avhdx, layout_for, same_path
from hyperv_operator.provisioning.phases import Phase

log = logging.getLogger(__name__)

HELD, FAILED, NOT_OBSERVED = "HELD", "FAILED", "NOT OBSERVED"
BASE_SIZE = 8 * 1024 * 1024
"""The scratch base: New-VHD's smallest sizes are a few MB; an empty dynamic VHDX is ~4 MB on disk."""


@dataclass(frozen=True)
class Result:
    check: str
    verdict: str
    detail: str


@dataclass
class Created:
    """What this run created on the host, recorded BEFORE the command that creates it."""

    root: str | None = None
    uids: list[str] = field(default_factory=list)
    vm_ids: set[str] = field(default_factory=set)
    vms: dict[str, tuple[VmRef, VirtualMachineSpec, dict[str, Any]]] = field(default_factory=dict)
    """uid -> the last status the engine returned (cleanup deletes through the engine first)."""


def _folder_of(path: str) -> str:
    return path.rsplit("\\", 1)[0]


class Conformance:
    def __init__(self, client: HyperVClient, folder: str, *, host: HyperVHostSpec | None = None,
                 poll_cap: float = 5.0, strategy_timeout: float = 900.0,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC),
                 on_step: Callable[[str, dict[str, Any]], None] | None = None) -> None:
        self.client = client
        self.folder = folder.rstrip("\\")
        self.poll_cap = poll_cap
        self.strategy_timeout = strategy_timeout
        self.now = now
        self.on_step = on_step
        self.created = Created()
        self.results: list[Result] = []
        self.slots = CopySlots()
        self.root = f"{self.folder}\\hvop-conformance-{uuid.uuid4().hex[:8]}"
        self.base = self.root + "\\base.vhdx"
        self.vm_root = self.root + "\\VMs"
        self.host = replace(host, default_vm_path=self.vm_root) if host else HyperVHostSpec(
            address="conformance", default_vm_path=self.vm_root)

    def record(self, check: str, verdict: str, detail: str) -> None:
        self.results.append(Result(check, verdict, detail))
        log.info("%s: %s (%s)", check, verdict, detail)

    # --- the run ----------------------------------------------------------------------------------

    async def run(self) -> list[Result]:
        probe = getattr(self.client, "probe", None)
        if probe is not None:
            found = await probe()
            self.record("connect", HELD, f"host {found.host_name or '?'} in {found.latency_seconds:.2f}s")
            missing = ", ".join(found.missing_commands)
            self.record("Hyper-V module", FAILED if missing else HELD,
                        f"missing: {missing}" if missing else f"version {found.hyperv_version or '?'}")
        (exists,) = await self.client.run([cmdlets.test_path(self.folder)])
        if exists.value is not True:
            # New-Item would create it, and cleanup removes only the scratch folder inside it.
            raise ValueError(f"--folder {self.folder} does not exist on the host (or is not reachable from it)")
        self.created.root = self.root
        await self.client.run([cmdlets.new_directory(self.root), cmdlets.new_directory(self.vm_root)])
        await self.client.run([cmdlets.new_dynamic_vhd(self.base, BASE_SIZE)])
        (vhd,) = await self.client.run([cmdlets.get_vhd(self.base)])
        self.record("base created", HELD if vhd.get("VhdType") == "Dynamic" else FAILED,
                    f"{self.base}: {vhd.get('VhdType')} {vhd.get('VhdFormat')}, {vhd.get('FileSize')} bytes on disk")
        await self._not_found_ids()
        provisioned: list[tuple[VmRef, VirtualMachineSpec, dict[str, Any]]] = []
        for strategy in (Strategy.DIFFERENCING, Strategy.COPY, Strategy.QUICK):
            ref, spec, status = await self._provision(strategy)
            provisioned.append((ref, spec, status))
        ref, spec, status = provisioned[0]
        if status.get("phase") == Phase.PROVISIONED:
            provisioned[0] = (ref, spec, await self._stop(ref, spec, status))
        for ref, spec, status in provisioned:
            await self._delete(ref, spec, status)
        return self.results

    async def _not_found_ids(self) -> None:
        for name, statement in (("Get-VM -Id <unknown>", cmdlets.get_vm_by_id(str(uuid.uuid4()))),
                                ("Get-VHD <missing>", cmdlets.get_vhd(self.root + "\\missing.vhdx"))):
            try:
                await self.client.run([statement])
            except HostError as err:
                ok = planner.is_not_found(err)
                self.record(f"not found: {name}", HELD if ok else FAILED,
                            f"{err.fq_error_id or '-'} / {err.category or '-'} / {err.exception_type or '-'}"
                            + ("" if ok else " (the operator does not read this as 'not found')"))
            else:
                self.record(f"not found: {name}", FAILED, "no error")

    async def _provision(self, strategy: Strategy) -> tuple[VmRef, VirtualMachineSpec, dict[str, Any]]:
        uid = str(uuid.uuid4())
        self.created.uids.append(uid)
        ref = VmRef("conformance", f"hvop-conf-{strategy.value.lower()}-{uid[:6]}", uid, 1)
        spec = VirtualMachineSpec(host_name="conformance", base_vhd=self.base, strategy=strategy,
                                  memory_bytes=512 * 1024**2, cpus=1, vm_path=self.vm_root)
        layout = layout_for(ref.name, uid, spec.vm_path, self.vm_root)
        status: dict[str, Any] = {}
        self.created.vms[uid] = (ref, spec, status)
        seen = _Observed()
        started = time.monotonic()
        while time.monotonic() - started < self.strategy_timeout:
            outcome = await reconcile(self.client, ref, spec, status, self.host, "conformance", self.slots,
                                      self.now())
            status = {k: v for k, v in outcome.status.items() if v is not None}
            self.created.vms[uid] = (ref, spec, status)
            if status.get("vmId"):
                self.created.vm_ids.add(str(status["vmId"]))
            if self.on_step is not None:
                self.on_step(strategy.value, status)
            # The engine runs through consecutive phases in one step, so the re-parent may happen and
            # the merge start before we can look: its event (one per run: the merge's, if it started) says it
            # was sent and succeeded.
            seen.reparent_sent = seen.reparent_sent or any(e.reason in ("Reparenting", "MergeStarted")
                                                           for e in outcome.events)
            await self._observe(status, layout, seen)
            if outcome.requeue_after is None or status.get("phase") in (Phase.PROVISIONED, Phase.FAILED):
                break
            await asyncio.sleep(max(0.05, min(outcome.requeue_after, self.poll_cap)))
        phase = status.get("phase")
        self.record(f"{strategy.value} provisions", HELD if phase == Phase.PROVISIONED else FAILED,
                    f"phase {phase} after {time.monotonic() - started:.1f}s: {status.get('message') or ''}".strip())
        if strategy is not Strategy.DIFFERENCING:
            self.record(f"{strategy.value}: copy worker starts", HELD if seen.copy_phase and phase == Phase.PROVISIONED
                        else FAILED, "the background copy completed" if phase == Phase.PROVISIONED
                        else "the copy did not complete")
            if "Running" in seen.states:
                self.record(f"{strategy.value}: status file readable while written", HELD,
                            f"read {seen.status_reads} time(s), states {sorted(seen.states)}")
            elif seen.status_reads:
                self.record(f"{strategy.value}: status file readable while written", NOT_OBSERVED,
                            f"read only after the copy finished (states {sorted(seen.states)}): the base is tiny")
            elif seen.status_misses:
                self.record(f"{strategy.value}: status file readable while written", FAILED,
                            f"{seen.status_misses} read(s) while copying gave no JSON: {seen.last_miss}")
            else:
                self.record(f"{strategy.value}: status file readable while written", NOT_OBSERVED,
                            "the copy finished before a read")
        if strategy is Strategy.QUICK:
            base_folder = _folder_of(self.base)
            if seen.avhdx:
                beside = same_path(_folder_of(seen.avhdx), base_folder)
                self.record("Quick: checkpoint beside its parent", HELD if beside else FAILED,
                            f"{seen.avhdx} (base folder {base_folder})")
            else:
                self.record("Quick: checkpoint beside its parent", NOT_OBSERVED, "no .avhdx seen on the VM")
            merged = phase == Phase.PROVISIONED and await self._drive_is(status, layout)
            # The operator removes the checkpoint only once Get-VHD shows the .avhdx on the VM's own
            # disk (never into the base), so a merge that ended on that disk proves the re-parent held.
            reparent_proved = seen.reparented or (seen.reparent_sent and merged)
            self.record("Quick: online re-parent (-LeafPath)", HELD if reparent_proved else
                        (FAILED if phase != Phase.PROVISIONED else NOT_OBSERVED),
                        "the running VM's .avhdx took its own disk as parent" if seen.reparented
                        else "Set-VHD -LeafPath succeeded and the merge landed in the VM's own disk" if reparent_proved
                        else "not seen between steps")
            leftover = [n for n in await self._names(base_folder) if n.lower().endswith(".avhdx")]
            self.record("Quick: merge", HELD if merged and not leftover else FAILED,
                        f"VM on {layout.disk}; .avhdx left in the base folder: {leftover or 'none'}")
        return ref, spec, status

    async def _observe(self, status: dict[str, Any], layout: Layout, seen: _Observed) -> None:
        phase = status.get("phase")
        if phase in (Phase.COPYING, Phase.COPYING_BASE):
            seen.copy_phase = True
            try:
                out = await self.client.run([cmdlets.read_text_file(layout.copy_status)])
            except HostError as err:
                seen.status_misses += 1
                seen.last_miss = str(err)
            else:
                text = out[0].value if out else None
                try:
                    state = json.loads(str(text))["state"] if isinstance(text, str) else None
                except (ValueError, KeyError, TypeError):
                    state = None
                if state:
                    seen.status_reads += 1
                    seen.states.add(str(state))
                else:
                    seen.status_misses += 1
                    seen.last_miss = f"{out[0].type_names if out else 'no output'}: {text!r}"[:200]
        vm_id = status.get("vmId")
        if vm_id and phase in (Phase.CHECKPOINTING, Phase.STARTING, Phase.COPYING_BASE, Phase.REPARENTING,
                               Phase.MERGING):
            try:
                drives = await self.client.run([cmdlets.get_vm_hard_disk_drives(str(vm_id))])
            except HostError:
                return
            for drive in drives:
                path = str(drive.get("Path") or "")
                if is_avhdx(path):
                    seen.avhdx = path
                    try:
                        (vhd,) = await self.client.run([cmdlets.get_vhd(path)])
                    except (HostError, ValueError):
                        continue
                    if same_path(str(vhd.get("ParentPath") or ""), layout.disk):
                        seen.reparented = True

    async def _drive_is(self, status: dict[str, Any], layout: Layout) -> bool:
        drives = await self.client.run([cmdlets.get_vm_hard_disk_drives(str(status["vmId"]))])
        return [str(d.get("Path")).lower() for d in drives] == [layout.disk.lower()]

    async def _names(self, folder: str) -> list[str]:
        return [str(o.get("Name") or "") for o in await self.client.run([cmdlets.get_child_items(folder)])]

    async def _stop(self, ref: VmRef, spec: VirtualMachineSpec, status: dict[str, Any]) -> dict[str, Any]:
        off = replace(spec, power_state=PowerState.OFF)
        started = time.monotonic()
        while time.monotonic() - started < self.strategy_timeout:
            outcome = await reconcile(self.client, ref, off, status, self.host, "conformance", self.slots, self.now())
            status = {k: v for k, v in outcome.status.items() if v is not None}
            self.created.vms[ref.uid] = (ref, off, status)
            if outcome.requeue_after is None:
                break
            await asyncio.sleep(max(0.05, min(outcome.requeue_after, self.poll_cap)))
        (vm,) = await self.client.run([cmdlets.get_vm_by_id(str(status["vmId"]))])
        self.record("stop (powerState Off)", HELD if vm.get("State") == "Off" else FAILED,
                    f"VM {vm.get('State')} after {time.monotonic() - started:.1f}s")
        return status

    async def _finalize(self, ref: VmRef, spec: VirtualMachineSpec, status: dict[str, Any], timeout: float) -> bool:
        """The production delete (it also cancels a running copy), until done or `timeout`."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            outcome = await finalize(self.client, ref, spec, status, self.host, "conformance", self.slots,
                                     self.now())
            status = {k: v for k, v in outcome.status.items() if v is not None}
            self.created.vms[ref.uid] = (ref, spec, status)
            if outcome.finished:
                self.created.vms.pop(ref.uid, None)
                return True
            await asyncio.sleep(max(0.05, min(outcome.requeue_after or 1.0, self.poll_cap)))
        return False

    async def _delete(self, ref: VmRef, spec: VirtualMachineSpec, status: dict[str, Any]) -> None:
        layout = layout_for(ref.name, ref.uid, spec.vm_path, self.vm_root)
        finished = await self._finalize(ref, spec, status, self.strategy_timeout)
        (gone,) = await self.client.run([cmdlets.test_path(layout.vm_dir)])
        self.record(f"{spec.strategy.value}: delete", HELD if finished and gone.value is False else FAILED,
                    f"finalize {'finished' if finished else 'did not finish'}; {layout.vm_dir} "
                    f"{'removed' if gone.value is False else 'still exists'}")

    # --- cleanup ----------------------------------------------------------------------------------

    async def cleanup(self, timeout: float = 120.0) -> list[str]:
        """Remove every VM and file this run created; returns what could not be removed.

        First through the engine's own delete (it stops and cancels what it started), then a sweep of
        tagged VMs and of the scratch folder, retried while a file is still busy (a copy finishing)."""
        deadline = time.monotonic() + timeout
        for ref, spec, status in list(self.created.vms.values()):
            try:
                await self._finalize(ref, spec, status, max(1.0, min(60.0, deadline - time.monotonic())))
            except HostError as err:
                log.info("cleanup: finalize of %s failed: %s", ref.name, err)
        while True:
            problems = await self._sweep()
            if not problems or time.monotonic() >= deadline:
                return problems
            await asyncio.sleep(1.0)

    async def _sweep(self) -> list[str]:
        problems: list[str] = []
        tags = [UID_TAG_PREFIX + uid for uid in self.created.uids]
        ids = set(self.created.vm_ids)
        if tags or ids:
            try:
                for vm in await self.client.run([cmdlets.get_all_vms()]):
                    if any(tag in str(vm.get("Notes") or "") for tag in tags):
                        ids.add(str(vm.get("Id")))
            except HostError as err:
                problems.append(f"listing VMs: {err}")
        for vm_id in sorted(ids):
            try:
                await self.client.run([cmdlets.stop_vm(vm_id, turn_off=True)])
            except HostError as err:
                if planner.is_not_found(err):
                    continue
            try:
                await self.client.run([cmdlets.remove_vm(vm_id)])
            except HostError as err:
                if not planner.is_not_found(err):
                    problems.append(f"VM {vm_id}: {err}")
        if self.created.root is not None:
            await self._remove_tree(self.created.root, problems)
            if not problems:
                self.created.root = None
        return problems

    async def _remove_tree(self, folder: str, problems: list[str]) -> None:
        """Remove `folder` (inside the scratch root only) bottom-up, file by file: never -Recurse."""
        if not (same_path(folder, self.root) or folder.lower().startswith(self.root.lower() + "\\")):
            raise AssertionError(f"refusing to clean {folder} outside {self.root}")
        try:
            children = await self.client.run([cmdlets.get_child_items(folder)])
        except HostError as err:
            if not planner.is_not_found(err):
                problems.append(f"{folder}: {err}")
            return
        for child in children:
            path = f"{folder}\\{child.get('Name')}"
            if child.get("PSIsContainer") or "Directory" in str(child.get("Attributes") or ""):
                await self._remove_tree(path, problems)
            else:
                try:
                    await self.client.run([cmdlets.remove_file(path)])
                except HostError as err:
                    problems.append(f"{path}: {err}")
        try:
            await self.client.run([cmdlets.remove_empty_directory(folder)])
        except HostError as err:
            problems.append(f"{folder}: {err}")


@dataclass
class _Observed:
    copy_phase: bool = False
    status_reads: int = 0
    status_misses: int = 0
    last_miss: str = ""
    states: set[str] = field(default_factory=set)
    avhdx: str = ""
    reparented: bool = False
    reparent_sent: bool = False


def format_table(results: list[Result]) -> str:
    width = max([len(r.check) for r in results] + [5])
    lines = [f"{'check':<{width}}  {'verdict':<12}  detail", "-" * (width + 30)]
    lines += [f"{r.check:<{width}}  {r.verdict:<12}  {r.detail}" for r in results]
    return "\n".join(lines)


# --- CLI ------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from hyperv_operator.preflight import add_connection_arguments

    add_connection_arguments(parser)
    parser.add_argument("--folder", required=True,
                        help="an existing folder on the host where a scratch folder may be created and removed")
    parser.add_argument("--poll", type=float, default=5.0, help="longest wait between two engine steps (seconds)")
    parser.add_argument("--timeout", type=float, default=900.0, help="per strategy (seconds)")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_conformance(args: argparse.Namespace) -> int:
    from hyperv_operator.hyperv.winrm import WinRMClient
    from hyperv_operator.preflight import settings_from_args

    settings = settings_from_args(args)
    client = WinRMClient(settings)
    host = HyperVHostSpec(address=settings.server, default_vm_path=args.folder,
                          configuration_name=settings.configuration_name)
    conformance = Conformance(client, args.folder, host=host, poll_cap=args.poll, strategy_timeout=args.timeout)
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    interrupted = False
    error: BaseException | None = None
    try:
        asyncio.run(conformance.run())
    except KeyboardInterrupt:
        interrupted = True
        print("interrupted: cleaning up", file=sys.stderr, flush=True)
    except (HostError, ValueError) as err:
        error = err
    finally:
        # A second Ctrl-C must not leave VMs behind: ignore it while cleaning up.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        try:
            problems = asyncio.run(conformance.cleanup())
        finally:
            asyncio.run(client.close())
            signal.signal(signal.SIGTERM, previous)
            signal.signal(signal.SIGINT, signal.default_int_handler)
    if conformance.results:
        print(format_table(conformance.results))
    if error is not None:
        print(f"conformance stopped: {error}", file=sys.stderr)
    if problems:
        print("NOT CLEANED UP (remove by hand):\n  " + "\n  ".join(problems), file=sys.stderr)
        return 2
    print(f"cleanup: removed {conformance.root} and {len(conformance.created.uids)} scratch VM(s)")
    if interrupted:
        return 130
    failed = error is not None or any(r.verdict == FAILED for r in conformance.results)
    print("conformance " + ("FAILED" if failed else "passed"), file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0
