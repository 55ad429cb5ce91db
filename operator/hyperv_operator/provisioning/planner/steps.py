"""The plan function of every phase but the copy phases (see copying.py): each looks at the observation
and returns DONE, one host action, a wait or a failure. The rows that run them are in table.py."""

from __future__ import annotations

from hyperv_operator import conditions as cond
from hyperv_operator.api import UID_TAG_PREFIX, PowerState
from hyperv_operator.hyperv import cmdlets, second_hop
from hyperv_operator.provisioning import bootstrap as bootstrap_mod
from hyperv_operator.provisioning import guest as guest_mod
from hyperv_operator.provisioning import network as network_mod
from hyperv_operator.provisioning import resize as resize_mod
from hyperv_operator.provisioning import unattend as unattend_mod
from hyperv_operator.provisioning.layout import is_avhdx, same_path
from hyperv_operator.provisioning.observation import VmInfo
from hyperv_operator.provisioning.pacing import merge_poll_delay
from hyperv_operator.provisioning.planner.work import (
    AFTER_ACTION,
    CRITICAL_POLL,
    DONE,
    MERGE_POLL,
    MERGE_TIMEOUT,
    NEW_VM_CHECKPOINTED,
    OFF,
    PAUSED,
    POWER_POLL,
    RUNNING,
    SAVED_STATES,
    SHORT_WAIT,
    STOP_TIMEOUT,
    Action,
    _Act,
    _Fail,
    _guest_verdict,
    _Result,
    _seconds_between,
    _Wait,
    _Work,
    is_critical,
)

# --- phase handlers ------------------------------------------------------------------------------


def _pending(w: _Work) -> _Result:
    base = w.spec.base_vhd
    if w.obs.is_denied(base):
        return _Fail(second_hop.REASON, second_hop.denied_message(base, w.obs.host_name))
    if not w.obs.exists(base):
        return _Fail("BaseDiskNotFound", f"base disk {base} not found on host {w.obs.host_name}; nothing was created")
    info = w.obs.vhd(base)
    if info is None:
        return _Wait(f"reading base disk {base}", SHORT_WAIT)
    if info.vhd_format and w.spec.generation == 2 and info.vhd_format.upper() != "VHDX":
        return _Fail("BaseFormatUnsupported",
                     f"base disk {base} is in {info.vhd_format} format; generation 2 VMs need a VHDX base (with a "
                     f"GPT/UEFI image); use generation 1 or convert the base (Convert-VHD); nothing was created")
    if info.in_use_elsewhere and not (w.status.get("timings") or {}).get("createdAt"):
        w.event("BaseInUseElsewhere", f"Get-VHD cannot read base disk {base}: another host has it open (shared "
                                      f"storage); checked it by file instead ({info.file_size} bytes)")
    if is_avhdx(base) or info.vhd_type.lower() == "differencing" or info.parent_path:
        return _Fail("BaseIsDifferencing",
                     f"base disk {base} is a differencing disk (parent {info.parent_path}); use a standalone VHDX "
                     f"as base; nothing was created")
    w.status["vmName"] = w.layout.vm_name
    w.status["vmDir"] = w.layout.vm_dir
    if w.on_checkpoint:
        w.status["checkpointName"] = w.layout.checkpoint_name
    if not w.on_checkpoint and not w.status.get("disk"):
        diff = not w.copies_base
        w.status["disk"] = {"path": w.layout.disk, "type": "Differencing" if diff else "Dynamic",
                            "parentPath": w.spec.base_vhd if diff else None}
    if info.size is not None and w.copies_base and not w.status.get("copy"):
        w.copy_status(bytesTotal=info.file_size or info.size, bytesCopied=0, percent=0)
    return DONE


def _creating_disk(w: _Work) -> _Result:
    disk, base = w.layout.disk, w.spec.base_vhd
    w.status["disk"] = {"path": disk, "type": "Differencing", "parentPath": base}
    if w.obs.exists(disk):
        info = w.obs.vhd(disk)
        if info is None:
            return _Wait(f"reading disk {disk}", SHORT_WAIT)
        if not same_path(info.parent_path, base):
            return _Fail("DiskConflict", f"{disk} exists but its parent is {info.parent_path}, not the base {base}")
        w.created(disk)
        return DONE
    w.created(disk)
    return _Act(Action("CreateDifferencingDisk",
                       (cmdlets.new_directory(w.layout.vm_dir), cmdlets.new_differencing_vhd(disk, base)),
                       f"New-VHD {disk} -ParentPath {base} -Differencing"),
                f"creating differencing disk {disk} on base {base}")


def _creating_vm(w: _Work) -> _Result:
    quick = w.on_checkpoint  # made on the base (not started: the base is read-only), checkpointed next
    vhd = w.spec.base_vhd if quick else w.layout.disk
    vm = w.obs.vm
    if vm is None:
        if not quick and not w.obs.exists(vhd):
            return _Fail("DiskNotFound", f"the VM's disk {vhd} is missing on host {w.obs.host_name}")
        s = w.spec
        # Tag and size it in the same statement (and start it, where the phase after is Starting):
        # New-VM's output feeds Set-VM, so a crash half-way leaves an untagged VM in our folder.
        # Secure boot settings go on with Set-VMFirmware while the VM is still off: no start then.
        firmware_first = s.secure_boot is not None and s.generation == 2
        start = not quick and s.power_state is PowerState.RUNNING and not firmware_first and s.bootstrap is None \
            and not s.network_adapters and s.dynamic_memory is None  # issue 14: configured while off
        if quick and not w.status.get("checkpointTypeBefore"):
            # New VMs get Production checkpoints by default; Standard is only for the quick-provision
            # checkpoint and is put back once it is merged.
            w.status["checkpointTypeBefore"] = "Production"
        # The folder New-VM -Path puts the VM in: made here unless the host (or the action just
        # before, in the same batch) shows it already there.
        folder = () if w.obs.exists(w.layout.vm_dir) else (cmdlets.new_directory(w.layout.vm_dir),)
        # Quick: the checkpoint rides in New-VM's statement (Checkpoint-VM gets the VM only if Set-VM
        # passed it on), unless the VM is configured while off first; the drives tell the .avhdx.
        checkpoint = (w.layout.checkpoint_name if quick and not firmware_first and not s.network_adapters
                      and s.dynamic_memory is None else None)
        drives = (cmdlets.get_vm_hard_disk_drives_by_name(w.layout.vm_name),) if checkpoint else ()
        return _Act(Action(NEW_VM_CHECKPOINTED if checkpoint else "NewVM",
                           (*folder,
                            cmdlets.new_configured_vm(w.layout.vm_name, w.layout.vm_dir, vhd, s.memory_bytes,
                                                      s.generation, s.switch_name,
                                                      notes=f"{UID_TAG_PREFIX}{w.vm.uid}", processor_count=s.cpus,
                                                      checkpoint_type="Standard" if quick else None, start=start,
                                                      checkpoint=checkpoint),
                            *drives),
                           f"New-VM {w.layout.vm_name} -Path {w.layout.vm_dir} -VHDPath {vhd} | Set-VM"
                           + (" | Start-VM" if start else "")
                           + (f" | Checkpoint-VM {checkpoint}" if checkpoint else "")),
                    f"creating VM {w.layout.vm_name} on {vhd}" + (" (not started: the base is read-only)"
                                                                   if quick else ""))
    tagged = vm.tagged_for(w.vm.uid)
    wrong_cpus = vm.processor_count is not None and vm.processor_count != w.spec.cpus
    wrong_checkpoint = quick and vm.checkpoint_type is not None and vm.checkpoint_type != "Standard"
    if wrong_checkpoint and not w.status.get("checkpointTypeBefore"):
        w.status["checkpointTypeBefore"] = vm.checkpoint_type  # restored once the checkpoint is merged
    if not tagged or wrong_cpus or wrong_checkpoint:
        return _Act(Action("ConfigureVM",
                           (cmdlets.set_vm(vm.id, notes=f"{UID_TAG_PREFIX}{w.vm.uid}", processor_count=w.spec.cpus,
                                           checkpoint_type="Standard" if quick else None),),
                           f"Set-VM {vm.id} -Notes <uid tag> -ProcessorCount {w.spec.cpus}"
                           + (" -CheckpointType Standard" if quick else "")),
                    f"configuring VM {vm.id} (uid tag, CPUs" + (", standard checkpoints)" if quick else ")"))
    boot = w.spec.secure_boot
    if boot is not None and w.spec.generation == 2 and not w.status.get("firmwareConfigured"):
        if vm.state != OFF:
            return _Wait(f"VM {vm.id} is {vm.state} before its secure boot settings were applied; Set-VMFirmware "
                         f"needs the VM off: turn it off to continue", CRITICAL_POLL, stall="FirmwareNotApplied")
        w.status["firmwareConfigured"] = True
        template = boot.template if boot.enabled else None
        return _Act(Action("ConfigureFirmware",
                           (cmdlets.set_vm_firmware(vm.id, secure_boot=boot.enabled, template=template),),
                           f"Set-VMFirmware {vm.id} -EnableSecureBoot {'On' if boot.enabled else 'Off'}"
                           + (f" -SecureBootTemplate {template}" if template else "")),
                    f"applying secure boot settings to VM {vm.id} before its first start")
    networked = _bootstrap(w, network_mod.configure(w.spec, w.status, w.obs, vm))  # issue 14: adapters
    if networked is not None:
        return networked
    memory = resize_mod.before_first_start(w.spec, vm)  # issue 14: Dynamic Memory, set while off
    if memory is not None:
        return _Act(Action(*memory), f"configuring the memory of VM {vm.id} before its first start")
    return DONE


def _checkpointing(w: _Work) -> _Result:
    vm = w.obs.vm
    assert vm is not None
    name = w.layout.checkpoint_name
    w.status["checkpointName"] = name
    if w.obs.has_snapshot(name):
        avhdx = w.obs.avhdx_drive()
        if avhdx:
            w.status["disk"] = {"path": avhdx, "type": "Differencing", "parentPath": w.spec.base_vhd}
        return DONE
    return _Act(Action("Checkpoint", (cmdlets.checkpoint_vm(vm.id, name), cmdlets.get_vm_hard_disk_drives(vm.id)),
                       f"Checkpoint-VM {vm.id} -SnapshotName {name}"),
                f"creating checkpoint {name} (the VM moves onto an .avhdx next to the base)")


def _starting(w: _Work) -> _Result:
    vm = w.obs.vm
    assert vm is not None
    if vm.state == RUNNING:
        w.reached("runningAt", "secondsToRunning")
        return DONE
    if w.spec.power_state is PowerState.OFF:
        return DONE
    if vm.state == PAUSED:
        return _Act(Action("ResumeVM", (cmdlets.resume_vm(vm.id),), f"Resume-VM {vm.id}"),
                    f"resuming VM {vm.id} (it was paused)")
    if vm.state != OFF and vm.state not in SAVED_STATES:
        return _Wait(f"waiting for VM {vm.id} to settle (state {vm.state})", SHORT_WAIT)
    prepared = _bootstrap(w, _before_first_start(w, vm))  # issue 14
    if prepared is not None:
        return prepared
    return _Act(Action("StartVM", (cmdlets.start_vm(vm.id),), f"Start-VM {vm.id}"), f"starting VM {vm.id}")


def _reparenting(w: _Work) -> _Result:
    disk, base = w.layout.disk, w.spec.base_vhd
    avhdx = w.recorded_avhdx()
    if avhdx is None or not w.obs.exists(avhdx):
        if w.obs.drives and all(same_path(d, disk) for d in w.obs.drives):
            return DONE  # merged already (the operator died after the merge)
        return _Fail("UnexpectedDiskChain", f"the VM's checkpoint disk {avhdx} is missing; drives: "
                                            f"{', '.join(w.obs.drives) or 'none'}")
    info = w.obs.vhd(avhdx)
    if info is None:
        return _Wait(f"reading disk chain of {avhdx}", SHORT_WAIT)
    w.status["disk"] = {"path": avhdx, "type": "Differencing", "parentPath": info.parent_path}
    if same_path(info.parent_path, disk):
        return DONE
    if not same_path(info.parent_path, base):
        return _Fail("UnexpectedDiskChain", f"{avhdx} has parent {info.parent_path}; expected the base {base} or "
                                            f"the copy {disk}")
    if not w.obs.exists(disk):
        return _Fail("CopyMissing", f"the copy {disk} is missing; cannot re-parent {avhdx}")
    w.status["disk"] = {"path": avhdx, "type": "Differencing", "parentPath": disk}
    w.event("Reparenting", f"re-parenting {avhdx} from {base} onto {disk}")
    return _Act(Action("Reparent", (cmdlets.reparent_vhd(avhdx, disk),),
                       f"Set-VHD {avhdx} -ParentPath {disk} -LeafPath {avhdx}"),
                f"re-parenting {avhdx} onto the copy {disk}")


def _merging(w: _Work) -> _Result:
    vm = w.obs.vm
    assert vm is not None
    disk = w.layout.disk
    avhdx = w.recorded_avhdx()
    disk_info = w.obs.vhd(disk)
    on_disk = bool(w.obs.drives) and all(same_path(d, disk) for d in w.obs.drives)
    avhdx_gone = avhdx is None or not w.obs.exists(avhdx)
    if on_disk and avhdx_gone and disk_info is not None and not disk_info.parent_path and not vm.merging:
        w.status["disk"] = {"path": disk, "type": disk_info.vhd_type or "Dynamic", "parentPath": None}
        before = w.status.get("checkpointTypeBefore")
        if before and before != "Standard" and vm.checkpoint_type == "Standard":
            # Standard checkpoints were needed only for the quick-provision checkpoint.
            w.status["checkpointTypeBefore"] = None
            return _Act(Action("RestoreCheckpointType", (cmdlets.set_vm(vm.id, checkpoint_type=str(before)),),
                               f"Set-VM {vm.id} -CheckpointType {before}"),
                        f"merged; restoring the VM's checkpoint type {before}")
        w.status["mergeStartedAt"] = None
        w.event("Independent", f"{w.vm_label} now runs on its own disk {disk}; the base is no longer used")
        return DONE
    name = w.layout.checkpoint_name
    if w.obs.has_snapshot(name):
        info = w.obs.vhd(avhdx)
        if info is None:
            return _Wait(f"reading disk chain of {avhdx}", SHORT_WAIT)
        if not same_path(info.parent_path, disk):
            # Never merge into the base: the checkpoint must sit on the copy first.
            return _Fail("UnexpectedDiskChain", f"refusing to remove checkpoint {name}: {avhdx} has parent "
                                                f"{info.parent_path}, not the copy {disk}")
        w.event("MergeStarted", f"removing checkpoint {name}: merging {avhdx} into {disk} online")
        w.status["mergeStartedAt"] = cond.timestamp(w.now)
        statements = [cmdlets.remove_vm_snapshot(vm.id, name)]
        before = w.status.get("checkpointTypeBefore")
        if before and before != "Standard":
            # The quick-provision checkpoint was the only one that needed Standard: put the VM's type
            # back in the same pipeline (a crash in between is caught after the merge, below).
            statements.append(cmdlets.set_vm(vm.id, checkpoint_type=str(before)))
            w.status["checkpointTypeBefore"] = None
        return _Act(Action("RemoveCheckpoint", tuple(statements),
                           f"Remove-VMSnapshot {vm.id} -Name {name}"
                           + (f"; Set-VM -CheckpointType {before}" if len(statements) > 1 else "")),
                    f"removing checkpoint {name} (merges {avhdx} into {disk})", merge_poll_delay(0.0, MERGE_POLL))
    message = (f"merging {avhdx} into {disk} (VM status: {vm.status or 'unknown'}; drives: "
               f"{', '.join(w.obs.drives) or 'none'})")
    merging_for = _seconds_between(w.status.get("mergeStartedAt"), w.now)
    if merging_for is not None and merging_for > MERGE_TIMEOUT:
        return _Wait(f"the merge of {avhdx} into {disk} has not finished after {int(merging_for)}s (limit "
                     f"{int(MERGE_TIMEOUT)}s); VM status: {vm.status or 'unknown'}. Check the host (Hyper-V-VMMS "
                     f"event log, free space on the disk's volume); the operator keeps watching", CRITICAL_POLL,
                     stall="MergeTimedOut")
    return _Wait(message, merge_poll_delay(merging_for, MERGE_POLL))


def _report_network_drift(w: _Work, vm: VmInfo) -> None:
    """Adapters changed on the host after they were applied: in status.networkDrift, and a Warning
    Event when the difference is new (a drift check every interval does not post it again)."""
    found = network_mod.drift(w.spec, w.status, w.obs)
    if found is None:
        return
    if found and found != w.status.get(network_mod.DRIFT_KEY):
        w.event(network_mod.DRIFT_EVENT, f"the network adapters of VM {vm.id} differ from spec.networkAdapters: "
                                         f"{found}; the operator leaves them as they are (restore them on the "
                                         f"host)", warning=True)
    w.status[network_mod.DRIFT_KEY] = found or None


def _provisioned(w: _Work) -> _Result:
    vm = w.obs.vm
    if vm is None:
        return _Fail("VMNotFound", f"no VM tagged for this resource on host {w.obs.host_name}")
    if vm.state == PAUSED:
        # Paused: the guest does not run, so it can neither serve (Running) nor shut down (Off).
        # Resume it first, in both cases; a graceful shutdown follows when spec.powerState is Off.
        w.event("VMPausedOutOfBand", f"VM {vm.id} was paused outside the operator; resuming it "
                                     f"(spec.powerState {w.spec.power_state.value})", warning=True)
        return _Act(Action("ResumeVM", (cmdlets.resume_vm(vm.id),), f"Resume-VM {vm.id}"),
                    f"resuming paused VM {vm.id}", POWER_POLL)
    _report_network_drift(w, vm)
    resized = _resize(w, vm)  # issue 14: cpus/memory changes
    if resized is not None:
        return resized
    if w.spec.power_state is PowerState.RUNNING:
        w.status["stopRequestedAt"] = None
        if vm.state == RUNNING:
            seen = _guest_verdict(w)  # issue 14: Ready follows spec.readiness
            if not seen.ready:
                return _Wait(seen.message, guest_mod.GUEST_POLL, stall=seen.reason if seen.stalled else None)
            finished = _bootstrap(w, unattend_mod.after_ready(w.spec, w.status, w.obs, vm, w.now)
                                  if w.spec.bootstrap is not None and w.spec.bootstrap.unattend else
                                  bootstrap_mod.after_ready(w.spec, w.status, w.obs, vm, w.layout, seen.ready, w.now))
            if finished is not None:  # issue 14: the configuration disk goes once the guest is up
                return finished
            return _Wait(seen.message, None)
        if vm.state == OFF or vm.state in SAVED_STATES:
            prepared = _bootstrap(w, _before_first_start(w, vm)) if vm.state == OFF else None
            if prepared is not None:  # issue 14: a first start that comes after powerState Off
                return prepared
            unchanged_spec = w.status.get("observedGeneration") == w.vm.generation
            if unchanged_spec and w.status.get("powerState") == RUNNING:
                w.event("VMStoppedOutOfBand", f"VM {vm.id} was stopped outside the operator (state {vm.state}); "
                                              f"starting it again because spec.powerState is Running", warning=True)
            else:
                w.event("PowerStateChanged", f"starting VM {vm.id} (spec.powerState Running)")
            return _Act(Action("StartVM", (cmdlets.start_vm(vm.id),), f"Start-VM {vm.id}"),
                        f"starting VM {vm.id} (spec.powerState Running, was {vm.state})")
        return _Wait(f"waiting for VM {vm.id} to settle (state {vm.state})", POWER_POLL)
    if vm.state == OFF:
        w.status["stopRequestedAt"] = None
        return _Wait(f"VM {vm.id} is off (spec.powerState Off)", None)
    if vm.state in SAVED_STATES:
        # Not off: its memory is saved to disk. Turning it off would discard that state, and the
        # operator never loses data on its own; the user decides.
        w.status["stopRequestedAt"] = None
        return _Wait(f"VM {vm.id} is {vm.state} (its memory is saved to disk), not Off as spec.powerState asks; "
                     f"the operator does not discard a saved state: start the VM (it is then shut down) or remove "
                     f"its saved state (Remove-VMSavedState)", CRITICAL_POLL, stall="VMSaved")
    requested = cond.parse_timestamp(w.status.get("stopRequestedAt"))
    if requested is None:
        w.status["stopRequestedAt"] = cond.timestamp(w.now)
        w.event("PowerStateChanged", f"shutting down VM {vm.id} through the guest (spec.powerState Off)")
        return _Act(Action("StopVM", (cmdlets.stop_vm(vm.id, turn_off=False),), f"Stop-VM {vm.id} -Force"),
                    f"shutting down VM {vm.id} (graceful)", POWER_POLL)
    waited = (w.now - requested).total_seconds()
    if waited >= STOP_TIMEOUT:
        w.event("GracefulStopTimedOut", f"VM {vm.id} did not shut down within {int(STOP_TIMEOUT)}s; turning it off",
                warning=True)
        return _Act(Action("TurnOffVM", (cmdlets.stop_vm(vm.id, turn_off=True),), f"Stop-VM {vm.id} -TurnOff"),
                    f"turning off VM {vm.id} (graceful shutdown timed out)", POWER_POLL)
    return _Wait(f"waiting for VM {vm.id} to shut down ({int(waited)}s of {int(STOP_TIMEOUT)}s, state {vm.state})",
                 POWER_POLL)


def _critical(w: _Work) -> _Wait | None:
    """A VM Hyper-V reports as *Critical lost access to its storage: nothing the operator sends can
    help (Start-VM, checkpoints and merges fail on it), so stall with the reason and re-check."""
    vm = w.obs.vm
    if vm is None or not is_critical(vm.state):
        return None
    return _Wait(f"Hyper-V reports VM {vm.id} as {vm.state}: it has lost access to its storage (a disk or its "
                 f"configuration folder is unreachable, e.g. the share is down or the volume is full). The "
                 f"operator sends nothing until the host reports a normal state again", CRITICAL_POLL,
                 stall="VMCritical")


def _before_first_start(w: _Work, vm: VmInfo) -> bootstrap_mod.Decision | None:
    """Issue 14: the cidata disk (bootstrap.py), or unattend.xml in the VM's own disk (unattend.py)."""
    if w.spec.bootstrap is not None and w.spec.bootstrap.unattend:
        return unattend_mod.before_start(w.spec, w.status, w.obs, vm, w.layout, w.now)
    return bootstrap_mod.before_start(w.spec, w.status, w.obs, vm, w.layout, w.now)


def _bootstrap(w: _Work, d: bootstrap_mod.Decision | None) -> _Result | None:
    """Issue 14: apply a first-boot configuration decision (provisioning/bootstrap.py) to the work."""
    if d is None:
        return None
    if d.status:
        w.status[bootstrap_mod.KEY] = d.status
    w.status.update(d.top)
    if d.created:
        w.created(*d.created)
    for reason, message in d.events:
        w.event(reason, message)
    if d.action is not None:
        kind, statements, description = d.action
        if d.requeue is not None:
            return _Act(Action(kind, statements, description), d.message, d.requeue)
        return _Act(Action(kind, statements, description), d.message)
    if d.wait is not None:
        return _Wait(d.message, d.wait, stall=d.stall)
    return None


def _resize(w: _Work, vm: VmInfo) -> _Result | None:
    """Issue 14: apply spec.cpus / spec.memory changes (decisions in provisioning/resize.py)."""
    d = resize_mod.decide(w.spec, w.spec.update_policy, vm, w.status, w.now, stop_timeout=STOP_TIMEOUT)
    prev = w.status.get("conditions")
    updates = resize_mod.pending_condition(prev, d.pending, w.vm.generation, w.now)
    if updates:
        w.status["conditions"] = cond.merge(prev, updates)
    w.status.update(d.status)
    for reason, message in d.events:
        w.event(reason, message)
    if d.action is not None:
        kind, statements, description = d.action
        return _Act(Action(kind, statements, description), d.message,
                    POWER_POLL if kind in ("StopVMForResize", "TurnOffVMForResize") else AFTER_ACTION)
    if d.wait is not None:
        return _Wait(d.message, d.wait)
    return None
