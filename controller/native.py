"""Native admission (issue 11, ``python -m controller --native-admission``): the generated
ValidatingAdmissionPolicies and the webhooks' routing, kept in step with the policies.

:func:`policies.native.generate` compiles the ClusterAgentPolicies, AgentPolicies and
AgentPolicyExceptions of the :class:`~controller.policy.PolicyCache` into VAPs, their bindings and
the two webhooks' ``matchConditions`` (docs/native-admission.md).  One regeneration makes the
cluster match it, in an order that never leaves a request without an evaluator:

1. **widen**: where a webhook's condition is to change, OR the new one into the old one first;
2. **apply** (server-side, field manager ``agentops-controller``) every generated object that
   differs from what this process last applied, VAPs before bindings;
3. **prune**: list by :data:`~policies.native.GENERATED_SELECTOR` and delete what is no longer
   generated, bindings first.  Labels, not owner references to the policies: a cluster-scoped VAP
   cannot be owned by a namespaced AgentPolicy, and a policy deleted while the controller was down
   leaves no event;
4. **narrow**: set the condition exactly, on every webhook of the two configurations that matches
   AgentDeployments (a JSON patch conditional on ``resourceVersion``).

When (:func:`request`, from :mod:`controller.handlers`, debounced by ``native_debounce`` and
``native_debounce_max``): on every policy, exception and namespace event, which includes kopf's
initial listing at start-up; on events of the two webhook configurations (a re-apply of the
manifests resets their ``matchConditions``: they are set again); and when a generated object is
changed or deleted by someone else (:func:`observed`: re-applied) or an unknown one appears
(pruned).  At the next exception expiry (``NativeAdmission.next_change``) through :func:`tick`,
which every agent's timer calls each second, as for the background scans: without agents a late
regeneration only keeps the expired exception's agents routed to the webhook, which already
counts the exception as expired.  Only the leader regenerates (kopf runs handlers on the leader
only; see :mod:`controller.scan`).  A failure is logged and retried with backoff; it never stops
the operator.

Every generated object is owned by the ValidatingWebhookConfiguration (``--webhook-configuration``,
cluster-scoped like them): uninstalling the webhooks (``kubectl delete -k``, ``helm uninstall``)
garbage-collects them, and while that configuration is missing the controller generates nothing
and deletes what it generated, so a controller still running during an uninstall leaves nothing.

Turning it off without uninstalling is :func:`withdraw`'s (``agentops uninstall --crds`` or
``--native-admission``, run once no controller with ``--native-admission`` is left): the webhooks'
condition removed first, then every generated object.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import kube
from contracts.resources import GROUP
from controller import debounce
from controller.context import Context, NativeState
from controller.render import FIELD_MANAGER
from policies.native import GENERATED_SELECTOR, WEBHOOK_CONDITION_NAME, NativeAdmission, Options, generate

logger = logging.getLogger("controller.native")

ADMISSION = "admissionregistration.k8s.io/v1"
POLICY_KIND = "ValidatingAdmissionPolicy"
BINDING_KIND = "ValidatingAdmissionPolicyBinding"
PLURALS = {POLICY_KIND: "validatingadmissionpolicies", BINDING_KIND: "validatingadmissionpolicybindings"}
MUTATING = "MutatingWebhookConfiguration"
VALIDATING = "ValidatingWebhookConfiguration"
WEBHOOK_PLURALS = {MUTATING: "mutatingwebhookconfigurations", VALIDATING: "validatingwebhookconfigurations"}
RETRY_MIN_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0
#: A regeneration due at an exception's expiry starts this long after it, so it has expired.
EXPIRY_MARGIN_SECONDS = 0.05
#: Reads and patches of a webhook configuration another writer keeps changing, before giving up.
PATCH_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one regeneration did (logged)."""

    objects: int
    applied: int
    deleted: int
    webhooks_patched: int
    seconds: float


# --- when ------------------------------------------------------------------------------------------


def request(ctx: Context) -> None:
    """Regenerate soon (debounced); call only from kopf handlers.  A no-op without native admission."""
    state = ctx.native
    if state is None or state.closed:
        return
    state.requested = True
    state.wake.set()
    if state.task is None or state.task.done():
        state.task = asyncio.create_task(_regenerations(ctx, state), name="native admission")


def tick(ctx: Context) -> None:
    """Called each second by every agent's timer: a regeneration when an exception's expiry is due."""
    state = ctx.native
    if state is not None and not state.requested and asyncio.get_running_loop().time() >= state.due:
        request(ctx)


def observed(ctx: Context, body: Mapping[str, Any], *, deleted: bool) -> None:
    """A generated VAP or binding changed: regenerate unless the change is our own write."""
    state = ctx.native
    if state is None:
        return
    meta = body.get("metadata") or {}
    key = (str(body.get("kind")), str(meta.get("name")))
    applied = state.applied.get(key)
    if applied is None:
        if not deleted:
            state.pruned = None  # not ours (yet): a leftover, unless it is about to be generated
            request(ctx)
        return
    # The generation moves with the spec only: the API server's own status writes (a VAP's
    # typeChecking) do not count as a change.
    if deleted or str(meta.get("generation")) != applied[1]:
        # Someone else's change: apply ours again (pop: the regeneration thread may prune it meanwhile).
        state.applied.pop(key, None)
        request(ctx)


async def cancel(ctx: Context) -> None:
    state = ctx.native
    if state is None:
        return
    state.closed = True
    if state.task is not None and not state.task.done():
        state.task.cancel()
        await asyncio.gather(state.task, return_exceptions=True)


async def _regenerations(ctx: Context, state: NativeState) -> None:
    """Debounce, regenerate, and again while requests keep coming (retrying failures); then end."""
    loop = asyncio.get_running_loop()
    backoff = RETRY_MIN_SECONDS
    while state.requested:
        await debounce.settle(state.wake, ctx.config.native_debounce, ctx.config.native_debounce_max)
        state.requested = False
        try:
            outcome, native, now = await regenerate(ctx)
        except Exception as exc:  # never let a failure (API, RBAC, a bug) stop the operator
            ctx.metrics.native_failed()
            logger.warning(
                "native admission: regeneration failed, retrying in %g s: %s: %s",
                backoff,
                type(exc).__name__,
                exc,
            )
            state.requested = True
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RETRY_MAX_SECONDS)
            continue
        backoff = RETRY_MIN_SECONDS
        ctx.metrics.native_regenerated(outcome.seconds, outcome.objects)
        state.due = (
            float("inf")
            if native.next_change is None
            else loop.time() + (native.next_change - now).total_seconds() + EXPIRY_MARGIN_SECONDS
        )
        logger.log(
            logging.INFO if outcome.applied or outcome.deleted or outcome.webhooks_patched else logging.DEBUG,
            "native admission: %d generated objects, %d applied, %d deleted, %d webhook configurations "
            "patched, %.3f s",
            outcome.objects,
            outcome.applied,
            outcome.deleted,
            outcome.webhooks_patched,
            outcome.seconds,
        )


# --- what ------------------------------------------------------------------------------------------


async def regenerate(ctx: Context) -> tuple[Outcome, NativeAdmission, datetime]:
    """Generate from the policy cache now and make the cluster match (module docstring)."""
    assert ctx.native is not None
    started = time.perf_counter()
    now = datetime.now(UTC)
    native = generate(
        ctx.policies.policy_set(ctx.scans.agent_keys()),
        now=now,
        options=Options(namespaces=ctx.config.namespaces),
    )
    objects, applied, deleted, patched = await asyncio.to_thread(
        _sync, ctx.kube.api, ctx.native, native, ctx.config.webhook_configuration
    )
    outcome = Outcome(objects, applied, deleted, patched, time.perf_counter() - started)
    return outcome, native, now


def _sync(
    api: kube.Client, state: NativeState, native: NativeAdmission, configuration: str
) -> tuple[int, int, int, int]:
    """The four steps, blocking: (objects kept, objects applied, objects deleted, webhook patches)."""
    owner = _owner(api, configuration)
    if owner is None:
        # Our admission is not installed (yet), or being uninstalled: generated objects would
        # outlive it.  The configuration's creation is an event that brings the controller back.
        deleted = len(_delete_generated(api, keep=frozenset()))
        state.applied.clear()
        state.pruned = frozenset()
        return 0, 0, deleted, 0
    conditions = {MUTATING: native.mutating_condition, VALIDATING: native.validating_condition}
    patched = 0
    for kind, condition in conditions.items():
        patched += _set_condition(api, kind, configuration, functools.partial(_widened, wanted=condition))
    objects = sorted(
        (_owned(obj, owner) for obj in native.objects()), key=lambda obj: obj["kind"] != POLICY_KIND
    )  # stable: VAPs first
    wanted = frozenset((str(obj["kind"]), str(obj["metadata"]["name"])) for obj in objects)
    applied = 0
    for obj in objects:
        key = (str(obj["kind"]), str(obj["metadata"]["name"]))
        if key in state.applied and state.applied[key][0] == obj:
            continue
        written = api.apply(obj, field_manager=FIELD_MANAGER, force=True)
        state.applied[key] = (obj, str(written["metadata"].get("generation")))
        applied += 1
    deleted = 0
    if state.pruned != wanted:
        for key in _delete_generated(api, keep=wanted):
            state.applied.pop(key, None)
            deleted += 1
        state.pruned = wanted
    for kind, condition in conditions.items():
        patched += _set_condition(api, kind, configuration, functools.partial(_exactly, wanted=condition))
    return len(objects), applied, deleted, patched


def _exactly(_current: str | None, wanted: str) -> str:
    return wanted


def _owner(api: kube.Client, configuration: str) -> dict[str, Any] | None:
    """An owner reference to our ValidatingWebhookConfiguration, or None when it is missing."""
    found = api.get(kube.path(ADMISSION, WEBHOOK_PLURALS[VALIDATING], configuration), metadata_only=True)
    if found is None:
        return None
    meta = found["metadata"]
    return {"apiVersion": ADMISSION, "kind": VALIDATING, "name": meta["name"], "uid": meta["uid"]}


def _owned(obj: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """``obj`` owned by the webhook configuration, so the garbage collector deletes it with the
    install's admission (``kubectl delete -k``, ``helm uninstall``): both are cluster-scoped."""
    return {**obj, "metadata": {**obj["metadata"], "ownerReferences": [owner]}}


# --- turning it off ----------------------------------------------------------------------------


def withdraw(api: kube.Client, configuration: str) -> tuple[int, list[str]]:
    """Undo native admission, for when no controller runs it any more (``agentops uninstall``):
    remove our ``matchConditions`` entry from the two webhook configurations, so the webhook is
    called for everything it matches again, and only then delete every generated binding and VAP
    (bindings first).  In that order no request is ever left to neither; left as they are, the
    generated policies would keep judging with the policies of the day they were last written,
    and a narrowed webhook would leave their share to nobody once they are gone.

    Returns (webhook configurations patched, ``Kind/name`` of each object deleted).
    """
    patched = sum(_patch_configuration(api, kind, configuration, release_patch) for kind in WEBHOOK_PLURALS)
    return patched, [f"{kind}/{name}" for kind, name in _delete_generated(api, keep=frozenset())]


def _delete_generated(api: kube.Client, keep: frozenset[tuple[str, str]]) -> list[tuple[str, str]]:
    """Delete every generated binding, then VAP (a binding never outlives its policy), but those
    in ``keep``; the (kind, name) of each one deleted."""
    deleted: list[tuple[str, str]] = []
    for kind in (BINDING_KIND, POLICY_KIND):
        path = kube.path(ADMISSION, PLURALS[kind])
        for item in api.list_items(path, label_selector=GENERATED_SELECTOR, metadata_only=True):
            name = str(item["metadata"]["name"])
            if (kind, name) not in keep and api.delete(f"{path}/{name}"):
                deleted.append((kind, name))
    return deleted


def release_patch(configuration: Mapping[str, Any]) -> list[dict[str, Any]]:
    """JSON patch operations removing our condition from every webhook that has it (the others'
    conditions kept), conditional on the configuration's version; empty when none has it."""

    def rewrite(webhook: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        return None if condition_of(webhook) is None else _others(webhook)

    return _conditions_patch(configuration, rewrite)


def _widened(current: str | None, wanted: str) -> str | None:
    """During a change: the webhook is called when the old *or* the new condition holds.  No
    condition of ours yet means it is called for everything it matches: nothing to widen."""
    if current is None or current == wanted:
        return None
    return f"({current}) || ({wanted})"


def covers_agents(webhook: Mapping[str, Any]) -> bool:
    """Whether a webhook of a configuration is called for AgentDeployments (ours are, and the
    namespaced half of a scoped test registration; the cluster-scoped half is not)."""
    for rule in webhook.get("rules") or ():
        groups = rule.get("apiGroups") or ()
        resources = rule.get("resources") or ()
        if (GROUP in groups or "*" in groups) and ("agentdeployments" in resources or "*" in resources):
            return True
    return False


def condition_of(webhook: Mapping[str, Any]) -> str | None:
    """Our ``matchConditions`` entry's expression on a webhook, if it has one."""
    for condition in webhook.get("matchConditions") or ():
        if condition.get("name") == WEBHOOK_CONDITION_NAME:
            return str(condition.get("expression"))
    return None


def condition_patch(
    configuration: Mapping[str, Any], want: Callable[[str | None], str | None]
) -> list[dict[str, Any]]:
    """JSON patch operations setting our condition to ``want(current)`` (``None``: leave it) on
    every webhook that covers AgentDeployments, conditional on the configuration's version."""

    def rewrite(webhook: Mapping[str, Any]) -> list[dict[str, Any]] | None:
        if not covers_agents(webhook):
            return None
        current = condition_of(webhook)
        expression = want(current)
        if expression is None or expression == current:
            return None
        return [*_others(webhook), {"name": WEBHOOK_CONDITION_NAME, "expression": expression}]

    return _conditions_patch(configuration, rewrite)


def _others(webhook: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A webhook's ``matchConditions`` that are not ours."""
    return [c for c in webhook.get("matchConditions") or () if c.get("name") != WEBHOOK_CONDITION_NAME]


def _conditions_patch(
    configuration: Mapping[str, Any],
    rewrite: Callable[[Mapping[str, Any]], list[dict[str, Any]] | None],
) -> list[dict[str, Any]]:
    """JSON patch operations giving each webhook the ``matchConditions`` ``rewrite(webhook)``
    returns (``None``: leave them; empty: none), each conditional on the webhook still being the
    one at that index and all on the configuration's version; empty when nothing changes."""
    ops: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or ()):
        conditions = rewrite(webhook)
        if conditions is None:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.get("name")})
        if conditions:
            ops.append({"op": "add", "path": f"/webhooks/{index}/matchConditions", "value": conditions})
        else:
            ops.append({"op": "remove", "path": f"/webhooks/{index}/matchConditions"})
    if not ops:
        return []
    version = configuration["metadata"]["resourceVersion"]
    return [{"op": "replace", "path": "/metadata/resourceVersion", "value": version}, *ops]


def _set_condition(api: kube.Client, kind: str, name: str, want: Callable[[str | None], str | None]) -> int:
    """1 when this call patched the configuration, 0 when it had nothing to change or is missing."""
    return _patch_configuration(api, kind, name, functools.partial(condition_patch, want=want))


def _patch_configuration(
    api: kube.Client, kind: str, name: str, operations: Callable[[Mapping[str, Any]], list[dict[str, Any]]]
) -> int:
    """Read the configuration and apply ``operations(it)``; 1 when patched, 0 when there was
    nothing to do or it is missing (not installed yet: its creation is an event, which brings the
    controller back).  A version conflict is read and tried again."""
    path = kube.path(ADMISSION, WEBHOOK_PLURALS[kind], name)
    for attempt in range(PATCH_ATTEMPTS):
        current = api.get(path)
        if current is None:
            logger.debug("native admission: %s/%s not found", kind, name)
            return 0
        ops = operations(current)
        if not ops:
            return 0
        try:
            api.json_patch(path, ops)
        except kube.ApiError as exc:
            # 409: changed since read (re-applied, caBundle injected); 422: webhooks reordered.
            if exc.status not in (409, 422) or attempt == PATCH_ATTEMPTS - 1:
                raise
            continue
        return 1
    return 0
