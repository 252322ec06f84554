"""Background scans: every AgentDeployment and AgentPipeline judged again by the admission engine.

Admission judges a change; a scan judges what is stored, against the policies and exceptions in
force *now*, with the same engine and the same messages (:func:`policies.results.evaluate`).  A
namespace is scanned (:func:`request`, from :mod:`controller.handlers`)

* when something its verdicts depend on changes: a ClusterAgentPolicy (every namespace), an
  AgentPolicy or AgentPolicyException of the namespace, its labels, an agent or pipeline created,
  deleted or changed in spec or labels (:func:`observe`).  Requests are debounced: the scan starts
  ``scan_debounce`` seconds after the last of a burst, at most ``scan_debounce_max`` seconds after
  the first;
* at the earliest ``expiresAt`` of the namespace's exceptions still in force, so an expired
  exception is reported as failing at once, without a restart and without waiting for the period;
* every ``scan_interval`` seconds (``--scan-interval``).

The last two are noticed by :func:`tick`, which every agent's kopf timer calls each second.  Scans
are started only from kopf handlers, which kopf stops while the operator is paused, so under
peering only the leader scans.  (A kopf daemon per Namespace would have been simpler, but kopf
puts a finalizer on every object a daemon runs for, and a controller that is down must never
hold up the deletion of a namespace.)

A scan writes the namespace's one OpenReports ``Report`` (:mod:`controller.reports`) with
server-side apply, only when it changed, and deletes it when the namespace has no agent or
pipeline left.  The ``budget`` rule is judged by the engine against the spend read from Redis at
the scan (:mod:`controller.budget`, as for ``status.usage``); an unreadable spend is an ``error``.
Each agent's Enforce violations go to ``ctx.scans.violations``, from which the agent's next status
refresh (its timer, every ``--resync-seconds``) sets the ``PolicyViolation`` condition and posts the
Event (:mod:`controller.agents`): one writer of the status, and no burst of status writes when a
policy change touches every agent at once.

Reports are written on a thread pool of their own (:data:`REPORT_WRITERS` threads), so a policy
change, which also re-renders every agent's children on the shared pool, does not queue the
reports behind thousands of server-side applies.

Every scan is counted in :mod:`controller.metrics`: its rule results (cause ``background_scan``),
its duration and outcome, and the number of reports stored.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis.exceptions import RedisError

import kube
from contracts import reports as report_contract
from contracts.resources import AgentDeployment, AgentPipeline, Budget
from controller import agents, budget, debounce, reports
from controller.context import Context
from policies.results import SEVERITY, RuleResult, evaluate

logger = logging.getLogger("controller.scan")
T = TypeVar("T")

SCANNED_KINDS = (AgentDeployment.KIND, AgentPipeline.KIND)
#: The rule of budget results: judged from the spend in Redis, not by admission.
BUDGET_RULE = "budget"
ENFORCE_SEVERITY = SEVERITY["Enforce"]
#: After a failed scan (API server or Redis unreachable), try again this soon.
RETRY_SECONDS = 5.0
#: Threads writing reports: a policy change rewrites every namespace's report at once, while the
#: shared pool's 16 threads re-render every agent's children; the API server shares its time
#: between requests in flight, so the reports get a fair part of it.
REPORT_WRITERS = 8
#: A scan due at an exception's expiry starts this long after it, so the exception has expired.
EXPIRY_MARGIN_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class ScanOutcome:
    """What one namespace scan did (logged; ``benchmarks/bench_scan.py`` reads the log line)."""

    namespace: str
    objects: int
    results: int
    report_bytes: int
    written: bool
    #: Agents whose violations changed (their next status refresh updates PolicyViolation).
    violations_changed: int
    #: Judging every object and writing the report.
    seconds: float


def essence(body: Mapping[str, Any]) -> dict[str, Any]:
    """The object as the engine reads it: no status, no server fields (prompts are shared, not copied)."""
    return agents.essence(dict(body))


def observe(ctx: Context, body: Mapping[str, Any], *, deleted: bool) -> bool:
    """Keep the scan's view of an agent or pipeline current.  True when its verdict may have
    changed (created, deleted, a new generation or new labels), not on status writes."""
    meta = body.get("metadata") or {}
    namespace, name, kind = meta.get("namespace"), meta.get("name"), body.get("kind")
    if not namespace or not name or kind not in SCANNED_KINDS:
        return False
    objects = ctx.scans.objects.setdefault(namespace, {})
    key = (str(kind), str(name))
    if deleted:
        if objects.pop(key, None) is None:
            return False
        ctx.scans.forget_agent_keys()
        return True
    before = objects.get(key)
    current = essence(body)
    objects[key] = current
    if before is None:
        ctx.scans.forget_agent_keys()
        return True
    return _judged_part(before) != _judged_part(current)


def indexed(ctx: Context, body: Mapping[str, Any]) -> None:
    """:func:`observe` for kopf's index handlers, which run on every replica and before the event
    handlers of the same change: a change is only noted, and :func:`changed` requests the scan."""
    if observe(ctx, body, deleted=False):
        ctx.scans.pending.add(str((body.get("metadata") or {}).get("namespace")))


def changed(ctx: Context, body: Mapping[str, Any], *, deleted: bool) -> None:
    """:func:`observe`, and a scan of the namespace when the verdict may have changed (here or in
    the index handler just before) or the namespace was never scanned since the start (for kopf's
    event handlers)."""
    namespace = str((body.get("metadata") or {}).get("namespace") or "")
    if not namespace:
        return
    if (
        observe(ctx, body, deleted=deleted)
        or namespace in ctx.scans.pending
        or namespace not in ctx.scans.namespaces
    ):
        request(ctx, namespace)


def _judged_part(obj: Mapping[str, Any]) -> tuple[Any, ...]:
    meta = obj.get("metadata") or {}
    return (meta.get("uid"), meta.get("generation"), meta.get("labels"))


def request(ctx: Context, namespace: str) -> None:
    """Scan ``namespace`` soon (debounced); call only from kopf handlers (see the module docstring)."""
    if ctx.scans.closed:
        return  # the operator is stopping: handlers still running start nothing new
    ctx.scans.pending.discard(namespace)
    state = ctx.scans.namespace(namespace)
    state.requested = True
    state.wake.set()
    if state.task is None or state.task.done():
        state.task = asyncio.create_task(_scans(ctx, namespace), name=f"policy scan {namespace}")


def request_all(ctx: Context) -> None:
    """Scan every namespace that has (or had) an agent or pipeline."""
    for namespace in list(ctx.scans.objects):
        request(ctx, namespace)


def tick(ctx: Context, namespace: str) -> None:
    """Called each second by every agent's timer: a scan when the period or an expiry is due."""
    state = ctx.scans.namespace(namespace)
    if not state.requested and asyncio.get_running_loop().time() >= state.due:
        request(ctx, namespace)


async def cancel_all(ctx: Context) -> None:
    ctx.scans.closed = True
    tasks = [s.task for s in ctx.scans.namespaces.values() if s.task is not None and not s.task.done()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    if ctx.scans.writers is not None:
        ctx.scans.writers.shutdown(wait=False, cancel_futures=True)


async def _scans(ctx: Context, namespace: str) -> None:
    """Debounce, scan, and again while requests keep coming; then end (the next request restarts it)."""
    state = ctx.scans.namespace(namespace)
    config = ctx.config
    loop = asyncio.get_running_loop()
    while state.requested:
        await debounce.settle(state.wake, config.scan_debounce, config.scan_debounce_max)
        state.requested = False
        try:
            outcome = await scan_namespace(ctx, namespace)
        except (kube.ApiError, OSError) as exc:
            ctx.metrics.scan_failed()
            logger.warning(
                "policy scan of namespace %s failed, retrying in %g s: %s", namespace, RETRY_SECONDS, exc
            )
            state.due = loop.time() + RETRY_SECONDS
            state.requested = False  # the retry comes from tick() at ``due``
            return
        state.due = min(loop.time() + config.scan_interval, _expiry_deadline(ctx, namespace, loop.time()))
        ctx.metrics.scanned(
            outcome.seconds, sum(1 for s in ctx.scans.namespaces.values() if s.report is not None)
        )
        logger.log(
            logging.INFO if outcome.written or outcome.violations_changed else logging.DEBUG,
            "policy scan of namespace %s: %d objects, %d results, report %d bytes %s, %.3f s; "
            "%d agents' violations changed",
            outcome.namespace,
            outcome.objects,
            outcome.results,
            outcome.report_bytes,
            "written" if outcome.written else "unchanged",
            outcome.seconds,
            outcome.violations_changed,
        )


def _expiry_deadline(ctx: Context, namespace: str, loop_now: float) -> float:
    """Loop time of the earliest expiry of an exception of ``namespace`` still in force (else inf)."""
    now = datetime.now(UTC)
    upcoming = [e.spec.expires_at for e in ctx.policies.exceptions_in(namespace) if e.spec.expires_at > now]
    if not upcoming:
        return float("inf")
    return loop_now + (min(upcoming) - now).total_seconds() + EXPIRY_MARGIN_SECONDS


async def scan_namespace(ctx: Context, namespace: str) -> ScanOutcome:
    """Judge every agent and pipeline of ``namespace`` and write its report."""
    started = time.perf_counter()
    now = datetime.now(UTC)
    objects = dict(ctx.scans.objects.get(namespace, {}))
    policies = ctx.policies.policy_set(ctx.scans.agent_keys())
    namespace_labels = ctx.policies.namespace_labels.get(namespace, {})
    items = sorted(objects.items())
    usages, unread = await _usages(
        ctx, namespace, [obj for (kind, _), obj in items if kind == AgentDeployment.KIND], now
    )
    judged: list[reports.Judged] = []
    changed = 0
    for count, ((kind, name), obj) in enumerate(items):
        if kind == AgentDeployment.KIND:
            usage = usages.get(name)
            judged_obj = obj if usage is None else {**obj, "status": {"usage": usage}}
            results = evaluate(judged_obj, policies, namespace_labels=namespace_labels, now=now)
            if unread:
                results = [
                    _unread(r, unread) if r.rule == BUDGET_RULE and not r.exception else r for r in results
                ]
            key = (namespace, name)
            found = violations(results)
            if ctx.scans.violations.get(key) != found:
                ctx.scans.violations[key] = found
                changed += 1
        else:
            results = evaluate(obj, policies, namespace_labels=namespace_labels, now=now)
        ctx.metrics.scan_results(results, kind, namespace)
        judged.append((reports.Subject.of(obj), results))
        if count % 50 == 49:
            await asyncio.sleep(0)  # a large namespace does not hold kopf's event loop for long
    written, size, results_count = await _write_report(ctx, namespace, judged, now)
    return ScanOutcome(
        namespace=namespace,
        objects=len(objects),
        results=results_count,
        report_bytes=size,
        written=written,
        violations_changed=changed,
        seconds=time.perf_counter() - started,
    )


def violations(results: list[RuleResult]) -> tuple[str, ...]:
    """The messages of what breaks an Enforce policy, unexcused (what ``PolicyViolation`` says):
    ``fail`` at the Enforce severity (Audit failures are ``low``; an excused one is a ``warn``),
    and the engine's own checks, which admission enforces whatever the policies.

    Budgets are left out: an agent over budget has its own condition, ``BudgetExceeded``.
    """
    return tuple(
        r.message
        for r in results
        if r.result == "fail" and r.severity == ENFORCE_SEVERITY and r.rule != BUDGET_RULE
    )


async def _usages(
    ctx: Context, namespace: str, agents: list[dict[str, Any]], now: datetime
) -> tuple[dict[str, dict[str, Any]], str]:
    """Each agent's ``status.usage`` read from Redis now, for the engine's ``budget`` rule: the spend
    of its effective budget at ``now`` (the one the runtime enforces, without what an exception
    excuses), as :mod:`controller.budget` reads it for the status, all in one round trip.  Also why
    the spend could not be read ("" when it was)."""
    wanted: list[tuple[str, str, Budget]] = []
    for obj in agents:
        meta = obj.get("metadata") or {}
        name = str(meta.get("name"))
        effective = ctx.policies.effective(namespace, meta.get("labels") or {}, name=name, now=now).budget
        if effective is not None:
            wanted.append((namespace, name, effective.to_budget()))
    try:
        usages = await budget.read_usages(ctx.redis, wanted)
    except RedisError as exc:
        return {}, f"cannot read the spend from Redis: {exc}"
    return {name: usage.to_k8s() for (_ns, name, _b), usage in zip(wanted, usages, strict=True)}, ""


def _unread(result: RuleResult, why: str) -> RuleResult:
    return dataclasses.replace(result, result="error", message=why)


async def _call(ctx: Context, fn: Callable[..., T], *args: Any) -> T:
    """A blocking Kubernetes call on the report writers' own threads."""
    writers = ctx.scans.writers
    if writers is None:
        writers = ctx.scans.writers = ThreadPoolExecutor(REPORT_WRITERS, thread_name_prefix="reports")
    return await asyncio.get_running_loop().run_in_executor(writers, fn, *args)


async def _write_report(
    ctx: Context, namespace: str, judged: list[reports.Judged], now: datetime
) -> tuple[bool, int, int]:
    """Write (or delete) the namespace's report when it changed: (written, bytes, results)."""
    state = ctx.scans.namespace(namespace)
    if not await _reports_served(ctx):
        return False, 0, sum(len(r) for _s, r in judged)
    if not state.report_read:
        stored = await _call(ctx, ctx.kube.get_report, namespace)
        state.report = reports.comparable(stored)
        state.report_read = True
    if not judged:
        if state.report is not None:
            await _call(ctx, ctx.kube.delete_report, namespace)
            state.report = None
            return True, 0, 0
        return False, 0, 0
    report = reports.build_report(namespace, judged, now=now, previous=state.report)
    size = reports.size(report)
    if report == state.report:
        return False, size, len(report["results"])
    try:
        await _call(ctx, ctx.kube.apply, report)
    except kube.ApiError as exc:
        if exc.status == 404:  # the CRD was removed: check (and say so) again before the next write
            ctx.scans.reports_served = None
        raise
    state.report = report
    return True, size, len(report["results"])


async def _reports_served(ctx: Context) -> bool:
    """Whether the cluster serves OpenReports Reports; checked until it does (installed later)."""
    if ctx.scans.reports_served:
        return True
    served = await _call(ctx, ctx.kube.crd_exists, report_contract.CRD_NAME)
    if not served and ctx.scans.reports_served is None:
        logger.warning(
            "the CRD %s is not installed: policy reports are not written (conditions and events are); "
            "install deploy/crds/openreports.yaml",
            report_contract.CRD_NAME,
        )
    ctx.scans.reports_served = served
    return served
