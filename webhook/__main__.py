"""``python -m webhook``: run the admission webhook over TLS.

Local stack (one command: certificates, registration, serving)::

    python -m webhook --kubeconfig KUBECONFIG --cert-dir DIR --port 8443 \\
        --register-url https://127.0.0.1:8443

In a cluster (see deploy/manifests/webhook.yaml)::

    python -m webhook --in-cluster --host 0.0.0.0 --port 8443 --cert-dir /var/run/agentops/certs \\
        --service agentops-webhook --namespace agentops-system \\
        --secret agentops-system/agentops-webhook-tls \\
        --mutating agentops-admission --validating agentops-admission

``--cert-dir`` must be writable with a read-only root filesystem: the manifest mounts an
``emptyDir`` there (files are replaced by a temporary file in the same directory, then a rename).

Start-up order: certificates are ensured (created, loaded or renewed) and, with
``--register-url``, both webhook configurations are created or replaced with the current
``caBundle``; then the server starts, and ``/readyz`` turns ready once the policy cache has listed
everything.  Background threads (:meth:`certs.rotation.CertManager.start`) renew the certificates
when due, follow the Secret so a renewal by another replica is picked up at once, and re-check
everything at least every ``--rotation-interval`` seconds; the TLS layer reloads renewed files
without a restart.  Several replicas may start at the same moment against one empty Secret: one
of them creates the certificates, the others adopt them (see :mod:`certs.rotation`).

Shutdown: with ``--drain-seconds N`` (the cluster manifests use 5) a SIGTERM first drains for N
seconds, serving on with ``Connection: close`` and ``/readyz`` 503, and only then stops the way
uvicorn does (:class:`DrainingServer` says why).  SIGINT, or a second SIGTERM, stops at once.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any

import uvicorn

import kube
from certs.cli import add_cert_arguments, manager_from_args, positive_float
from contracts import logline
from kube.cli import add_kube_arguments, connection_from_args
from webhook.app import create_app
from webhook.cache import ClusterPolicyCache
from webhook.metrics import WebhookMetrics
from webhook.registration import DEFAULT_NAME, ClientConfig, configurations, parse_label, register, unregister
from webhook.tls import ReloadingTLS

log = logging.getLogger("webhook")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m webhook", description="agentops admission webhook")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 in a pod)")
    parser.add_argument("--port", type=int, default=8443)
    add_cert_arguments(parser)
    add_kube_arguments(parser)
    parser.add_argument(
        "--register-url",
        metavar="https://HOST:PORT",
        help="create/replace both webhook configurations pointing at this URL, with our caBundle",
    )
    parser.add_argument("--registration-name", default=DEFAULT_NAME, help="name of both configurations")
    parser.add_argument(
        "--scope-label",
        type=parse_label,
        metavar="KEY=VALUE",
        help="gate only namespaces (and cluster-scoped objects) with this label (tests)",
    )
    parser.add_argument("--unregister-on-exit", action="store_true", help="delete the configurations on exit")
    parser.add_argument(
        "--rotation-interval",
        type=positive_float,
        default=60.0,
        help="longest time between certificate/caBundle checks (renewals run when due regardless)",
    )
    parser.add_argument("--reload-interval", type=float, default=1.0, help="seconds between cert file polls")
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=0.0,
        help="after SIGTERM, keep serving this long (Connection: close, /readyz 503) before stopping",
    )
    parser.add_argument("--log-level", default="INFO")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logline.configure(args.log_level)
    try:
        connection = connection_from_args(args)
    except kube.ConfigError as exc:
        print(f"error: {exc} (the policy cache watches the API server)", file=sys.stderr)
        return 2
    api = kube.Client(connection, user_agent="agentops-webhook")

    # Certificates first: with --register-url the configurations do not exist yet, so injection
    # is switched on only after registering them.
    register_names = (args.mutating, args.validating)
    if args.register_url:
        args.mutating, args.validating = [], []
    manager = manager_from_args(args, api)
    try:
        bundle = manager.ensure()
    except kube.ApiError as exc:
        status = exc.status
        if status not in (401, 403, 404):
            raise
        hint = {
            404: f"Secret {args.secret} does not exist: create it empty (deploy/manifests/webhook.yaml does);"
            " the webhook may only get, update and watch it",
            403: "forbidden: the webhook's RBAC (deploy/manifests/rbac-webhook.yaml) must allow"
            f" get/update/watch on Secret {args.secret} and get/patch on the webhook configurations",
            401: "unauthorized: check --kubeconfig or the pod's service account token",
        }[status]
        print(f"error: cannot set up certificates: {hint}", file=sys.stderr)
        return 1
    if args.register_url:
        client_config = ClientConfig(url=args.register_url, ca_bundle=bundle.trusted_pem)
        register(
            api, configurations(client_config, name=args.registration_name, scope_label=args.scope_label)
        )
        manager.api = api
        manager.mutating = [*register_names[0], args.registration_name]
        manager.validating = [*register_names[1], args.registration_name]

    metrics = WebhookMetrics()

    def reloaded(cert: Any) -> None:
        metrics.cert_reloads.inc()
        metrics.cert_expiry.set(cert.not_valid_after_utc.timestamp())

    tls = ReloadingTLS(
        args.cert_dir / "tls.crt",
        args.cert_dir / "tls.key",
        poll_interval=args.reload_interval,
        on_reload=reloaded,
        on_handshake=metrics.tls_handshakes.inc,
    )
    metrics.cert_expiry.set(tls.current_certificate().not_valid_after_utc.timestamp())
    cache = ClusterPolicyCache(connection, on_change=metrics.cache_sizes)
    lifecycle: list[Any] = [cache]
    if args.unregister_on_exit and args.register_url:
        lifecycle.insert(0, Unregistration(api, args.registration_name))
    drain = threading.Event()
    app = create_app(cache, metrics=metrics, lifecycle=lifecycle, draining=drain.is_set)

    def ssl_factory(_config: uvicorn.Config, _default: Callable[[], ssl.SSLContext]) -> ssl.SSLContext:
        return tls.context

    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        ssl_context_factory=ssl_factory,
        log_config=None,
        access_log=False,
        workers=1,
        timeout_graceful_shutdown=5,
    )
    tls.start()
    rotation = manager.start(args.rotation_interval)
    log.info(
        "webhook starting", extra={"host": args.host, "port": args.port, "register_url": args.register_url}
    )
    # Everything allocated so far (modules, models, the app) lives as long as the process: move it
    # out of the collector's reach so full collections stay short on the request path.
    gc.collect()
    gc.freeze()
    try:
        # Server.run picks the fastest loop installed (uvloop) and shuts down gracefully on
        # SIGTERM/SIGINT (running the lifespan's stop steps), then re-raises the signal, so
        # nothing that must happen on exit is left to this ``finally``.
        DrainingServer(config, args.drain_seconds, drain).run()
    finally:
        rotation.stop()
        tls.stop()
    return 0


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain between SIGTERM and its graceful shutdown.

    A deleted webhook pod gets SIGTERM while kube-proxy is still removing its endpoint (the API
    server may open a connection to it for a moment longer) and while the API server holds
    keep-alive connections to it.  uvicorn's own shutdown closes the listener and every idle
    connection at once, so an admission sent in that instant fails with ``connection refused``
    or ``EOF``: the API server does not retry a POST, and both webhooks fail closed.  Measured on
    the local node: 3 failed admissions in 12 force-deletions of a replica under load, and 1 in
    28 with the drain (docs/webhook.md, "Drain on shutdown").

    So the first SIGTERM sets ``drain`` and the server carries on for ``drain_seconds``: every
    response says ``Connection: close`` (the API server drops each connection after its answer
    instead of reusing it) and ``/readyz`` is 503; then uvicorn shuts down as usual, by which
    time nothing is routed here any more.
    """

    def __init__(self, config: uvicorn.Config, drain_seconds: float, drain: threading.Event) -> None:
        super().__init__(config)
        self.drain_seconds = drain_seconds
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if sig != signal.SIGTERM or self.drain_seconds <= 0 or self.drain.is_set():
            super().handle_exit(sig, frame)
            return
        self.drain.set()
        # Not from the signal handler itself: logging there could interleave with a log call it
        # interrupted.
        threading.Thread(target=self._stop_after_drain, args=(sig, frame), name="drain", daemon=True).start()

    def _stop_after_drain(self, sig: int, frame: FrameType | None) -> None:
        log.info("SIGTERM: draining before shutdown", extra={"drain_seconds": self.drain_seconds})
        threading.Event().wait(self.drain_seconds)
        super().handle_exit(sig, frame)


class Unregistration:
    """Deletes the configurations on shutdown (``--unregister-on-exit``, local stack and tests).

    Runs in the app's lifespan shutdown, which uvicorn completes before it re-raises the
    terminating signal; a ``finally`` after ``Server.run`` would never be reached on SIGTERM.
    """

    def __init__(self, api: kube.Client, name: str) -> None:
        self._api, self._name = api, name

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        await asyncio.to_thread(unregister, self._api, self._name)
        log.info("webhook configurations deleted", extra={"configuration": self._name})


if __name__ == "__main__":
    sys.exit(main())
