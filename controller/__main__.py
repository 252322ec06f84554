"""``python -m controller``: run the kopf operator with agentops' handlers.

Leader election is kopf peering: every replica runs, the one with the highest priority acts,
the others stand by (``--peering``; the KopfPeering/ClusterKopfPeering CRDs ship in
``deploy/manifests/controller-peering.yaml``).  ``--standalone`` disables it for a single local
process.  ``--liveness http://0.0.0.0:8080/healthz`` serves kopf's health endpoint, and
``--metrics-bind-address 0.0.0.0:8081`` the background scans' Prometheus metrics at ``/metrics``
(:mod:`controller.metrics`; no endpoint unless given, so a controller started by hand or by a test
opens no port).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import sys
from collections.abc import Sequence

from contracts import logline
from contracts.resources import SecretKeyRef
from controller.metrics import BindAddress, ControllerMetrics, parse_bind_address, serve
from controller.render import DEFAULT_RUNTIME_IMAGE, RenderOptions
from kube.cli import add_kube_arguments, connection_from_args
from kube.config import ConfigError


def pod_priority(pod_name: str | None) -> int:
    """A stable, per-replica peering priority.

    kopf pauses *every* operator that sees a peer of the same priority, so two replicas with
    identical arguments would both stand still.  Deriving the priority from the pod name makes
    the replicas differ: the higher one leads, the other takes over once the leader's peering
    record goes silent for ``--peering-lifetime`` seconds.
    """
    if not pod_name:
        return 0
    return int(hashlib.sha256(pod_name.encode()).hexdigest()[:8], 16) % 1_000_000 + 1


def configure_logging(*, verbose: bool) -> None:
    """kopf's records, and every other, as :mod:`contracts.logline` JSON lines.

    In place of ``kopf.configure``, whose formats (text, or python-json-logger with keys of its
    own) are not ours; kopf's event posting hangs off its own logger and is not affected.  The
    levels are kopf's: DEBUG with ``--verbose``, else INFO; asyncio's logger muted, as kopf does
    outside ``--debug``.
    """
    # kopf reports every handler and timer run at INFO: thousands of lines a minute at scale.
    logline.configure(logging.DEBUG if verbose else logging.INFO, quiet=() if verbose else ("kopf.objects",))
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.propagate = False
    asyncio_log.handlers[:] = [logging.NullHandler()]


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number of seconds greater than 0")
    return value


def _bind_address(text: str) -> BindAddress | None:
    try:
        return parse_bind_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m controller", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--namespace", action="append", default=[], help="namespace to serve (repeatable; default all)"
    )
    add_kube_arguments(parser)
    parser.add_argument(
        "--redis-url", default=os.environ.get("AGENTOPS_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument(
        "--runtime-image",
        default=os.environ.get("AGENTOPS_RUNTIME_IMAGE", DEFAULT_RUNTIME_IMAGE),
        help="image of the agent runtime put in every agent's Deployment",
    )
    parser.add_argument(
        "--agent-redis-url",
        help="Redis URL written into agent pods when they see Redis elsewhere (default: --redis-url)",
    )
    parser.add_argument(
        "--offline-fallback",
        action="store_true",
        default=os.environ.get("AGENTOPS_OFFLINE_FALLBACK", "") in ("1", "true", "yes"),
        help="run agents without an API key on the offline provider (and say so in status)",
    )
    parser.add_argument(
        "--default-api-key-secret",
        default=os.environ.get("AGENTOPS_DEFAULT_API_KEY_SECRET"),
        metavar="NAME[/KEY]",
        help="Secret used by agents whose spec names none (key defaults to api-key)",
    )
    parser.add_argument("--resync-seconds", type=float, default=2.0, help="status/budget/autoscaler period")
    parser.add_argument("--full-resync-seconds", type=float, default=60.0)
    parser.add_argument(
        "--scan-interval",
        type=_positive_seconds,
        default=300.0,
        metavar="S",
        help="background policy scan period: every agent and pipeline is judged again at least this "
        "often (policy and exception changes and expiries trigger scans at once)",
    )
    parser.add_argument("--keda-redis-address", default="redis:6379")
    parser.add_argument(
        "--native-admission",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="compile the policies into ValidatingAdmissionPolicies the API server runs in-process, "
        "and narrow the webhooks to what they alone decide (docs/native-admission.md; the install's "
        "manifests and chart turn it on; the last of --native-admission/--no-native-admission wins)",
    )
    parser.add_argument(
        "--webhook-configuration",
        default="agentops-admission",
        metavar="NAME",
        help="with --native-admission: the Mutating- and ValidatingWebhookConfiguration whose "
        "matchConditions the controller sets (default: %(default)s)",
    )
    parser.add_argument(
        "--liveness", metavar="URL", help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    parser.add_argument(
        "--metrics-bind-address",
        type=_bind_address,
        metavar="HOST:PORT",
        help="serve Prometheus metrics at http://HOST:PORT/metrics, e.g. 0.0.0.0:8081 in a pod "
        "(default: no endpoint, as does 0; port 0 picks a free port, named in the log)",
    )
    parser.add_argument(
        "--peering", default="agentops-controller", help="kopf peering name (leader election)"
    )
    parser.add_argument("--standalone", action="store_true", help="no peering: a single controller")
    parser.add_argument(
        "--priority",
        type=int,
        help="peering priority of this replica (default: derived from $POD_NAME, so replicas differ)",
    )
    parser.add_argument(
        "--peering-lifetime",
        type=int,
        default=60,
        help="seconds after which a silent peer (a crashed leader) is considered gone",
    )
    parser.add_argument("--verbose", action="store_true")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(verbose=args.verbose)
    try:
        connection = connection_from_args(args)
    except ConfigError as exc:
        parser.error(str(exc))
    default_secret = None
    if args.default_api_key_secret:
        name, _, key = args.default_api_key_secret.partition("/")
        default_secret = SecretKeyRef(name=name, key=key or "api-key")
    # Imported only now: importing the handlers registers them with kopf, and CONFIG and
    # CONNECTION must be set before any of them runs.
    import kopf

    from controller import handlers
    from controller.context import ControllerConfig

    handlers.CONNECTION = connection
    handlers.CONFIG = ControllerConfig(
        namespaces=tuple(args.namespace),
        redis_url=args.redis_url,
        render=RenderOptions(
            runtime_image=args.runtime_image,
            redis_url=args.agent_redis_url or args.redis_url,
            offline_fallback=args.offline_fallback,
            default_secret=default_secret,
        ),
        resync_seconds=args.resync_seconds,
        full_resync_seconds=args.full_resync_seconds,
        keda_redis_address=args.keda_redis_address,
        scan_interval=args.scan_interval,
        native_admission=args.native_admission,
        webhook_configuration=args.webhook_configuration,
    )
    if args.native_admission:
        handlers.enable_native_admission()
    handlers.PEERING_LIFETIME = args.peering_lifetime
    handlers.METRICS = ControllerMetrics()
    server = None
    if args.metrics_bind_address is not None:
        try:
            server = serve(handlers.METRICS, args.metrics_bind_address)
        except OSError as exc:
            parser.error(f"--metrics-bind-address {args.metrics_bind_address}: cannot listen: {exc}")
    try:
        kopf.run(
            standalone=args.standalone,
            namespaces=args.namespace,
            clusterwide=not args.namespace,
            liveness_endpoint=args.liveness,
            peering_name=None if args.standalone else args.peering,
            priority=args.priority if args.priority is not None else pod_priority(os.environ.get("POD_NAME")),
        )
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
