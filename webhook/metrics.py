"""Prometheus metrics of the webhook, on a registry of their own (one per app instance).

========================================================  ==========================================
``agentops_webhook_requests_total``                       admissions by endpoint, resource,
                                                          operation and decision (allowed, denied,
                                                          warned, malformed, error)
``agentops_webhook_request_duration_seconds``             handling time by endpoint (histogram)
``agentops_webhook_policy_cache_objects``                 cached objects by kind
``agentops_webhook_policy_cache_synced``                  1 once every watch has listed
``agentops_webhook_certificate_expiry_timestamp_seconds`` notAfter of the certificate being served
``agentops_webhook_certificate_reloads_total``            hot reloads of the serving certificate
``agentops_webhook_tls_handshakes_total``                 TLS handshakes (new connections)
========================================================  ==========================================

Label values are bounded (our five kinds and their subresources, two operations, five decisions),
so a hostile client cannot blow up the series count: unknown resources are recorded as ``other``.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from contracts.resources import RESOURCE_BY_PLURAL

_KNOWN_RESOURCES = frozenset(RESOURCE_BY_PLURAL) | {"agentdeployments/scale"}
_KNOWN_OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})

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

        # Labelled children, looked up once: ``labels()`` validates and locks on every call.
        self._request_children: dict[tuple[str, str, str, str], Counter] = {}
        self._duration_children: dict[str, Histogram] = {}

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

    def cache_sizes(self, sizes: Mapping[str, int]) -> None:
        for kind, count in sizes.items():
            self.cache_objects.labels(kind).set(count)
