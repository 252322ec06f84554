"""AgentDeployment reconciliation: children, prompt revisions, status, budget, policy violations and
autoscaling.

:func:`reconcile` is level-based and idempotent: it reads the agent as it is now, server-side
applies the ConfigMap, Deployment and Service it should own (recreating any that were deleted,
undoing any drift), records a prompt revision if the prompt hash changed, and writes status
computed from the **Deployment's** status (replicas, readyReplicas) plus the budget read from
Redis.  Status is only patched when it changed, so the status write does not feed back into
another reconciliation.

Two depths, chosen by the caller (:mod:`controller.handlers`):

* ``full=True`` - on a spec/annotation change, when a child was deleted, and every
  ``full_resync_seconds`` as a safety net;
* ``full=False`` - on every Deployment status change and every ``resync_seconds``: status,
  budget and the builtin autoscaler only, from cached bodies (no API read).

Failures become conditions and Events, never exceptions that crash-loop: a missing Secret is a
``Ready=False/SecretNotFound`` condition with a message saying what to create.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redis.exceptions import RedisError

from contracts.resources import LABEL_AGENT, AgentDeployment, prompt_sha256
from controller import autoscale, budget, pods, render, revisions
from controller.context import Context
from controller.policy import AgentPolicyView
from kube import ApiError
from policies.stamps import annotations_of

logger = logging.getLogger("controller.agents")

PLURAL = "agentdeployments"
KEDA_CRD = "scaledobjects.keda.sh"
APPLY_RETRY_SECONDS = 5.0
SECRET_TTL_SECONDS = 5.0
#: While an agent has unready replicas, its pods are read at most this often (see controller.pods).
POD_CHECK_SECONDS = 10.0


def api_message(exc: ApiError) -> str:
    """The API server's own explanation (e.g. which verb RBAC denied), not just "403 Forbidden"."""
    return exc.explanation


def essence(body: dict[str, Any]) -> dict[str, Any]:
    """The parts of a stored agent our model validates (status and server fields left out)."""
    meta = body.get("metadata", {})
    return {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "metadata": {
            k: meta.get(k)
            for k in ("name", "namespace", "uid", "generation", "labels", "annotations")
            if meta.get(k) is not None
        },
        "spec": body.get("spec", {}),
    }


async def _call(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def _event(ctx: Context, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
    await asyncio.to_thread(ctx.kube.post_event, body, type_, reason, message)


async def reconcile(ctx: Context, body: dict[str, Any], *, full: bool) -> None:
    """Bring one agent's children and status to what its spec says (see module docstring)."""
    meta = body.get("metadata", {})
    namespace, name = meta["namespace"], meta["name"]
    async with ctx.lock(namespace, name):
        if meta.get("deletionTimestamp"):
            return
        try:
            agent = AgentDeployment.from_k8s(essence(body))
        except ValidationError as exc:
            # The CRD schema and webhook normally prevent this; say so on the object and stop.
            first = exc.errors()[0]
            await _event(
                ctx, body, "Warning", "InvalidSpec", f"{'.'.join(map(str, first['loc']))}: {first['msg']}"
            )
            return
        await _reconcile_locked(ctx, body, agent, full=full)


async def _reconcile_locked(
    ctx: Context, body: dict[str, Any], agent: AgentDeployment, *, full: bool
) -> None:
    namespace, name = str(agent.metadata.namespace), str(agent.metadata.name)
    key = (namespace, name)
    options = ctx.config.render
    status: dict[str, Any] = stored_status(ctx, key, body)
    # Judged now, so an exception excusing a budget (or a ceiling) counts until it expires.
    view = ctx.policies.for_agent(namespace, agent.metadata.labels, name=name, now=datetime.now(UTC))
    conditions = render.Conditions(
        items=[dict(c) for c in status.get("conditions") or []], generation=agent.metadata.generation
    )

    wanted = agent.spec.effective_provider()
    named = agent.spec.credentials.secret_ref if agent.spec.credentials else None
    secret = named or options.default_secret
    secret_exists: bool | None = None
    if wanted != "offline" and secret is not None:
        secret_exists = await _secret_exists(ctx, namespace, secret.name)
    decision = render.decide_provider(agent, secret_exists, options)
    if ctx.rendered_provider.get(key) != decision.display:
        full = True  # a Secret appeared or vanished: the pods' environment changes
    config = render.runtime_config(agent, decision, options, view.budget, dict(view.limit_defaults))
    if ctx.rendered_config.get(key) != config:
        # The pods' environment changes without a new generation: a policy changed, or an
        # exception was given or expired; every refresh notices it, without a clock of its own.
        full = True

    deployment = ctx.deployments.get(key)
    if full or deployment is None:
        try:
            await _call(ctx.kube.apply, render.render_configmap(agent))
            deployment = await _call(
                ctx.kube.apply, render.render_deployment(agent, config, decision, options)
            )
            await _call(ctx.kube.apply, render.render_service(agent))
        except ApiError as exc:
            message = f"applying the agent's Deployment, ConfigMap or Service failed: {api_message(exc)}"
            previous = conditions.get("Ready") or {}
            conditions.set("Ready", False, "ApplyFailed", message)
            if previous.get("message") != message:  # one Event per distinct failure, not one per retry
                await _event(ctx, body, "Warning", "ApplyFailed", message)
            await _patch_status_if_changed(ctx, body, {**status, "conditions": conditions.items})
            # Retried by the timer, but no more often than every APPLY_RETRY_SECONDS.
            ctx.last_full[key] = time.monotonic() - ctx.config.full_resync_seconds + APPLY_RETRY_SECONDS
            return
        ctx.deployments[key] = deployment
        await _keda(ctx, agent, conditions)
        ctx.last_full[key] = time.monotonic()
        ctx.reconciled[key] = reconcile_key(body)
        ctx.rendered_provider[key] = decision.display
        ctx.rendered_config[key] = config
    if ctx.reconciled.get(key) == reconcile_key(body):
        # On every refresh, not only the full one: a failure later in the full reconcile (the
        # revision record, the status patch) must not leave it unreported until the next one.
        status["observedGeneration"] = agent.metadata.generation

    sha = prompt_sha256(agent.spec.system_prompt)
    if status.get("promptHash") != sha:
        number = await _record_revision(ctx, agent, status.get("promptHash"))
        status["promptHash"] = sha
        status["promptRevision"] = number

    dep_status = (deployment or {}).get("status") or {}
    status["replicas"] = int(dep_status.get("replicas") or 0)
    status["readyReplicas"] = int(dep_status.get("readyReplicas") or 0)
    status["selector"] = render.selector_string(name)
    previous_provider = status.get("effectiveProvider")
    status["effectiveProvider"] = decision.display
    render.workload_conditions(conditions, agent.spec.replicas, deployment, decision)
    if decision.problem is None:
        await _pods_stuck(ctx, body, key, agent.spec.replicas, status["readyReplicas"], conditions)

    await _budget(ctx, body, agent, view, status, conditions)
    await _policy_violation(ctx, body, key, conditions)
    if "Ready" in conditions.flipped and decision.problem is not None:
        await _event(ctx, body, "Warning", decision.problem[0], decision.problem[1])
    if decision.fell_back and previous_provider != decision.display:
        await _event(
            ctx,
            body,
            "Normal",
            "OfflineProvider",
            f"running on the offline provider: {decision.display}; model {agent.spec.model} is not called",
        )
    status["conditions"] = conditions.items
    await _patch_status_if_changed(ctx, body, status)
    await _autoscale(ctx, body, agent, view)


async def _pods_stuck(
    ctx: Context,
    body: dict[str, Any],
    key: tuple[str, str],
    desired: int,
    ready: int,
    conditions: render.Conditions,
) -> None:
    """Say on the agent why its pods do not start (image, configuration, crash loop, scheduling):
    ``Ready`` when none is ready, ``Progressing`` when some are; an Event when it first says so."""
    if ready >= desired:
        ctx.pod_checks.pop(key, None)
        return
    now = time.monotonic()
    checked = ctx.pod_checks.get(key)
    if checked is None or now - checked[0] >= POD_CHECK_SECONDS:
        try:
            listed = await _call(ctx.kube.list_pods, key[0], render.selector_string(key[1]))
        except ApiError as exc:
            logger.warning("reading the pods of agent %s/%s failed: %s", *key, api_message(exc))
            return
        checked = (now, pods.diagnose(listed))
        ctx.pod_checks[key] = checked
    stuck = checked[1]
    if stuck is None:
        return
    condition = "Ready" if ready == 0 else "Progressing"
    stored = stored_status(ctx, key, body).get("conditions") or []
    previous: dict[str, Any] = next((c for c in stored if c.get("type") == condition), {})
    conditions.set(condition, condition == "Progressing", stuck.reason, stuck.message)
    if previous.get("reason") != stuck.reason:
        await _event(ctx, body, "Warning", stuck.reason, stuck.message)


async def _secret_exists(ctx: Context, namespace: str, name: str) -> bool:
    """Whether a Secret exists, cached for SECRET_TTL_SECONDS (agents often share one Secret)."""
    now = time.monotonic()
    cached = ctx.secrets.get((namespace, name))
    if cached is not None and now - cached[1] < SECRET_TTL_SECONDS:
        return cached[0]
    try:
        exists = bool(await _call(ctx.kube.secret_exists, namespace, name))
    except ApiError as exc:
        logger.warning("cannot check Secret %s/%s: %s", namespace, name, api_message(exc))
        exists = False
    ctx.secrets[(namespace, name)] = (exists, now)
    return exists


def reconcile_key(body: dict[str, Any]) -> tuple[Any, ...]:
    """What, when it changes, needs a full reconciliation: the spec generation and our annotations."""
    meta = body.get("metadata", {})
    annotations = annotations_of(body)
    stamps = tuple(sorted((k, v) for k, v in annotations.items() if k.startswith("agentops.agentops.io/")))
    return (meta.get("generation"), stamps, meta.get("uid"))


def stored_status(ctx: Context, key: tuple[str, str], body: dict[str, Any]) -> dict[str, Any]:
    """The agent's status as stored: ``body``'s, with what this process last wrote over it.

    The controller is the only writer of these fields, so its last write is the truth.  The cached
    body can be older: a watch event for a write that came before ours (kopf's finalizer, say) can
    arrive after our status patch returned, and judged against it, a condition would "flip" again
    and its Event be posted twice.
    """
    return {**(body.get("status") or {}), **ctx.written_status.get(key, {})}


def observed(ctx: Context, key: tuple[str, str], body: dict[str, Any]) -> None:
    """A watch event's body: once it shows the status last written, the watch has caught up and
    its bodies are the truth again (another leader's writes included)."""
    written = ctx.written_status.get(key)
    if written is not None and (body.get("status") or {}) == written:
        del ctx.written_status[key]


async def _patch_status_if_changed(ctx: Context, body: dict[str, Any], status: dict[str, Any]) -> None:
    meta = body["metadata"]
    key = (meta["namespace"], meta["name"])
    current = stored_status(ctx, key, body)
    if all(current.get(k) == v for k, v in status.items()):
        return
    try:
        stored = await _call(ctx.kube.patch_status, PLURAL, meta["namespace"], meta["name"], status)
    except ApiError as exc:
        if exc.status != 404:  # deleted meanwhile: nothing to report on
            logger.warning("status patch of %s/%s failed: %s", meta["namespace"], meta["name"], exc.reason)
        return
    # Keep the cached body in step so the next refresh compares against what is stored.
    body["status"] = ctx.written_status[key] = stored


async def _record_revision(ctx: Context, agent: AgentDeployment, previous: str | None) -> int:
    namespace, name = str(agent.metadata.namespace), str(agent.metadata.name)
    existing = await _call(ctx.kube.list_custom, "agentpromptrevisions", namespace, f"{LABEL_AGENT}={name}")
    by_name = {r["metadata"]["name"]: int(r["spec"]["revision"]) for r in existing}
    candidate = revisions.build_revision(
        agent, max(by_name.values(), default=0) + 1, previous, render.now_iso(), render.owner_reference(agent)
    )
    rev_name = str(candidate.metadata.name)
    if rev_name in by_name:
        return by_name[rev_name]
    created = await _call(ctx.kube.create_custom, "agentpromptrevisions", namespace, candidate.to_k8s())
    if not created:  # raced with ourselves across a restart: the stored one is the record
        stored = await _call(ctx.kube.get_custom, "agentpromptrevisions", namespace, rev_name)
        return int(stored["spec"]["revision"]) if stored else candidate.spec.revision
    return candidate.spec.revision


async def _keda(ctx: Context, agent: AgentDeployment, conditions: render.Conditions) -> None:
    autoscaling = agent.spec.autoscaling
    if autoscaling is None or autoscaling.engine != "keda":
        return
    if not await _call(ctx.kube.crd_exists, KEDA_CRD):
        conditions.set(
            "Autoscaling",
            False,
            "KedaNotInstalled",
            f"spec.autoscaling.engine is keda but the CRD {KEDA_CRD} is not installed; "
            "install KEDA or use engine: builtin",
        )
        return
    scaled = autoscale.render_scaled_object(
        agent, ctx.config.keda_redis_address, render.owner_reference(agent)
    )
    await _call(ctx.kube.apply, scaled)
    conditions.set("Autoscaling", True, "KedaScaledObject", "replicas are managed by KEDA ScaledObject")


async def _budget(
    ctx: Context,
    body: dict[str, Any],
    agent: AgentDeployment,
    view: AgentPolicyView,
    status: dict[str, Any],
    conditions: render.Conditions,
) -> None:
    namespace, name = str(agent.metadata.namespace), str(agent.metadata.name)
    try:
        usage = await budget.read_usage(ctx.redis, namespace, name, view.budget)
    except RedisError as exc:
        logger.warning("cannot read budget usage of %s/%s: %s", namespace, name, exc)
        return
    reported = usage.model_dump(by_alias=True, exclude_none=True, mode="json")
    # The status is merge-patched, which keeps what it does not name: a budget lifted (by an
    # exception, or a policy deleted) must take its "remaining" fields with it.
    stored = stored_status(ctx, (namespace, name), body)
    before = stored.get("usage") or {}
    reported.update(
        {k: None for k in ("remainingTokens", "remainingCostUSD") if k in before and k not in reported}
    )
    status["usage"] = reported
    message = budget.exceeded(usage, view.budget, budget.smallest_call_tokens(agent.spec.system_prompt))
    if message is None:
        conditions.set("BudgetExceeded", False, "WithinBudget", "spend is within the budget")
    else:
        conditions.set("BudgetExceeded", True, "BudgetSpent", message)
    if "BudgetExceeded" in conditions.flipped:
        existed = any(c.get("type") == "BudgetExceeded" for c in stored.get("conditions") or [])
        if message is not None:
            await _event(ctx, body, "Warning", "BudgetExceeded", message)
        elif existed:
            await _event(ctx, body, "Normal", "BudgetAvailable", "spend is back within the budget")


#: PolicyViolation reasons: True while the agent breaks an Enforce policy, False once it does not.
VIOLATION_REASON = "EnforcePolicyViolated"
COMPLIANT_REASON = "Compliant"


async def _policy_violation(
    ctx: Context, body: dict[str, Any], key: tuple[str, str], conditions: render.Conditions
) -> None:
    """``PolicyViolation`` from the background scan's last verdict (:mod:`controller.scan`).

    Its message is the admission messages joined, each naming the field, the value, the limit and
    the policy.  An Event is posted when the condition turns True or its message changes, and when
    it clears.  Before the first scan of the agent the condition is left as it is.
    """
    found = ctx.scans.violations.get(key)
    if found is None:
        return
    previous = dict(conditions.get("PolicyViolation") or {})  # set() updates the stored item
    if found:
        message = "; ".join(found)
        conditions.set("PolicyViolation", True, VIOLATION_REASON, message)
        if previous.get("status") != "True" or previous.get("message") != message:
            await _event(ctx, body, "Warning", "PolicyViolation", message)
        return
    conditions.set("PolicyViolation", False, COMPLIANT_REASON, "no Enforce policy is violated")
    if previous.get("status") == "True":
        await _event(
            ctx, body, "Normal", "PolicyCompliant", "the agent no longer violates any Enforce policy"
        )


async def _autoscale(
    ctx: Context, body: dict[str, Any], agent: AgentDeployment, view: AgentPolicyView
) -> None:
    autoscaling = agent.spec.autoscaling
    if autoscaling is None or autoscaling.engine != "builtin":
        return
    namespace, name = str(agent.metadata.namespace), str(agent.metadata.name)
    try:
        depth = await autoscale.queue_depth(ctx.redis, namespace, name)
    except RedisError as exc:
        logger.warning("cannot read queue depth of %s/%s: %s", namespace, name, exc)
        return
    desired = autoscale.desired_replicas(depth, autoscaling, view.replicas_max)
    memory = ctx.scale_memory.setdefault((namespace, name), autoscale.ScaleMemory())
    target = autoscale.next_replicas(agent.spec.replicas, desired, autoscaling, memory, time.monotonic())
    if target is None:
        return
    try:
        await _call(ctx.kube.scale_agent, namespace, name, target)
    except ApiError as exc:
        # A webhook denial lands here: report it, try again next tick.
        await _event(ctx, body, "Warning", "ScaleFailed", f"scaling to {target} failed: {api_message(exc)}")
        return
    ceiling = (
        f", policy ceiling {view.replicas_max} ({view.replicas_max_source})" if view.replicas_max else ""
    )
    await _event(
        ctx,
        body,
        "Normal",
        "Scaled",
        f"scaled from {agent.spec.replicas} to {target}: lag {depth.lag} + pending {depth.pending}, "
        f"target {autoscaling.target_pending_per_replica} per replica, "
        f"range {autoscaling.min_replicas}..{autoscaling.max_replicas}{ceiling}",
    )
