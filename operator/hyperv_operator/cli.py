"""`hyperv-operator run | check-host | conformance`: what the image ships.

The development tools are not part of the runtime package's imports (and not in the image):
`python -m hyperv_operator.demo` (`make demo`) and `python -m hyperv_operator.simulator.serve`
(`make simulate`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

if TYPE_CHECKING:
    import kopf

    from hyperv_operator.handlers import Runtime, WebhookConfig


class _RetryIsNotAnError(logging.Filter):
    """kopf logs every `TemporaryError` at ERROR; for this operator that is how a handler says
    "call me again in N seconds" while a phase progresses. Keep such lines, at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and "failed temporarily" in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def _limit_malloc_arenas(arenas: int = 2) -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core), and freed memory
    stays in the arena it came from: with a WinRM worker pool per host, a fleet's peak lingers in many
    half-empty arenas. A couple of shared arenas keep the resident size near what is in use. Must run
    before the worker threads start; a no-op where the C library is not glibc."""
    import ctypes

    m_arena_max = -8  # glibc malloc.h
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(m_arena_max, arenas)


def _run(args: argparse.Namespace) -> int:
    _limit_malloc_arenas()
    import kopf
    import kubernetes

    from hyperv_operator import metrics
    from hyperv_operator.copy_ledger import KubeLedgerStore
    from hyperv_operator.handlers import OperatorConfig, Runtime, build_registry
    from hyperv_operator.hosts import HostConnections, kubernetes_secret_reader, winrm_client_factory
    from hyperv_operator.provisioning.ledger import CopySlots
    from hyperv_operator.status_writer import KubeStatusWriter

    kopf.configure(verbose=args.verbose, debug=args.debug, log_format=kopf.LogFormat.FULL)
    logging.getLogger("hyperv_operator").setLevel(logging.DEBUG if args.debug else logging.INFO)
    logging.getLogger("kopf.objects").addFilter(_RetryIsNotAnError())
    for noisy in ("pypsrp", "psrpcore", "spnego", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.DEBUG if args.debug else logging.WARNING)
    config = OperatorConfig(
        drift_interval=args.drift_interval,
        host_probe_interval=args.host_probe_interval,
        delete_stall_after=args.delete_stall_after,
        shutdown_grace=args.shutdown_grace,
        wait_retry_min=args.wait_retry_min,
        wait_retry_max=args.wait_retry_max,
        operator_namespace=args.operator_namespace,
        webhook=_webhook_config(args),
        peering_lifetime=None if args.standalone else args.peering_lifetime,
    )
    secret_reader = kubernetes_secret_reader()  # loads the kubeconfig / in-cluster config
    # One API client for the ledger and the status writes, made now: made on first use, it would
    # load the configuration again inside the first VM's step.
    custom = kubernetes.client.CustomObjectsApi()
    runtime = Runtime(
        config=config,
        connections=HostConnections(
            winrm_client_factory(
                connection_timeout=args.winrm_connection_timeout,
                read_timeout=args.winrm_read_timeout,
                operation_timeout=args.winrm_operation_timeout,
            ),
            secret_reader,
        ),
        # Copy slots are written in the host objects' status, so the limit survives restarts and replicas.
        slots=CopySlots(KubeLedgerStore(custom)),
        write_status=KubeStatusWriter(custom),
    )
    if args.metrics_port:
        metrics.start_metrics_server(args.metrics_port, args.metrics_address)
    registry = build_registry(runtime)
    stop_flag = None if args.standalone else _hand_over_on_sigterm(registry, runtime, args.drain_timeout)
    liveness = f"http://{args.liveness_address}:{args.liveness_port}/healthz" if args.liveness_port else None
    clusterwide = args.all_namespaces or not args.namespace
    asyncio.run(
        kopf.operator(
            registry=registry,
            clusterwide=clusterwide,
            namespaces=() if clusterwide else tuple(args.namespace),
            standalone=args.standalone,
            peering_name=None if args.standalone else args.peering,
            priority=None if args.standalone else _priority(args),
            liveness_endpoint=liveness,
            stop_flag=stop_flag,
        )
    )
    return 0


def _hand_over_on_sigterm(registry: kopf.OperatorRegistry, runtime: Runtime, timeout: float) -> asyncio.Event:
    """SIGTERM drains host work before kopf stops and leaves the peering (draining.py): kopf would
    leave it at once, and the standby would act while this replica's last WinRM calls still run."""
    import kopf

    from hyperv_operator.draining import stop_after_drain

    stop = asyncio.Event()
    pending: set[asyncio.Task[None]] = set()

    @kopf.on.startup(registry=registry)
    async def drain_on_sigterm(**_: object) -> None:
        # Startup handlers run after kopf installed its own signal handlers: this one replaces its SIGTERM.
        loop = asyncio.get_running_loop()

        def on_sigterm() -> None:
            if not runtime.drain.draining:
                task = loop.create_task(stop_after_drain(runtime.drain, stop, timeout))
                pending.add(task)
                task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)

    @kopf.on.startup(registry=registry)
    async def check_peering_object(settings: kopf.OperatorSettings, **_: object) -> None:
        # kopf neither creates the peering object nor says (above debug level) that it is missing:
        # the replica would just stay paused forever.
        if not settings.peering.clusterwide:
            return
        try:
            names = await asyncio.to_thread(_cluster_peering_names)
        except Exception as exc:  # a check only: kopf's own peering still decides
            logging.getLogger(__name__).warning("cannot list ClusterKopfPeerings: %s", exc)
            return
        problem = peering_problem(settings.peering.name, names)
        if problem:
            logging.getLogger(__name__).error("%s", problem)

    return stop


def _cluster_peering_names() -> list[str] | None:
    """Names of the ClusterKopfPeering objects; None if the kind is not installed (blocking)."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()  # type: ignore[no-untyped-call]
    objects = kubernetes.client.CustomObjectsApi()
    try:
        listed = cast(dict[str, Any], objects.list_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings"))
    except kubernetes.client.ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return [str(item["metadata"]["name"]) for item in listed.get("items", [])]


def peering_problem(name: str, names: list[str] | None) -> str | None:
    """Why a peering replica would never act, or None."""
    hint = "apply manifests/ (crds/ first), or run with --standalone for a single replica"
    if names is None:
        return f"the ClusterKopfPeering kind (kopf.dev/v1) is not installed: this replica stays paused; {hint}"
    if name not in names:
        return f"ClusterKopfPeering {name!r} does not exist: this replica stays paused until it does; {hint}"
    return None


def _priority(args: argparse.Namespace) -> int:
    """kopf pauses every operator that sees a live peer of higher priority (and all of them on a tie).

    Without --priority the OLDER replica wins: a replica that starts (a rollout's new pod, a
    replacement after a node loss) stands by behind the one already working instead of taking the
    work out of its hands mid-step. Milliseconds since the epoch, negated, so two replicas of one
    Deployment (one pod template) still get different priorities; an explicit --priority (any value
    >= 0, e.g. kopf's --dev 666) outranks every default."""
    if args.priority is not None:
        return int(args.priority)
    return -int(time.time() * 1000)


def _webhook_config(args: argparse.Namespace) -> WebhookConfig | None:
    """kopf's WebhookServer settings: cert-manager's files if given, else a self-signed certificate."""
    from hyperv_operator.handlers import WebhookConfig
    from hyperv_operator.tenancy import webhook

    if not args.webhook_port:
        return None
    names = tuple(args.webhook_name or webhook.DEFAULT_SERVICE_NAMES)
    certificate = (
        webhook.from_cert_dir(args.webhook_cert_dir) if args.webhook_cert_dir else webhook.generate_self_signed(names)
    )
    return WebhookConfig(
        port=args.webhook_port,
        certificate=certificate,
        address=args.webhook_address,
        host=names[0],
        configuration=args.webhook_configuration or None,
        webhook_names=(webhook.VM_WEBHOOK_NAME,),
    )


def _check_host(args: argparse.Namespace) -> int:
    from hyperv_operator.preflight import run_check_host

    return run_check_host(args)


def _conformance(args: argparse.Namespace) -> int:
    from hyperv_operator.conformance import run_conformance

    return run_conformance(args)


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
    run.add_argument("--delete-stall-after", type=float, default=600.0,
                     help="seconds a deletion may fail on an unreachable host before it is reported Stalled")
    run.add_argument("--shutdown-grace", type=float, default=20.0,
                     help="on SIGTERM, seconds running steps get to finish their host commands")
    run.add_argument("--wait-retry-min", type=float, default=0.0,
                     help="seconds a VM waiting for its host, Secret or admission waits at least between checks")
    run.add_argument("--wait-retry-max", type=float, default=10.0,
                     help="...and at most (an edit of the host or its Secrets re-checks it at once)")
    run.add_argument("--winrm-connection-timeout", type=float, default=30.0)
    run.add_argument("--winrm-read-timeout", type=float, default=30.0)
    run.add_argument("--winrm-operation-timeout", type=float, default=20.0)
    run.add_argument(
        "--operator-namespace",
        default=os.environ.get("POD_NAMESPACE") or "hyperv-operator-system",
        help="namespace holding ClusterHyperVHost Secrets (default: $POD_NAMESPACE or hyperv-operator-system)",
    )
    run.add_argument("--webhook-port", type=int, default=9443, help="admission webhook HTTPS port (0 disables)")
    run.add_argument("--webhook-address", default="0.0.0.0")  # noqa: S104 - called by the API server
    run.add_argument(
        "--webhook-name",
        action="append",
        default=[],
        help="DNS name or IP in the self-signed webhook certificate (repeatable; default: the webhook Service)",
    )
    run.add_argument("--webhook-cert-dir", default="", help="tls.crt/tls.key/ca.crt to serve (e.g. cert-manager's)")
    run.add_argument(
        "--webhook-configuration",
        default="hyperv-operator",
        help="ValidatingWebhookConfiguration to write the self-signed CA into ('' when cert-manager injects it)",
    )
    run.add_argument(
        "--standalone",
        action="store_true",
        help="no peering: this must be the only operator process (one replica, Recreate)",
    )
    run.add_argument(
        "--peering",
        default="hyperv-operator",
        help="kopf peering object: a ClusterKopfPeering (--all-namespaces) or a KopfPeering in each watched "
        "namespace; of the replicas sharing it only the live one of highest priority acts",
    )
    run.add_argument(
        "--priority",
        type=int,
        default=None,
        help="peering priority (default: by start time, the older replica acts and a newer one stands by)",
    )
    run.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds a replica's keep-alive counts; a standby takes over at most this long after the active "
        "replica died without saying goodbye (a graceful stop hands over at once)",
    )
    run.add_argument(
        "--drain-timeout",
        type=float,
        default=30.0,
        help="on SIGTERM (peering), seconds to let host work in flight finish before leaving the peering",
    )
    run.add_argument("--verbose", "-v", action="store_true")
    run.add_argument("--debug", action="store_true")
    run.set_defaults(func=_run)

    check = commands.add_parser("check-host", help="read-only preflight of a real Hyper-V host")
    from hyperv_operator.preflight import add_arguments as add_check_arguments

    add_check_arguments(check)
    check.set_defaults(func=_check_host)

    conformance = commands.add_parser(
        "conformance", help="prove the operator's assumptions on a real host with scratch VMs (removes them)"
    )
    from hyperv_operator.conformance import add_arguments as add_conformance_arguments

    add_conformance_arguments(conformance)
    conformance.set_defaults(func=_conformance)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
