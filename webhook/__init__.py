"""The admission webhook: FastAPI on uvicorn over TLS, gating every change to an agentops resource.

Owns: ``/mutate`` and ``/validate`` (AdmissionReview v1), ``/healthz``, ``/readyz``, ``/metrics``,
and the in-memory cache of policy objects fed by a watch (no API call per admission).

May import: :mod:`policies` (every decision is made there) and :mod:`certs`.
"""
