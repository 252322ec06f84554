"""The admission webhook: Starlette on uvicorn over TLS, gating every change to an agentops resource.

Owns: ``/mutate`` and ``/validate`` (AdmissionReview v1), ``/healthz``, ``/readyz``, ``/metrics``,
and the in-memory cache of policy objects fed by a watch (no API call per admission).

Modules, in the order a request meets them:

- :mod:`webhook.tls` — the serving TLS context, reloaded without a restart when certificates rotate;
- :mod:`webhook.app` — the ASGI app: parse, complete from the cache, decide (in :mod:`policies`),
  answer; malformed input is a 400, any failure a deny (fail closed);
- :mod:`webhook.cache` — list+watch of policies, agents and namespaces into immutable snapshots;
- :mod:`webhook.metrics` — Prometheus metrics (logs are :mod:`contracts.logline` JSON lines);
- :mod:`webhook.registration` — the Mutating/ValidatingWebhookConfigurations (manifests and local);
- ``python -m webhook`` (:mod:`webhook.__main__`) — certificates, registration, serving.

May import: :mod:`contracts` (the resource model, the log line), :mod:`policies` (every decision is
made there), :mod:`certs` and :mod:`kube`.
"""
