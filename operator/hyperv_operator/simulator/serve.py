"""`python -m hyperv_operator.simulator.serve` (`make simulate`): a simulated Hyper-V host on loopback,
over WinRM (HTTPS and HTTP)."""

from __future__ import annotations

import argparse
import secrets
import tempfile
import time
from pathlib import Path

from hyperv_operator.simulator.host import SimulatedHost
from hyperv_operator.simulator.tls import generate_tls
from hyperv_operator.simulator.wsman.server import WSManServer


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--address", default="127.0.0.1", help="listen address (loopback only by intent)")
    parser.add_argument("--https-port", type=int, default=5986)
    parser.add_argument("--http-port", type=int, default=5985, help="0 disables the HTTP listener")
    parser.add_argument("--username", default="hvadmin")
    parser.add_argument("--password", default=None, help="default: a random one, printed at start")
    parser.add_argument(
        "--base",
        action="append",
        default=[],
        metavar="PATH=BYTES",
        help="a read-only base disk to create (repeatable); default \\\\FS\\VMSHARE\\BASE.VHDX=8996782080",
    )
    parser.add_argument("--folder", action="append", default=[], help="a folder to create (repeatable)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="simulated seconds per wall second")
    parser.add_argument("--copy-bytes-per-second", type=float, default=75e6)
    parser.add_argument("--tls-dir", default=None, help="where to write ca.pem / server.pem (default: a temp dir)")
    parser.add_argument("--jea", action="append", default=[], metavar="NAME",
                        help="also serve session configuration NAME as a JEA endpoint with the operator's role "
                             "(e.g. HyperVOperator; repeatable)")


def serve_forever(args: argparse.Namespace) -> int:
    host = SimulatedHost(time_scale=args.time_scale, copy_bytes_per_second=args.copy_bytes_per_second)
    bases = args.base or ["\\\\FS\\VMSHARE\\BASE.VHDX=8996782080"]
    folders = args.folder or ["\\\\FS\\VMSHARE", "\\\\FS\\VMSHARE\\VMs"]
    for folder in folders:
        host.add_folder(folder)
    for spec in bases:
        path, _, size = spec.rpartition("=")
        host.add_base_disk(path, int(size), acl_read_only=True)
    password = args.password or secrets.token_urlsafe(12)
    tls_dir = Path(args.tls_dir or tempfile.mkdtemp(prefix="hyperv-sim-tls-"))
    tls = generate_tls(tls_dir)
    servers = []
    https = WSManServer(host, username=args.username, password=password, jea_configurations=args.jea)
    https.start(host=args.address, port=args.https_port, tls=tls.server_pair)
    servers.append(https)
    print(f"WinRM HTTPS: https://{args.address}:{https.port}/wsman (CA bundle: {tls.ca_cert})")
    if args.http_port:
        http = WSManServer(host, username=args.username, password=password, jea_configurations=args.jea)
        http.start(host=args.address, port=args.http_port, tls=None)
        servers.append(http)
        print(f"WinRM HTTP:  http://{args.address}:{http.port}/wsman")
    print(f"Basic auth: {args.username} / {password}")
    print(f"bases: {', '.join(bases)}; folders: {', '.join(folders)}")
    if args.jea:
        print(f"JEA endpoints (NoLanguage, the operator's role): {', '.join(args.jea)}")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        for server in servers:
            server.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hyperv_operator.simulator.serve", description=__doc__)
    add_arguments(parser)
    return serve_forever(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
