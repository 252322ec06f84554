"""Prometheus metrics of the controller's background scans and native admission, and the endpoint
that serves them.

Kyverno's conventions under our prefix, as the webhook's (:mod:`webhook.metrics`), so a dashboard
built for Kyverno's background controller carries over:

====================================================  ================================================
``agentops_policy_results_total``                     rule results of every scanned AgentDeployment and
                                                      AgentPipeline, cause ``background_scan`` (the
                                                      webhook counts ``admission_request``), labelled
                                                      by :mod:`policies.metrics_names`
``agentops_background_scans_total``                   namespace scans finished, by ``result``
                                                      (``ok``, or ``error`` when the API server or
                                                      Redis failed it; it is retried)
``agentops_background_scan_duration_seconds``         time to judge one namespace and write its report
``agentops_policy_reports``                           OpenReports Reports the controller keeps stored
                                                      (one per namespace with agents or pipelines)
``agentops_native_admission_regenerations_total``     native admission regenerations (``--native-
                                                      admission``), by ``result`` (``ok``, or ``error``:
                                                      retried with backoff)
``agentops_native_admission_regeneration_``           time to generate and write one regeneration
``duration_seconds``
``agentops_native_admission_generated_objects``       ValidatingAdmissionPolicies and bindings the last
                                                      regeneration keeps
====================================================  ================================================

and the standard ``process_*`` metrics (memory, CPU, open files) of the controller process.

Every label value is bounded: policy and rule names come from the policies in the watch cache,
kinds are the two scanned kinds, namespaces are those holding agents or pipelines.  Under kopf
peering only the leader scans, so a standby replica's counters stay at zero; sum over replicas.

The endpoint is a ``prometheus_client`` WSGI server on a thread of its own, so a scrape never
waits for kopf's event loop; ``python -m controller --metrics-bind-address HOST:PORT`` starts it
(not given, or ``0``: none; port 0 picks a free port and the log line says which).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import start_http_server

from policies.metrics_names import POLICY_RESULT_LABELS, POLICY_RESULTS, POLICY_RESULTS_HELP, result_labels
from policies.results import RuleResult

logger = logging.getLogger("controller.metrics")

#: A namespace scan takes about a millisecond for a few agents and seconds for a thousand.
_SCAN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class ControllerMetrics:
    """The controller's metrics on a registry of their own (one per process; tests make several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        ProcessCollector(registry=self.registry)
        self.policy_results = Counter(
            POLICY_RESULTS, POLICY_RESULTS_HELP, POLICY_RESULT_LABELS, registry=self.registry
        )
        self.scans = Counter(
            "agentops_background_scans",
            "Background scans of a namespace finished, by result (ok, or error: retried).",
            ["result"],
            registry=self.registry,
        )
        self.scan_duration = Histogram(
            "agentops_background_scan_duration_seconds",
            "Time to judge every agent and pipeline of one namespace and write its policy report.",
            buckets=_SCAN_BUCKETS,
            registry=self.registry,
        )
        self.reports = Gauge(
            "agentops_policy_reports",
            "OpenReports Reports the controller keeps stored (one per namespace with agents or pipelines).",
            registry=self.registry,
        )
        self.native_regenerations = Counter(
            "agentops_native_admission_regenerations",
            "Native admission regenerations, by result (ok, or error: retried with backoff).",
            ["result"],
            registry=self.registry,
        )
        self.native_duration = Histogram(
            "agentops_native_admission_regeneration_duration_seconds",
            "Time to generate the admission policies and write what changed (webhooks, VAPs, bindings).",
            buckets=_SCAN_BUCKETS,
            registry=self.registry,
        )
        self.native_objects = Gauge(
            "agentops_native_admission_generated_objects",
            "ValidatingAdmissionPolicies and bindings the last native admission regeneration keeps.",
            registry=self.registry,
        )
        # Labelled children, looked up once: ``labels()`` validates and locks on every call, and a
        # policy change judges every agent again.
        self._result_children: dict[tuple[str, ...], Counter] = {}
        self._ok = self.scans.labels("ok")
        self._error = self.scans.labels("error")

    def scan_results(self, results: Iterable[RuleResult], kind: str, namespace: str) -> None:
        """Count the rule results of one scanned object (cause ``background_scan``)."""
        for result in results:
            key = result_labels(
                result, cause="background_scan", resource_kind=kind, resource_namespace=namespace
            )
            counter = self._result_children.get(key)
            if counter is None:
                counter = self._result_children[key] = self.policy_results.labels(*key)
            counter.inc()

    def scanned(self, seconds: float, reports: int) -> None:
        """A namespace scan finished; ``reports``: how many Reports are stored now."""
        self._ok.inc()
        self.scan_duration.observe(seconds)
        self.reports.set(reports)

    def scan_failed(self) -> None:
        self._error.inc()

    def native_regenerated(self, seconds: float, objects: int) -> None:
        self.native_regenerations.labels("ok").inc()
        self.native_duration.observe(seconds)
        self.native_objects.set(objects)

    def native_failed(self) -> None:
        self.native_regenerations.labels("error").inc()


@dataclass(frozen=True, slots=True)
class BindAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_bind_address(text: str) -> BindAddress | None:
    """``HOST:PORT``, ``:PORT`` (every interface) or ``[IPv6]:PORT``; ``0`` (or empty) for none.

    The convention of controller-runtime's ``--metrics-bind-address``.  Raises ``ValueError`` with
    what is wrong.
    """
    text = text.strip()
    if text in ("", "0"):
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ValueError(f"{text!r}: give HOST:PORT, e.g. 0.0.0.0:8081 (or :8081, or 0 for no endpoint)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:8081")
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError(f"{text!r}: the port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ValueError(f"{text!r}: the port must be between 0 and 65535")
    return BindAddress(host or "0.0.0.0", port)  # noqa: S104 - ":PORT" means every interface, as in controller-runtime


@dataclass
class MetricsServer:
    """The running endpoint: where it listens, and how to stop it."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def address(self) -> BindAddress:
        host, port = self.server.server_address[:2]
        return BindAddress(str(host), int(port))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve(metrics: ControllerMetrics, address: BindAddress) -> MetricsServer:
    """Serve ``metrics`` as Prometheus text at ``http://address/metrics``; ``OSError`` if it cannot bind."""
    server, thread = start_http_server(address.port, address.host, registry=metrics.registry)
    running = MetricsServer(server, thread)
    logger.info("serving metrics on http://%s/metrics", running.address)
    return running
