"""`hyperv-operator run | check-host`: what the image ships.

The development tools are not part of the runtime package's imports (and not in the image):
`python -m hyperv_operator.demo` (`make demo`) and `python -m hyperv_operator.simulator.serve`
(`make simulate`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence


class _RetryIsNotAnError(logging.Filter):
    """kopf logs every `TemporaryError` at ERROR; for this operator that is how a handler says
    "call me again in N seconds" while a phase progresses. Keep such lines, at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and "failed temporarily" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _run(args: argparse.Namespace) -> int:
    import kopf

    from hyperv_operator import metrics
    from hyperv_operator.handlers import OperatorConfig, Runtime, build_registry
    from hyperv_operator.hosts import HostConnections, kubernetes_secret_reader, winrm_client_factory

    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=kopf.LogFormat.FULL)
    logging.getLogger("hyperv_operator").setLevel(logging.DEBUG if args.debug else logging.INFO)
    logging.getLogger("kopf.objects").addFilter(_RetryIsNotAnError())
    for noisy in ("pypsrp", "psrpcore", "spnego", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    config = OperatorConfig(drift_interval=args.drift_interval, host_probe_interval=args.host_probe_interval)
    runtime = Runtime(
        config=config,
        connections=HostConnections(
            winrm_client_factory(
                connection_timeout=args.winrm_connection_timeout,
                read_timeout=args.winrm_read_timeout,
                operation_timeout=args.winrm_operation_timeout,
            ),
            kubernetes_secret_reader(),
        ),
    )
    if args.metrics_port:
        metrics.start_metrics_server(args.metrics_port, args.metrics_address)
    registry = build_registry(runtime)
    liveness = f"http://{args.liveness_address}:{args.liveness_port}/healthz" if args.liveness_port else None
    clusterwide = args.all_namespaces or not args.namespace
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=clusterwide,
            namespaces=() if clusterwide else tuple(args.namespace),
            standalone=True,
            liveness_endpoint=liveness,
        )
    )
    return 0


def _check_host(args: argparse.Namespace) -> int:
    from hyperv_operator.preflight import run_check_host

    return run_check_host(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hyperv-operator", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the operator against the current kubeconfig / in-cluster config")
    run.add_argument("--all-namespaces", "-A", action="store_true", help="watch every namespace (default)")
    run.add_argument("--namespace", "-n", action="append", default=[], help="watch only this namespace (repeatable)")
    run.add_argument("--metrics-port", type=int, default=8080, help="Prometheus metrics port (0 disables)")
    run.add_argument("--metrics-address", default="0.0.0.0")  # noqa: S104 - scraped from outside the pod
    run.add_argument("--liveness-port", type=int, default=8081, help="kopf /healthz port (0 disables)")
    run.add_argument("--liveness-address", default="0.0.0.0")  # noqa: S104 - probed by the kubelet
    run.add_argument("--drift-interval", type=float, default=30.0, help="seconds between drift checks of a VM")
    run.add_argument("--host-probe-interval", type=float, default=60.0, help="seconds between HyperVHost probes")
    run.add_argument("--winrm-connection-timeout", type=float, default=30.0)
    run.add_argument("--winrm-read-timeout", type=float, default=30.0)
    run.add_argument("--winrm-operation-timeout", type=float, default=20.0)
    run.add_argument("--verbose", "-v", action="store_true")
    run.add_argument("--debug", action="store_true")
    run.set_defaults(func=_run)

    check = commands.add_parser("check-host", help="read-only preflight of a real Hyper-V host")
    from hyperv_operator.preflight import add_arguments as add_check_arguments

    add_check_arguments(check)
    check.set_defaults(func=_check_host)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
