"""`hyperv-operator check-host`: a read-only preflight against a real (or simulated) Hyper-V host.

Every check is a read: connectivity and auth (the probe), the Hyper-V module, the second hop (a base or
VM folder on a file server: readable from this session, or access denied, with the exact fix), the base
disk (exists, is a full disk, carries the read-only attribute), the VM folder (exists, is a folder), and with
`--strategy Quick` the base's folder, where Checkpoint-VM puts Quick's .avhdx (it must be writable
there while the base file stays read-only). Nothing is created, changed or deleted on the host.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from dataclasses import dataclass

from hyperv_operator.hyperv import cmdlets, second_hop
from hyperv_operator.hyperv.errors import HostError
from hyperv_operator.hyperv.winrm import WinRMClient, WinRMSettings


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str  # OK | WARN | FAIL
    detail: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_connection_arguments(parser)
    parser.add_argument("--base", default=None, help="base VHDX path to check")
    parser.add_argument("--vm-path", default=None, help="folder for VMs to check")
    parser.add_argument("--strategy", choices=["Differencing", "Copy", "Quick"], default=None,
                        help="check what this strategy needs (Quick writes its checkpoint beside the base)")


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """How to reach the host (shared with `conformance`)."""
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, default=None)
    parser.add_argument("--transport", choices=["https", "http"], default="https")
    parser.add_argument(
        "--auth", default="negotiate", choices=["negotiate", "kerberos", "ntlm", "credssp", "basic", "certificate"]
    )
    parser.add_argument("--username", default=None)
    parser.add_argument(
        "--password-env",
        default="HV_PASSWORD",
        help="environment variable holding the password (never pass it on the command line)",
    )
    parser.add_argument("--keytab", default=None, help="kerberos/negotiate: keytab of --username (no password)")
    parser.add_argument("--client-cert", default=None, help="certificate auth: client certificate (PEM file)")
    parser.add_argument("--client-key", default=None, help="certificate auth: its private key (PEM file)")
    parser.add_argument("--ca-bundle", default=None, help="PEM CA bundle for the host's certificate")
    parser.add_argument("--insecure-skip-tls-verify", action="store_true")
    parser.add_argument("--configuration-name", default="Microsoft.PowerShell", help="JEA endpoint")



def quick_checkpoint_folder_check(base: str, folder_item: object | None, error: str | None) -> Check:
    """Quick's checkpoint (.avhdx) lands beside its parent disk, i.e. in the base's FOLDER (Checkpoint-VM
    has no option to put it elsewhere), so Quick needs write access to that folder while the base FILE
    stays read-only. check-host writes nothing, so it reports what is needed rather than testing it."""
    folder = base.rsplit("\\", 1)[0]
    if error is not None:
        return Check("quick: base folder", "FAIL", f"{folder}: {error}")
    return Check("quick: base folder", "WARN",
                 f"Quick creates <base name>_<GUID>.avhdx in {folder} (beside the base: Hyper-V puts a checkpoint "
                 f"disk next to its parent); the Hyper-V host must be able to CREATE and DELETE files in {folder}, "
                 f"while {base} itself stays read-only. If that folder must be read-only, use Copy or Differencing. "
                 "Not tested (check-host writes nothing): run `hyperv-operator conformance` to prove it.")


async def run_checks(client: WinRMClient, base: str | None, vm_path: str | None,
                     strategy: str | None = None) -> list[Check]:
    checks: list[Check] = []
    try:
        probe = await client.probe()
    except HostError as exc:
        return [Check("connect", "FAIL", str(exc))]
    checks.append(
        Check(
            "connect",
            "OK",
            f"{client.settings.endpoint} answered in {probe.latency_seconds:.2f}s (host {probe.host_name or '?'})",
        )
    )
    if probe.missing_commands:
        checks.append(Check("hyper-v module", "FAIL", f"missing commands: {', '.join(probe.missing_commands)}"))
    else:
        checks.append(Check("hyper-v module", "OK", f"Hyper-V module {probe.hyperv_version or '?'}"))
    checks += await second_hop_checks(client, [p for p in (base, vm_path) if p], probe.host_name)
    if base:
        try:
            disk = (await client.run([cmdlets.get_vhd(base)]))[0]
            item = (await client.run([cmdlets.get_item(base)]))[0]
        except HostError as exc:
            checks.append(Check("base disk", "FAIL", str(exc)))
        else:
            if disk.get("VhdType") == "Differencing" or base.lower().endswith(".avhdx"):
                checks.append(Check("base disk", "FAIL", f"{base} is a differencing disk; a base must be a full disk"))
            else:
                checks.append(
                    Check(
                        "base disk",
                        "OK",
                        f"{disk.get('VhdType')} {disk.get('VhdFormat')}, {disk.get('FileSize')} bytes on disk",
                    )
                )
            if item.get("IsReadOnly"):
                checks.append(Check("base read-only", "OK", "read-only attribute set"))
            else:
                checks.append(
                    Check(
                        "base read-only",
                        "WARN",
                        "no read-only attribute: make the base read-only to the "
                        "operator's account so a mistake fails loudly",
                    )
                )
    if vm_path:
        try:
            folder = (await client.run([cmdlets.get_item(vm_path)]))[0]
        except HostError as exc:
            checks.append(Check("vm path", "FAIL", str(exc)))
        else:
            is_folder = bool(folder.get("PSIsContainer")) or "Directory" in str(folder.get("Attributes") or "")
            checks.append(
                Check(
                    "vm path",
                    "OK" if is_folder else "FAIL",
                    f"{vm_path} {'is a folder' if is_folder else 'is not a folder'} "
                    "(write access is not tested: this check writes nothing)",
                )
            )
    if base and strategy == "Quick":
        base_folder = base.rsplit("\\", 1)[0]
        try:
            folder_item = (await client.run([cmdlets.get_item(base_folder)]))[0]
        except HostError as exc:
            checks.append(quick_checkpoint_folder_check(base, None, str(exc)))
        else:
            checks.append(quick_checkpoint_folder_check(base, folder_item, None))
    checks.append(Check("checkpoint type", "OK", "the operator sets CheckpointType Standard on Quick VMs itself "
                                                  "and restores the previous type once the checkpoint is merged"))
    return checks


async def second_hop_checks(client: WinRMClient, paths: list[str], host_computer: str | None) -> list[Check]:
    """For each path on a file server: can this session read it, or is it denied (the second hop)?"""
    settings = client.settings
    who = f"{settings.username or 'the mapped certificate user'} over {settings.auth}"
    checks: list[Check] = []
    for path in paths:
        server = second_hop.unc_server(path)
        if server is None:
            continue
        if await second_hop.read_denied(client, path):
            checks.append(Check("second hop", "FAIL",
                                f"{path}: access denied on {server} for the session of {who} (the WinRM session "
                                f"holds no credential for {server}). Fix: "
                                f"{second_hop.fix(server, host_computer or settings.server)}"))
        else:
            checks.append(Check("second hop", "OK", f"{server} is reachable from the session of {who} ({path})"))
    return checks


def settings_from_args(args: argparse.Namespace) -> WinRMSettings:
    password = os.environ.get(args.password_env) if args.password_env else None
    if args.keytab:
        password = None
    return WinRMSettings(
        server=args.address,
        port=args.port,
        ssl=args.transport == "https",
        auth=args.auth,
        username=args.username,
        password=password,
        keytab=args.keytab,
        cert_pem=args.client_cert,
        key_pem=args.client_key,
        ca_bundle=args.ca_bundle,
        cert_validation=not args.insecure_skip_tls_verify,
        configuration_name=args.configuration_name,
    )


def run_check_host(args: argparse.Namespace) -> int:
    client = WinRMClient(settings_from_args(args))
    try:
        checks = asyncio.run(run_checks(client, args.base, args.vm_path, args.strategy))
    finally:
        asyncio.run(client.close())
    for check in checks:
        print(f"[{check.verdict:<4}] {check.name:<16} {check.detail}")
    failed = [c for c in checks if c.verdict == "FAIL"]
    print("preflight " + ("FAILED" if failed else "passed"), file=sys.stderr if failed else sys.stdout)
    return 1 if failed else 0
