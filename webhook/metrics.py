"""Prometheus metrics of the webhook, on a registry of their own (one per app instance).

Kyverno's conventions, under our prefix, so dashboards and alerts written for Kyverno carry over:

=============================================================  =====================================
``agentops_admission_requests_total``                          AdmissionReviews answered, by
                                                               webhook, allowed, kind, namespace
                                                               and operation
``agentops_admission_review_duration_seconds``                 the same, as a latency histogram
``agentops_policy_results_total``                              rule results of validated
                                                               AgentDeployments and AgentPipelines
                                                               (cause ``admission_request``; the
                                                               controller counts ``background_scan``)
=============================================================  =====================================

and the webhook's own (HTTP, cache, TLS; like Kyverno's ``kyverno_http_*`` beside the above):

========================================================  ==========================================
``agentops_webhook_requests_total``                       every POST to the admission paths, by
                                                          endpoint, resource, operation and decision
                                                          (allowed, denied, warned, malformed, error)
``agentops_webhook_request_duration_seconds``             handling time by endpoint (histogram)
``agentops_webhook_policy_cache_objects``                 cached objects by kind
``agentops_webhook_policy_cache_synced``                  1 once every watch has listed
``agentops_webhook_certificate_expiry_timestamp_seconds`` notAfter of the certificate being served
``agentops_webhook_certificate_reloads_total``            hot reloads of the serving certificate
``agentops_webhook_tls_handshakes_total``                 TLS handshakes (new connections)
========================================================  ==========================================

Label values are bounded, so a hostile client cannot blow up the series count: unknown resources,
kinds and operations are recorded as ``other``, and a namespace only under its own name once the
watch cache knows it (the caller passes ``other`` otherwise; see :func:`webhook.app.create_app`).
Policy and rule names come from the policies in the cache, not from requests.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contracts.resources import RESOURCE_BY_PLURAL
from policies.engine import KINDS
from policies.metrics_names import POLICY_RESULT_LABELS, POLICY_RESULTS, POLICY_RESULTS_HELP, result_labels
from policies.results import RuleResult

_KNOWN_RESOURCES = frozenset(RESOURCE_BY_PLURAL) | {"agentdeployments/scale"}
_KNOWN_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
_KNOWN_KINDS = frozenset(KINDS)

#: Kyverno's ``request_webhook`` values: which configuration sent the review.
_WEBHOOK_CONFIGURATION = {
    "mutate": "MutatingWebhookConfiguration",
    "validate": "ValidatingWebhookConfiguration",
}
#: Kyverno's admission labels, in the order :meth:`WebhookMetrics.admission` passes them.
ADMISSION_LABELS = (
    "request_webhook",
    "request_allowed",
    "resource_kind",
    "resource_namespace",
    "resource_request_operation",
)

# Admission work is ~0.05-0.5 ms (hot to cold) up to a few milliseconds; the API server's timeout is 5 s.
_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class WebhookMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "agentops_webhook_requests",
            "Admission requests by endpoint, resource, operation and decision.",
            ["endpoint", "resource", "operation", "decision"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "agentops_webhook_request_duration_seconds",
            "Time to answer one admission request, parsing to serialised response.",
            ["endpoint"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.cache_objects = Gauge(
            "agentops_webhook_policy_cache_objects",
            "Objects in the webhook's watch cache, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self.cache_synced = Gauge(
            "agentops_webhook_policy_cache_synced",
            "1 once every watch of the policy cache has completed its first list.",
            registry=self.registry,
        )
        self.cert_expiry = Gauge(
            "agentops_webhook_certificate_expiry_timestamp_seconds",
            "notAfter of the serving certificate currently in use (Unix time).",
            registry=self.registry,
        )
        self.tls_handshakes = Counter(
            "agentops_webhook_tls_handshakes",
            "TLS handshakes started (new connections); compare with requests to see connection reuse.",
            registry=self.registry,
        )
        self.cert_reloads = Counter(
            "agentops_webhook_certificate_reloads",
            "Serving certificate hot reloads since start.",
            registry=self.registry,
        )
        self.admission_requests = Counter(
            "agentops_admission_requests",
            "AdmissionReviews answered, by webhook, verdict, resource kind, namespace and operation "
            "(labelled like Kyverno's kyverno_admission_requests_total).",
            ADMISSION_LABELS,
            registry=self.registry,
        )
        self.admission_duration = Histogram(
            "agentops_admission_review_duration_seconds",
            "Time to answer one AdmissionReview, parsing to serialised response "
            "(labelled like Kyverno's kyverno_admission_review_duration_seconds).",
            ADMISSION_LABELS,
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.policy_results = Counter(
            POLICY_RESULTS, POLICY_RESULTS_HELP, POLICY_RESULT_LABELS, registry=self.registry
        )

        # Labelled children, looked up once: ``labels()`` validates and locks on every call.
        self._request_children: dict[tuple[str, str, str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}
        self._admission_children: dict[tuple[str, ...], tuple[Counter, Histogram]] = {}
        self._result_children: dict[tuple[str, ...], Counter] = {}

    def observe(self, endpoint: str, resource: str, operation: str, decision: str, seconds: float) -> None:
        resource = resource if resource in _KNOWN_RESOURCES else "other"
        operation = operation if operation in _KNOWN_OPERATIONS else "other"
        key = (endpoint, resource, operation, decision)
        counter = self._request_children.get(key)
        if counter is None:
            counter = self._request_children[key] = self.requests.labels(*key)
        counter.inc()
        histogram = self._duration_children.get(endpoint)
        if histogram is None:
            histogram = self._duration_children[endpoint] = self.duration.labels(endpoint)
        histogram.observe(seconds)

    def admission(
        self,
        endpoint: Literal["mutate", "validate"],
        kind: str,
        namespace: str,
        operation: str,
        allowed: bool,
        seconds: float,
    ) -> None:
        """One AdmissionReview answered (``allowed`` false for a denial, also a fail-closed one).

        ``namespace`` must already be bounded by the caller: the request's namespace when the
        watch cache knows it, ``other`` when it does not, ``""`` for a cluster-scoped object.
        """
        key = (
            _WEBHOOK_CONFIGURATION[endpoint],
            "true" if allowed else "false",
            kind if kind in _KNOWN_KINDS else "other",
            namespace,
            operation.lower() if operation in _KNOWN_OPERATIONS else "other",
        )
        children = self._admission_children.get(key)
        if children is None:
            children = self._admission_children[key] = (
                self.admission_requests.labels(*key),
                self.admission_duration.labels(*key),
            )
        children[0].inc()
        children[1].observe(seconds)

    def rule_results(self, results: Iterable[RuleResult], kind: str, namespace: str, operation: str) -> None:
        """Count the rule results of one admission request (cause ``admission_request``)."""
        for result in results:
            key = result_labels(
                result,
                cause="admission_request",
                resource_kind=kind,
                resource_namespace=namespace,
                operation=operation,
            )
            counter = self._result_children.get(key)
            if counter is None:
                counter = self._result_children[key] = self.policy_results.labels(*key)
            counter.inc()

    def cache_sizes(self, sizes: Mapping[str, int]) -> None:
        for kind, count in sizes.items():
            self.cache_objects.labels(kind).set(count)
