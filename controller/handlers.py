"""kopf wiring: which watch event calls which reconciliation.  No decisions are made here.

* AgentDeployment events -> a full reconcile when the generation or our annotations changed
  (a new spec, a new prompt stamp), else only the readiness cache pipelines consult;
* a timer per agent (every ``resync_seconds``) -> status, budget and autoscaler refresh, and a
  full reconcile every ``full_resync_seconds`` as a safety net;
* owned Deployment events -> status from the real workload; a deleted Deployment, ConfigMap or
  Service -> a full reconcile that recreates it;
* an AgentPipeline daemon per pipeline (:mod:`controller.pipelines`), and a deletion handler that
  withdraws its queued tasks;
* policy and namespace events -> the policy cache (replica ceilings, budgets, limit defaults);
* background scans (:mod:`controller.scan`): requested by changes of policies, exceptions,
  namespace labels, agents and pipelines (each kept in the scan's view), and by the agent timer
  when the period or an exception's expiry is due;
* with ``--native-admission`` (:func:`enable_native_admission`), the generated admission
  policies (:mod:`controller.native`): regenerated on policy, exception and namespace events, on
  events of the webhook configurations and of the generated objects, and by the agent timer at an
  exception's expiry.

kopf's own bookkeeping (progress, last-handled configuration, finalizer) lives in annotations
under ``controller.agentops.io/``, never in ``status``, whose schema is ours.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import logging
import time
from typing import Any

import kopf
from redis.asyncio import Redis

import kube
from contracts.resources import CONTROLLER_FINALIZER, GROUP, LABEL_AGENT, LABEL_MANAGED_BY, VERSION
from controller import agents, native, pipelines, scan
from controller.context import AgentInfo, Context, ControllerConfig, NativeState
from controller.kube import Kube
from controller.metrics import ControllerMetrics
from controller.render import CONTROLLER_NAME
from policies.native import GENERATED_LABEL, GENERATED_VALUE

logger = logging.getLogger("controller")

KOPF_PREFIX = "controller.agentops.io"
TIMER_SECONDS = 1.0

#: Set by ``python -m controller`` before the operator starts.
CONFIG = ControllerConfig()
#: Where the API server is and who we are to it, set by ``python -m controller`` from
#: ``--kubeconfig``/``--in-cluster``; unset, :func:`kube.load`'s rule picks it.  kopf's own
#: connection (:func:`login`) and ours (:class:`controller.kube.Kube`) both come from it.
CONNECTION: kube.Connection | None = None
PEERING_LIFETIME = 60
#: Set by ``python -m controller``, which serves them (``--metrics-bind-address``).
METRICS = ControllerMetrics()
_context: Context | None = None


def context() -> Context:
    if _context is None:
        raise RuntimeError("the controller context is created at operator start-up")
    return _context


#: Redis' default ``maxclients``: the pool never refuses a connection Redis itself would accept.
REDIS_CONNECTIONS = 10_000

#: Threads for blocking Kubernetes calls, and HTTP connections kept to the API server: enough that
#: a burst of agents (hundreds applied at once) is not serialised behind a handful of threads.
API_THREADS = 16


def connection() -> kube.Connection:
    global CONNECTION
    if CONNECTION is None:
        CONNECTION = kube.load()
    return CONNECTION


@kopf.on.login()
def login(**_: Any) -> kopf.ConnectionInfo:
    """kopf's credentials, from the same :class:`kube.Connection` as ours.

    Registering this replaces kopf's own fallbacks (in-cluster, then ``~/.kube/config``), so both
    clients follow one rule.  kopf calls it again after a 401, which re-reads a rotated token.
    """
    conn = connection()
    scheme, _sep, token = (conn.authorization() or "").partition(" ")
    return kopf.ConnectionInfo(
        server=conn.server,
        ca_path=conn.ca_file,
        insecure=not conn.verify,
        scheme=scheme or None,
        token=token or None,
        certificate_path=conn.cert_file,
        private_key_path=conn.key_file,
    )


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    global _context
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = CONTROLLER_FINALIZER
    settings.posting.level = logging.WARNING
    settings.peering.lifetime = PEERING_LIFETIME
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    # Redis connections: one per blocked pipeline reader plus one per agent refresh in flight; no
    # cap of our own, so pipelines never starve.  redis-py's pool refuses ("Too many connections")
    # past 100 by default, which a few hundred agents reach: the ceiling is Redis' own maxclients.
    redis = Redis.from_url(
        CONFIG.redis_url, decode_responses=False, health_check_interval=30, max_connections=REDIS_CONNECTIONS
    )
    asyncio.get_running_loop().set_default_executor(
        concurrent.futures.ThreadPoolExecutor(max_workers=API_THREADS, thread_name_prefix="kube")
    )
    api = kube.Client(connection(), user_agent=CONTROLLER_NAME, max_connections=API_THREADS)
    _context = Context(config=CONFIG, kube=Kube(api), redis=redis, metrics=METRICS)
    if CONFIG.native_admission:
        _context.native = NativeState()
    if not settings.peering.standalone and settings.peering.name:
        await asyncio.to_thread(_context.kube.ensure_peering, settings.peering.name, CONFIG.namespaces)
    logger.info(
        "controller started: namespaces=%s redis=%s offline_fallback=%s",
        ",".join(CONFIG.namespaces) or "(all)",
        CONFIG.redis_url.split("@")[-1],
        CONFIG.render.offline_fallback,
    )


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    if _context is not None:
        await scan.cancel_all(_context)
        await native.cancel(_context)
        await _context.redis.aclose()
        _context.kube.api.close()


def _plain(body: Any) -> dict[str, Any]:
    return copy.deepcopy(dict(body))


# --- AgentDeployment -----------------------------------------------------------------------


@kopf.on.event(GROUP, VERSION, "agentdeployments")
async def agent_event(event: Any, body: Any, namespace: str | None, name: str, **_: Any) -> None:
    ctx = context()
    assert namespace is not None
    key = (namespace, name)
    if event.get("type") == "DELETED":
        ctx.forget(namespace, name)
        scan.changed(ctx, body, deleted=True)
        return
    plain = _plain(body)
    status = plain.get("status") or {}
    ctx.agents[key] = AgentInfo(
        ready_replicas=int(status.get("readyReplicas") or 0), replicas=int(status.get("replicas") or 0)
    )
    ctx.agent_bodies[key] = plain
    agents.observed(ctx, key, plain)
    scan.changed(ctx, plain, deleted=False)
    if ctx.reconciled.get(key) != agents.reconcile_key(plain):
        logger.info(
            "reconciling agent %s/%s (generation %s)", namespace, name, plain["metadata"].get("generation")
        )
        await agents.reconcile(ctx, plain, full=True)


@kopf.timer(GROUP, VERSION, "agentdeployments", interval=TIMER_SECONDS, initial_delay=TIMER_SECONDS)
async def agent_timer(namespace: str | None, name: str, **_: Any) -> None:
    ctx = context()
    assert namespace is not None
    key = (namespace, name)
    scan.tick(ctx, namespace)
    native.tick(ctx)
    now = time.monotonic()
    if now - ctx.last_refresh.get(key, 0.0) < ctx.config.resync_seconds:
        return
    ctx.last_refresh[key] = now
    body = ctx.agent_bodies.get(key)
    if body is None:
        return
    full = now - ctx.last_full.get(key, 0.0) >= ctx.config.full_resync_seconds
    await agents.reconcile(ctx, body, full=full)


_OWNED = {LABEL_MANAGED_BY: CONTROLLER_NAME}


async def _child_event(event: Any, body: Any, namespace: str | None, *, deployment: bool) -> None:
    ctx = context()
    if namespace is None:
        return
    agent = (body.get("metadata", {}).get("labels") or {}).get(LABEL_AGENT)
    if not agent:
        return
    key = (namespace, agent)
    deleted = event.get("type") == "DELETED"
    if deployment:
        if deleted:
            ctx.deployments.pop(key, None)
        else:
            ctx.deployments[key] = _plain(body)
    agent_body = ctx.agent_bodies.get(key)
    if agent_body is None:
        return
    # A deleted child comes back at once; a Deployment status change refreshes the agent's status.
    if deleted or deployment:
        await agents.reconcile(ctx, agent_body, full=deleted)


@kopf.on.event("apps", "v1", "deployments", labels=_OWNED)
async def deployment_event(event: Any, body: Any, namespace: str | None, **_: Any) -> None:
    await _child_event(event, body, namespace, deployment=True)


@kopf.on.event("", "v1", "configmaps", labels=_OWNED)
async def configmap_event(event: Any, body: Any, namespace: str | None, **_: Any) -> None:
    if event.get("type") == "DELETED":
        await _child_event(event, body, namespace, deployment=False)


@kopf.on.event("", "v1", "services", labels=_OWNED)
async def service_event(event: Any, body: Any, namespace: str | None, **_: Any) -> None:
    if event.get("type") == "DELETED":
        await _child_event(event, body, namespace, deployment=False)


# --- AgentPipeline -------------------------------------------------------------------------


@kopf.daemon(GROUP, VERSION, "agentpipelines", cancellation_timeout=5.0)
async def pipeline_daemon(stopped: kopf.DaemonStopped, body: Any, **_: Any) -> None:
    await pipelines.run_pipeline(context(), _plain(body), stopped)


@kopf.on.event(GROUP, VERSION, "agentpipelines")
async def pipeline_event(event: Any, body: Any, **_: Any) -> None:
    scan.changed(context(), _plain(body), deleted=event.get("type") == "DELETED")


@kopf.on.delete(GROUP, VERSION, "agentpipelines")
async def pipeline_deleted(body: Any, namespace: str | None, name: str, logger: Any, **_: Any) -> None:
    assert namespace is not None
    steps = [s.get("name", "") for s in (body.get("spec") or {}).get("steps", [])]
    withdrawn = await pipelines.withdraw_all(context().redis, namespace, name, steps)
    if withdrawn:
        logger.info("withdrew %d queued task(s) of deleted pipeline", withdrawn)


# --- policies ------------------------------------------------------------------------------
#
# Index handlers: kopf calls them for every existing object during the initial listing and holds
# back every other handler (events, timers, daemons) until all indexes are populated.  They fill
# the caches as a side effect, so the first reconcile after a (re)start already sees every
# policy, namespace label and agent; the event handlers below then keep the caches current
# (including deletions, which indexes do not report).


@kopf.index(GROUP, VERSION, "clusteragentpolicies")
async def cluster_policy_index(body: Any, **_: Any) -> None:
    context().policies.update_policy(_plain(body), deleted=False)


@kopf.index(GROUP, VERSION, "agentpolicies")
async def policy_index(body: Any, **_: Any) -> None:
    context().policies.update_policy(_plain(body), deleted=False)


@kopf.index("", "v1", "namespaces")
async def namespace_index(body: Any, name: str, **_: Any) -> None:
    context().policies.update_namespace(name, dict(body.get("metadata", {}).get("labels") or {}))


@kopf.index(GROUP, VERSION, "agentpolicyexceptions")
async def exception_index(body: Any, **_: Any) -> None:
    context().policies.update_exception(_plain(body), deleted=False)


@kopf.index(GROUP, VERSION, "agentdeployments")
async def agent_index(body: Any, namespace: str | None, name: str, **_: Any) -> None:
    # Pipelines resumed after a restart must see which agents exist and are ready; the first
    # scans must see every agent.
    ctx = context()
    status = body.get("status") or {}
    ctx.agents[(str(namespace), name)] = AgentInfo(
        ready_replicas=int(status.get("readyReplicas") or 0), replicas=int(status.get("replicas") or 0)
    )
    # Only noted: indexes are filled on every replica, and scans are requested by the event
    # handlers, which run on the leader only.
    scan.indexed(ctx, _plain(body))


@kopf.index(GROUP, VERSION, "agentpipelines")
async def pipeline_index(body: Any, **_: Any) -> None:
    scan.indexed(context(), _plain(body))


def _policies_changed(ctx: Context) -> None:
    # Budgets and limit defaults are part of the pods' environment: re-render every agent on its
    # next timer tick (a full reconcile is cheap when nothing changed: server-side apply no-ops).
    ctx.last_full.clear()


@kopf.on.event(GROUP, VERSION, "clusteragentpolicies")
async def cluster_policy_event(event: Any, body: Any, **_: Any) -> None:
    ctx = context()
    ctx.policies.update_policy(_plain(body), deleted=event.get("type") == "DELETED")
    _policies_changed(ctx)
    scan.request_all(ctx)
    native.request(ctx)


@kopf.on.event(GROUP, VERSION, "agentpolicies")
async def policy_event(event: Any, body: Any, namespace: str | None, **_: Any) -> None:
    ctx = context()
    ctx.policies.update_policy(_plain(body), deleted=event.get("type") == "DELETED")
    _policies_changed(ctx)
    native.request(ctx)
    if namespace:
        scan.request(ctx, namespace)


@kopf.on.event(GROUP, VERSION, "agentpolicyexceptions")
async def exception_event(event: Any, body: Any, namespace: str | None, **_: Any) -> None:
    ctx = context()
    ctx.policies.update_exception(_plain(body), deleted=event.get("type") == "DELETED")
    native.request(ctx)
    if namespace:
        scan.request(ctx, namespace)


@kopf.on.event("", "v1", "namespaces")
async def namespace_event(event: Any, body: Any, name: str, **_: Any) -> None:
    ctx = context()
    labels = None if event.get("type") == "DELETED" else dict(body.get("metadata", {}).get("labels") or {})
    # Also the start-up trigger when no policy exists: kopf lists every namespace.
    native.request(ctx)
    if labels != ctx.policies.namespace_labels.get(name):
        ctx.policies.update_namespace(name, labels)
        if labels is not None and name in ctx.scans.objects:
            scan.request(ctx, name)  # ClusterAgentPolicies select namespaces by label


# --- native admission (``--native-admission``) ----------------------------------------------------


def enable_native_admission() -> None:
    """Register the handlers only ``--native-admission`` needs (and has the RBAC for): watches of
    the webhook configurations named ``CONFIG.webhook_configuration`` and of the generated objects.
    Called by ``python -m controller`` after it set :data:`CONFIG`, before kopf starts."""

    def ours(name: str, **_: Any) -> bool:
        return name == CONFIG.webhook_configuration

    async def webhook_configuration_event(**_: Any) -> None:
        # A re-apply of the manifests (or the webhook's own registration) resets matchConditions.
        native.request(context())

    async def generated_event(event: Any, body: Any, **_: Any) -> None:
        native.observed(context(), body, deleted=event.get("type") == "DELETED")

    for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        kopf.on.event("admissionregistration.k8s.io", "v1", plural, when=ours)(webhook_configuration_event)
    for plural in ("validatingadmissionpolicies", "validatingadmissionpolicybindings"):
        kopf.on.event(
            "admissionregistration.k8s.io", "v1", plural, labels={GENERATED_LABEL: GENERATED_VALUE}
        )(generated_event)
