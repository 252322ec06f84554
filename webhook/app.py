"""The webhook's ASGI application: admission endpoints, health, readiness and metrics.

``/mutate`` and ``/validate`` are a bare ASGI handler in front of a Starlette app that serves the
rest (health, readiness, metrics, lifespan, 404): the admission path is called twice per create, and
skipping the middleware and routing there is measurably cheaper (docs/webhook.md, "Benchmarks").

Request flow for ``POST /mutate`` and ``POST /validate``:

1. the body must be a JSON AdmissionReview v1 (:func:`policies.admission.parse_admission_review`);
   anything else is answered ``400`` with a message saying what is wrong, because without a
   request uid there is nothing we could answer the API server *with*;
2. the request is completed from the watch cache: namespace labels (for ClusterAgentPolicy
   ``namespaceSelector``) and, for the ``scale`` subresource, the labels of the AgentDeployment
   being scaled (the Scale object carries none);
3. :func:`policies.engine.mutate` / :func:`policies.engine.validate` decide;
   :func:`policies.admission.review_response` writes the AdmissionReview response.

Fail closed: before the cache has synced, and on any unexpected error while deciding, the request
is *denied* with a message (the error is logged with the request uid, never the object).  The
API server would deny on a webhook failure anyway (``failurePolicy: Fail``); answering ourselves
gives the user a message that says what happened instead of a TLS or timeout error.

Draining (``draining()`` true, after SIGTERM with ``--drain-seconds``, see :mod:`webhook.__main__`):
every response carries ``Connection: close``, so the API server drops its keep-alive connection
after the answer instead of reusing it once the server is gone, and ``/readyz`` answers ``503``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import time
import traceback
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal, Protocol

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from contracts.resources import LabelSelector
from policies.admission import MalformedReview, error_response, parse_admission_review, review_response
from policies.engine import AdmissionRequest, Decision, PolicySet, mutate, validate
from policies.results import evaluate
from webhook.cache import PolicySource, Snapshot
from webhook.metrics import WebhookMetrics

log = logging.getLogger("webhook.admission")

#: The API server caps objects at ~1.5 MiB in etcd; an AdmissionReview carries two plus metadata.
MAX_BODY_BYTES = 4 * 1024 * 1024

Endpoint = Literal["mutate", "validate"]
#: What ``agentops_policy_results_total`` counts at admission: the kinds rule results are defined
#: for (:func:`policies.results.evaluate`), on the operations the rules judge.
_RESULT_KINDS = frozenset({"AgentDeployment", "AgentPipeline"})
_RULED_OPERATIONS = frozenset({"CREATE", "UPDATE"})
_DECIDE: dict[str, Callable[[AdmissionRequest, PolicySet], Decision]] = {
    "mutate": mutate,
    "validate": validate,
}


class Lifecycle(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...


#: An answer: HTTP status and the JSON body, already serialised.
Answer = tuple[int, bytes]


def _json(status: int, body: Mapping[str, Any]) -> Answer:
    return status, json.dumps(body, separators=(",", ":")).encode()


def _bad_request(message: str) -> Answer:
    return _json(400, {"error": "malformed AdmissionReview", "message": message})


class _Disconnected(Exception):
    """The client went away before sending the whole body: nothing to answer."""


async def _read_capped(scope: Scope, receive: Receive) -> bytes | None:
    """The body, or None once it exceeds MAX_BODY_BYTES (stops reading: no unbounded buffering)."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            if value.isdigit() and int(value) > MAX_BODY_BYTES:
                return None
            break
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _Disconnected
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _resource_of(payload: Any) -> tuple[str, str]:
    """``(resource[/subresource], operation)`` for metrics, from the raw body; never raises."""
    try:
        req = payload["request"]
        resource = str(req["resource"]["resource"])
        sub = req.get("subResource")
        return (f"{resource}/{sub}" if sub else resource), str(req.get("operation", ""))
    except (KeyError, TypeError, AttributeError):
        return "other", "other"


def _where(exc: BaseException) -> dict[str, Any]:
    """An exception's type and stack (file:line function), but not its message.

    Messages of validation errors quote the offending input, which may be a system prompt; the
    type and the frames say where it failed without putting object contents into the logs.
    """
    frames = traceback.extract_tb(exc.__traceback__)
    return {
        "error_type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "stack": [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames[-8:]],
    }


def _uid_of(payload: Any) -> str | None:
    try:
        uid = payload["request"]["uid"]
    except (KeyError, TypeError):
        return None
    return uid if isinstance(uid, str) and uid else None


class NotCachedYet(Exception):
    """An object the decision depends on has not reached the watch cache yet."""


_NAME_LABEL = "kubernetes.io/metadata.name"


def _selector_keys(selector: LabelSelector | None) -> set[str]:
    if selector is None:
        return set()
    return set(selector.match_labels) | {e.key for e in selector.match_expressions}


def complete_request(request: AdmissionRequest, snapshot: Snapshot) -> AdmissionRequest:
    """Fill in what only the cache knows: namespace labels and a scaled agent's labels.

    An object created a moment ago may not have reached the cache.  When the decision cannot
    depend on what is missing (no policy selects on those labels; every namespace carries its
    ``kubernetes.io/metadata.name`` label) we go on exactly; otherwise :class:`NotCachedYet` is
    raised and the request denied with "retry", never decided on labels we do not have.
    """
    changes: dict[str, Any] = {}
    policies = snapshot.policies
    if request.namespace:
        labels = snapshot.namespace_labels.get(request.namespace)
        if labels is None:
            keys = set().union(*(_selector_keys(p.spec.namespace_selector) for p in policies.cluster))
            if keys - {_NAME_LABEL}:
                raise NotCachedYet(f"namespace {request.namespace}")
            labels = {_NAME_LABEL: request.namespace}
        changes["namespace_labels"] = dict(labels)
    if request.sub_resource == "scale":
        target = snapshot.agent_labels.get((request.namespace or "", request.name or ""))
        if target is None:
            selectors = [p.spec.selector for p in policies.cluster]
            selectors += [
                p.spec.selector for p in policies.namespaced if p.metadata.namespace == request.namespace
            ]
            if any(_selector_keys(s) for s in selectors):
                raise NotCachedYet(f"AgentDeployment {request.namespace}/{request.name}")
            target = {}
        changes["target_labels"] = dict(target)
    return dataclasses.replace(request, **changes) if changes else request


def _namespace_label(namespace: str | None, snapshot: Snapshot | None) -> str:
    """A request's namespace as a metric label: its name once the watch cache knows the namespace,
    ``other`` before (a client could otherwise make up namespaces), ``""`` for cluster objects."""
    if not namespace:
        return ""
    return namespace if snapshot is not None and namespace in snapshot.namespace_labels else "other"


def _failed_closed(
    metrics: WebhookMetrics,
    endpoint: Endpoint,
    resource: str,
    review: AdmissionRequest,
    snapshot: Snapshot | None,
    started: float,
) -> None:
    """Count a request denied because it could not be decided (not synced, not cached, error)."""
    elapsed = time.perf_counter() - started
    metrics.observe(endpoint, resource, review.operation, "error", elapsed)
    namespace = _namespace_label(review.namespace, snapshot)
    metrics.admission(endpoint, review.kind, namespace, review.operation, False, elapsed)


def _count_rule_results(
    metrics: WebhookMetrics, request: AdmissionRequest, policies: PolicySet, namespace: str
) -> None:
    """``agentops_policy_results_total`` for a validated object; never changes the answer.

    Only the metric depends on it: a failure here is logged and the decision stands.
    """
    if request.object is None or request.sub_resource:
        return
    try:
        results = evaluate(
            request.object, policies, namespace_labels=request.namespace_labels, now=request.now
        )
        metrics.rule_results(results, request.kind, namespace, request.operation)
    except Exception as exc:
        log.error("counting rule results failed", extra={"uid": request.uid, **_where(exc)})


def _decision_label(decision: Decision) -> str:
    if not decision.allowed:
        return "denied"
    return "warned" if decision.warnings else "allowed"


def _closing(send: Send) -> Send:
    """``send`` that marks the response ``Connection: close``: the server closes the connection
    after it, and the client knows not to send another request on it."""

    async def closing_send(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return closing_send


def _never() -> bool:
    return False


async def _http_error(_: Request, exc: Exception) -> Response:
    if not isinstance(exc, HTTPException):  # registered for HTTPException only
        raise exc
    return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)


def create_app(
    source: PolicySource,
    *,
    metrics: WebhookMetrics | None = None,
    lifecycle: Sequence[Lifecycle] = (),
    draining: Callable[[], bool] = _never,
) -> ASGIApp:
    """The webhook app over ``source``; ``lifecycle`` objects are started and stopped with it.

    ``draining`` says whether the server is shutting down (see the module docstring).
    """
    metrics = metrics or WebhookMetrics()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        for item in lifecycle:
            await item.start()
        try:
            yield
        finally:
            for item in reversed(lifecycle):
                await item.stop()

    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        if draining():
            return PlainTextResponse("shutting down", status_code=503)
        if source.synced:
            return PlainTextResponse("ok")
        return PlainTextResponse("policy cache not synced yet", status_code=503)

    async def metrics_endpoint(_: Request) -> Response:
        metrics.cache_synced.set(1 if source.synced else 0)
        metrics.cache_sizes(source.sizes())
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        # Errors (404, 405) as JSON with ``detail``, like the admission paths' own 405.
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )

    async def admit(endpoint: Endpoint, scope: Scope, receive: Receive) -> Answer:
        started = time.perf_counter()
        body = await _read_capped(scope, receive)
        if body is None:
            metrics.observe(endpoint, "other", "other", "malformed", time.perf_counter() - started)
            return _bad_request(f"request body exceeds {MAX_BODY_BYTES} bytes")
        try:
            return handle(endpoint, body, started)
        except Exception as exc:
            # Last line of defence (e.g. a logging or metrics failure): never a 500 to the API
            # server, always an answer it can show the user.
            log.error(
                "unexpected failure in the admission handler", extra={"endpoint": endpoint, **_where(exc)}
            )
            try:
                uid = _uid_of(json.loads(body))
            except (ValueError, RecursionError):
                uid = None
            if uid is None:
                return _bad_request("AdmissionReview could not be handled and has no request.uid")
            return _json(200, error_response(uid, "agentops webhook: internal error; denied"))

    def handle(endpoint: Endpoint, body: bytes, started: float) -> Answer:
        try:
            payload = json.loads(body)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
            metrics.observe(endpoint, "other", "other", "malformed", time.perf_counter() - started)
            return _bad_request(f"body is not JSON: {type(exc).__name__}: {str(exc)[:200]}")
        resource, operation = _resource_of(payload)
        uid = _uid_of(payload)
        try:
            review = parse_admission_review(payload)
        except MalformedReview as exc:
            metrics.observe(endpoint, resource, operation, "malformed", time.perf_counter() - started)
            return _bad_request(str(exc))
        except Exception as exc:
            # A request the parser should have classified but crashed on: fail closed if we can
            # answer (we know the uid), otherwise it is malformed from where we stand.
            log.error(
                "AdmissionReview parsing failed", extra={"uid": uid, "endpoint": endpoint, **_where(exc)}
            )
            metrics.observe(endpoint, resource, operation, "error", time.perf_counter() - started)
            if uid is None:
                return _bad_request("AdmissionReview could not be parsed and has no request.uid")
            return _json(
                200, error_response(uid, "agentops webhook: internal error while reading the request; denied")
            )
        snapshot: Snapshot | None = None
        try:
            if not source.synced:
                _failed_closed(metrics, endpoint, resource, review, None, started)
                message = "agentops webhook: policy cache not synced yet; denied until it is, retry shortly"
                return _json(200, error_response(review.uid, message, code=503))
            snapshot = source.snapshot()
            policies = snapshot.policies_for(review.kind)
            request = complete_request(review, snapshot)
            decision = _DECIDE[endpoint](request, policies)
            answer = review_response(review.uid, decision)
        except NotCachedYet as missing:
            _failed_closed(metrics, endpoint, resource, review, snapshot, started)
            log.info(
                "denied: object not in the watch cache yet",
                extra={"uid": review.uid, "missing": str(missing)},
            )
            message = (
                f"agentops webhook: {missing} is not in the webhook's watch cache yet (created a moment ago?)"
                " and matching policies select on its labels; retry the request"
            )
            return _json(200, error_response(review.uid, message, code=503))
        except Exception as exc:
            log.error(
                "admission failed; denying",
                extra={
                    "uid": review.uid,
                    "endpoint": endpoint,
                    "resource": resource,
                    "operation": operation,
                    **_where(exc),
                },
            )
            _failed_closed(metrics, endpoint, resource, review, snapshot, started)
            message = "agentops webhook: internal error while deciding; denied"
            return _json(200, error_response(review.uid, message))
        label = _decision_label(decision)
        namespace = _namespace_label(review.namespace, snapshot)
        if endpoint == "validate" and review.kind in _RESULT_KINDS and review.operation in _RULED_OPERATIONS:
            # After the answer is on its way: the per-rule results (~30 us) are only for the
            # metric, and the event loop runs this callback once the handler task yields.
            asyncio.get_running_loop().call_soon(_count_rule_results, metrics, request, policies, namespace)
        elapsed = time.perf_counter() - started
        metrics.observe(endpoint, resource, operation, label, elapsed)
        metrics.admission(endpoint, review.kind, namespace, review.operation, decision.allowed, elapsed)
        if label != "allowed" or decision.audit:
            log.info(
                "admission decision",
                extra={
                    "uid": review.uid,
                    "endpoint": endpoint,
                    "resource": resource,
                    "operation": operation,
                    "namespace": review.namespace,
                    "object_name": review.name,
                    "user": review.user.username,
                    "dry_run": review.dry_run,
                    "decision": label,
                    "denials": list(decision.denials),
                    "warnings": list(decision.warnings),
                    "audit": list(decision.audit),
                },
            )
        return _json(200, answer)

    routes: dict[str, Endpoint] = {"/mutate": "mutate", "/validate": "validate"}

    async def asgi(scope: Scope, receive: Receive, send: Send) -> None:
        # The admission hot path is a bare ASGI handler in front of Starlette: it needs none of
        # the routing, middleware and exception machinery, and every bit of Python skipped counts
        # twice per create (mutate + validate; measured in docs/webhook.md, "Benchmarks").
        # Everything else (health, readiness, metrics, lifespan, 404) goes to Starlette.
        if draining() and scope["type"] == "http":
            send = _closing(send)
        endpoint = routes.get(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await app(scope, receive, send)
            return
        extra: list[tuple[bytes, bytes]] = []
        if scope["method"] != "POST":
            (status, body), extra = _json(405, {"detail": "Method Not Allowed"}), [(b"allow", b"POST")]
        else:
            try:
                status, body = await admit(endpoint, scope, receive)
            except _Disconnected:
                return
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)), *extra]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return asgi
