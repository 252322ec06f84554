"""The effective policy: the strictest combination of every policy that matches an object.

Algorithm (documented for users in ``docs/policies.md``):

1. *Matching.*  A ClusterAgentPolicy matches when its ``selector`` matches the object's labels
   and its ``namespaceSelector`` matches the labels of the object's namespace; an AgentPolicy
   matches objects of its own namespace whose labels its ``selector`` matches.  An absent
   selector matches everything.
2. *Ceilings and floors.*  For each bounded value (``limits.<name>.max``, ``replicas.max``,
   ``prompts.maxBytes``, ``pipelines.maxSteps`` and the floor ``probes.minIntervalSeconds``) the
   strictest value is kept *per mode*, because a stricter Warn policy must not hide a looser
   Enforce one: a value above both is denied by the Enforce policy, a value between them only
   draws the warning.  A Warn or Audit bound no stricter than a more severe one can never fire
   on its own and is dropped.
3. *Defaults.*  A missing limit takes the default of the most specific tier that has one
   (AgentPolicies of the namespace before ClusterAgentPolicies); within a tier the smallest
   default wins.  A default above any matching ceiling is lowered to that ceiling, so a filled-in
   value never violates a policy by itself.
4. *Model allow-lists* do not merge into one list: the model must match *every* matching list.
5. *Ties* are broken by the policy's ``Kind/name``, and matching policies are sorted before
   folding, so the order in which the watch cache delivers policies never changes a decision.

Everything here is computed once per (policy set, namespace, labels, namespace labels) and cached
on the policy set's index; a policy change makes a new policy set and therefore a new cache.

Exceptions: for an object an AgentPolicyException covers, the effective policy is folded with the
excused (policy, rule) pairs left out of those policies (:meth:`PolicyIndex.effective`'s
``excused``), so a looser policy the excused one hid still applies.  Rules are named by the policy
field that sets them (:data:`contracts.resources.POLICY_RULES`); :data:`RULE_OF_BOUND` maps each
bounded value to its rule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from contracts.resources import (
    AgentPolicy,
    Budget,
    BudgetPeriod,
    BudgetScope,
    ClusterAgentPolicy,
    Limits,
    PolicyMode,
    PolicySpec,
)
from policies.selectors import CompiledSelector, compile_selector

#: Most severe first; the order in which bounds are checked.
MODES: tuple[PolicyMode, ...] = ("Enforce", "Warn", "Audit")

LIMIT_NAMES: tuple[str, ...] = Limits.NAMES
#: limit name (``maxTokensPerCall``) -> attribute (``max_tokens_per_call``) on Limits and LimitRules.
LIMIT_ATTRS: dict[str, str] = Limits.fields_by_alias()


def _limit_max(attr: str) -> Callable[[PolicySpec], int | None]:
    def read(spec: PolicySpec) -> int | None:
        rule = getattr(spec.limits, attr, None) if spec.limits is not None else None
        return rule.max if rule is not None else None

    return read


#: Bounded values: policy field path -> (how to read it from a policy spec, True if it is a floor).
_BOUNDS: dict[str, tuple[Callable[[PolicySpec], int | None], bool]] = {
    **{f"limits.{name}.max": (_limit_max(attr), False) for name, attr in LIMIT_ATTRS.items()},
    "replicas.max": (lambda s: s.replicas.max if s.replicas else None, False),
    "prompts.maxBytes": (lambda s: s.prompts.max_bytes if s.prompts else None, False),
    "pipelines.maxSteps": (lambda s: s.pipelines.max_steps if s.pipelines else None, False),
    "probes.minIntervalSeconds": (lambda s: s.probes.min_interval_seconds if s.probes else None, True),
}
BOUND_KEYS: tuple[str, ...] = tuple(_BOUNDS)
#: bound key -> the rule (``contracts.resources.POLICY_RULES``) that sets it: ``limits.X.max`` is
#: rule ``limits.X``; every other bound is its own rule.
RULE_OF_BOUND: dict[str, str] = {
    key: key.removesuffix(".max") if key.startswith("limits.") else key for key in _BOUNDS
}


class Bound(NamedTuple):
    """One policy value and who set it: ``value``, ``source`` (``Kind/name``), ``mode``."""

    value: int
    source: str
    mode: PolicyMode


class AllowList(NamedTuple):
    patterns: tuple[str, ...]
    source: str
    mode: PolicyMode


class PolicyRef(NamedTuple):
    source: str
    mode: PolicyMode


@dataclass(frozen=True, slots=True)
class EffectiveBudget:
    """The strictest token and cost budget of one (period, scope) among the matching policies."""

    period: BudgetPeriod
    scope: BudgetScope
    tokens: int | None
    tokens_source: str | None
    cost_usd: float | None
    cost_source: str | None

    @property
    def source(self) -> str:
        """The policies that set this budget, ``Kind/name`` joined by ``+`` when two contributed."""
        names = dict.fromkeys(s for s in (self.tokens_source, self.cost_source) if s)
        return "+".join(names)

    def to_budget(self) -> Budget:
        return Budget(period=self.period, scope=self.scope, tokens=self.tokens, cost_usd=self.cost_usd)


@dataclass(frozen=True, slots=True)
class EffectivePolicy:
    """The strictest of all policies matching one object, each value with the ``Kind/name`` that set it."""

    sources: tuple[str, ...] = ()
    #: limit name (``maxTokensPerCall``...) -> the default a missing limit is filled with.
    defaults: Mapping[str, Bound] = field(default_factory=dict)
    #: bound key (``limits.maxTokensPerCall.max``, ``replicas.max``...) -> strictest bound per mode,
    #: most severe mode first; each later bound is strictly stricter than the ones before it.
    ceilings: Mapping[str, tuple[Bound, ...]] = field(default_factory=dict)
    models_allowed: tuple[AllowList, ...] = ()
    change_reason_required: tuple[PolicyRef, ...] = ()
    budgets: tuple[EffectiveBudget, ...] = ()
    _model_memo: dict[str, tuple[AllowList, ...]] = field(default_factory=dict, repr=False, compare=False)

    def strictest(self, key: str) -> Bound | None:
        """The strictest bound of ``key`` whatever its mode (``None`` when no policy sets it)."""
        bounds = self.ceilings.get(key)
        return bounds[-1] if bounds else None

    @property
    def limits(self) -> dict[str, tuple[int | None, int | None, str]]:
        """limit name -> (default, strictest max, source of the max or else of the default)."""
        out: dict[str, tuple[int | None, int | None, str]] = {}
        for name in LIMIT_NAMES:
            default = self.defaults.get(name)
            ceiling = self.strictest(f"limits.{name}.max")
            if default is None and ceiling is None:
                continue
            source = ceiling.source if ceiling else default.source if default else ""
            out[name] = (default.value if default else None, ceiling.value if ceiling else None, source)
        return out

    @property
    def replicas_max(self) -> Bound | None:
        """``(value, source, mode)`` of the strictest ``replicas.max``; index 0 and 1 as a pair."""
        return self.strictest("replicas.max")

    @property
    def budget(self) -> EffectiveBudget | None:
        """The tightest-scoped budget: daily before monthly, per Agent before per Namespace."""
        return self.budgets[0] if self.budgets else None

    def disallowed_model(self, model: str) -> tuple[AllowList, ...]:
        """The allow-lists ``model`` matches none of, most severe first (memoised per model)."""
        hit = self._model_memo.get(model)
        if hit is None:
            hit = tuple(
                allow
                for allow in self.models_allowed
                if not any(fnmatch.fnmatchcase(model, p) for p in allow.patterns)
            )
            if len(self._model_memo) < 256:  # bounded: model names come from clients
                self._model_memo[model] = hit
        return hit


@dataclass(frozen=True, slots=True)
class PolicyEntry:
    """A policy reduced to what matching and folding need."""

    source: str
    mode: PolicyMode
    namespaced: bool
    namespace: str | None
    selector: CompiledSelector
    namespace_selector: CompiledSelector
    spec: PolicySpec
    #: Precomputed so folding touches only the values a policy sets: (bound key, value, is floor).
    bounds: tuple[tuple[str, int, bool], ...] = ()
    #: (limit name, default) for each limit default the policy sets.
    defaults: tuple[tuple[str, int], ...] = ()


def policy_source(policy: ClusterAgentPolicy | AgentPolicy) -> str:
    return f"{policy.KIND}/{policy.metadata.name or '<unnamed>'}"


def entry_of(policy: ClusterAgentPolicy | AgentPolicy) -> PolicyEntry:
    namespace_selector = (
        compile_selector(policy.spec.namespace_selector)
        if isinstance(policy, ClusterAgentPolicy)
        else compile_selector(None)
    )
    return PolicyEntry(
        source=policy_source(policy),
        mode=policy.spec.mode,
        namespaced=isinstance(policy, AgentPolicy),
        namespace=policy.metadata.namespace if isinstance(policy, AgentPolicy) else None,
        selector=compile_selector(policy.spec.selector),
        namespace_selector=namespace_selector,
        spec=policy.spec,
        bounds=tuple(
            (key, value, floor)
            for key, (read, floor) in _BOUNDS.items()
            if (value := read(policy.spec)) is not None
        ),
        defaults=tuple(
            (name, rule.default)
            for name, attr in LIMIT_ATTRS.items()
            if (rule := getattr(policy.spec.limits, attr, None) if policy.spec.limits else None) is not None
            and rule.default is not None
        ),
    )


def entry_rules(entry: PolicyEntry) -> frozenset[str]:
    """The rules ``entry``'s policy sets (a limit with only a default sets no rule: nothing to break)."""
    rules = {RULE_OF_BOUND[key] for key, _, _ in entry.bounds}
    spec = entry.spec
    if spec.models is not None and spec.models.allowed is not None:
        rules.add("models.allowed")
    if spec.prompts is not None and spec.prompts.require_change_reason:
        rules.add("prompts.requireChangeReason")
    if spec.budget is not None:
        rules.add("budget")
    return frozenset(rules)


def without_rules(entry: PolicyEntry, rules: frozenset[str]) -> PolicyEntry:
    """``entry`` with ``rules`` left out (what an exception excuses); limit defaults are kept."""
    update: dict[str, object] = {}
    spec = entry.spec
    if "models.allowed" in rules and spec.models is not None:
        update["models"] = None
    if "prompts.requireChangeReason" in rules and spec.prompts is not None:
        update["prompts"] = spec.prompts.model_copy(update={"require_change_reason": None})
    if "budget" in rules:
        update["budget"] = None
    return dataclasses.replace(
        entry,
        bounds=tuple(b for b in entry.bounds if RULE_OF_BOUND[b[0]] not in rules),
        spec=spec.model_copy(update=update) if update else spec,
    )


def fold(entries: Iterable[PolicyEntry]) -> EffectivePolicy:
    """Combine matching policies into the effective policy (see the module docstring)."""
    ordered = sorted(entries, key=lambda e: (e.namespaced, e.source))
    per_mode: dict[str, dict[PolicyMode, Bound]] = {}
    for entry in ordered:
        for key, value, floor in entry.bounds:
            by_mode = per_mode.setdefault(key, {})
            best = by_mode.get(entry.mode)
            if best is None or (value > best.value if floor else value < best.value):
                by_mode[entry.mode] = Bound(value, entry.source, entry.mode)
    ceilings: dict[str, tuple[Bound, ...]] = {}
    for key, by_mode in per_mode.items():
        floor = _BOUNDS[key][1]
        kept: list[Bound] = []
        for mode in MODES:
            bound = by_mode.get(mode)
            if bound is None:
                continue
            if not kept or (bound.value > kept[-1].value if floor else bound.value < kept[-1].value):
                kept.append(bound)
        ceilings[key] = tuple(kept)

    chosen: dict[str, Bound] = {}
    for tier in (True, False):  # namespaced AgentPolicies first: the most specific tier wins
        found: dict[str, Bound] = {}
        for entry in ordered:
            if entry.namespaced != tier:
                continue
            for name, default in entry.defaults:
                if name not in chosen and (name not in found or default < found[name].value):
                    found[name] = Bound(default, entry.source, entry.mode)
        chosen.update(found)
    defaults: dict[str, Bound] = {}
    for name in LIMIT_NAMES:
        if name not in chosen:
            continue
        ceiling = min((b.value for b in ceilings.get(f"limits.{name}.max", ())), default=None)
        pick = chosen[name]
        defaults[name] = (
            pick._replace(value=ceiling) if ceiling is not None and pick.value > ceiling else pick
        )

    allow_lists: dict[tuple[tuple[str, ...], PolicyMode], AllowList] = {}
    for entry in ordered:
        if entry.spec.models is not None and entry.spec.models.allowed is not None:
            patterns = tuple(sorted(set(entry.spec.models.allowed)))
            allow_lists.setdefault((patterns, entry.mode), AllowList(patterns, entry.source, entry.mode))
    severity = {mode: i for i, mode in enumerate(MODES)}
    models_allowed = tuple(sorted(allow_lists.values(), key=lambda a: (severity[a.mode], a.source)))

    reason = sorted(
        (
            PolicyRef(e.source, e.mode)
            for e in ordered
            if e.spec.prompts and e.spec.prompts.require_change_reason
        ),
        key=lambda r: (severity[r.mode], r.source),
    )

    return EffectivePolicy(
        sources=tuple(e.source for e in ordered),
        defaults=defaults,
        ceilings=ceilings,
        models_allowed=models_allowed,
        change_reason_required=tuple(reason[:1]),
        budgets=_fold_budgets(ordered),
    )


def _fold_budgets(ordered: list[PolicyEntry]) -> tuple[EffectiveBudget, ...]:
    groups: dict[tuple[BudgetPeriod, BudgetScope], list[tuple[Budget, str]]] = {}
    for entry in ordered:
        if entry.spec.budget is not None:
            b = entry.spec.budget
            groups.setdefault((b.period, b.scope), []).append((b, entry.source))
    out: list[EffectiveBudget] = []
    for (period, scope), items in groups.items():
        tokens = min(((b.tokens, s) for b, s in items if b.tokens is not None), default=None)
        cost = min(((b.cost_usd, s) for b, s in items if b.cost_usd is not None), default=None)
        out.append(
            EffectiveBudget(
                period=period,
                scope=scope,
                tokens=tokens[0] if tokens else None,
                tokens_source=tokens[1] if tokens else None,
                cost_usd=cost[0] if cost else None,
                cost_source=cost[1] if cost else None,
            )
        )
    period_rank = {"day": 0, "month": 1}
    scope_rank = {"Agent": 0, "Namespace": 1}
    return tuple(sorted(out, key=lambda b: (period_rank[b.period], scope_rank[b.scope])))


class PolicyIndex:
    """Per-policy-set precomputation: compiled selectors, policies grouped by namespace, and a
    bounded cache of effective policies keyed by what matching depends on."""

    __slots__ = ("_cache", "_excused_cache", "_single", "cluster", "namespaced")

    #: Label sets remembered per policy set; past that, the oldest is forgotten.
    CACHE_SIZE = 2048

    def __init__(self, cluster: Iterable[ClusterAgentPolicy], namespaced: Iterable[AgentPolicy]) -> None:
        self.cluster: tuple[PolicyEntry, ...] = tuple(sorted((entry_of(p) for p in cluster), key=_by_source))
        by_namespace: dict[str | None, list[PolicyEntry]] = {}
        for policy in namespaced:
            entry = entry_of(policy)
            by_namespace.setdefault(entry.namespace, []).append(entry)
        self.namespaced: dict[str | None, tuple[PolicyEntry, ...]] = {
            ns: tuple(sorted(entries, key=_by_source)) for ns, entries in by_namespace.items()
        }
        # A plain dict, not functools.lru_cache around a bound method: that made a reference
        # cycle, so every replaced policy set (and its cache) waited for a full collection.
        self._cache: dict[
            tuple[str | None, frozenset[tuple[str, str]], frozenset[tuple[str, str]]], EffectivePolicy
        ] = {}
        # Objects an exception covers are few: their own cache, so the common key stays small.
        self._excused_cache: dict[
            tuple[
                str | None,
                frozenset[tuple[str, str]],
                frozenset[tuple[str, str]],
                frozenset[tuple[str, str]],
            ],
            EffectivePolicy,
        ] = {}
        self._single: dict[str, EffectivePolicy] = {}

    def effective(
        self,
        namespace: str | None,
        labels: Mapping[str, str],
        namespace_labels: Mapping[str, str],
        excused: frozenset[tuple[str, str]] = frozenset(),
    ) -> EffectivePolicy:
        """The effective policy; ``excused``: (policy ``Kind/name``, rule) pairs to leave out."""
        if excused:
            return self._effective_excused(namespace, labels, namespace_labels, excused)
        key = (namespace, frozenset(labels.items()), frozenset(namespace_labels.items()))
        found = self._cache.get(key)
        if found is None:
            found = self._compute(*key)
            _remember(self._cache, key, found, self.CACHE_SIZE)
        return found

    def matching(
        self, namespace: str | None, labels: Mapping[str, str], namespace_labels: Mapping[str, str]
    ) -> list[PolicyEntry]:
        """The policies that apply to an object, cluster ones first, each group by ``Kind/name``."""
        matching = [
            e
            for e in self.cluster
            if e.namespace_selector.matches(namespace_labels) and e.selector.matches(labels)
        ]
        matching.extend(e for e in self.namespaced.get(namespace, ()) if e.selector.matches(labels))
        return matching

    def single(self, entry: PolicyEntry) -> EffectivePolicy:
        """The effective policy of ``entry`` alone (how rule results judge each policy by itself)."""
        key = f"{entry.namespace or ''}/{entry.source}"
        found = self._single.get(key)
        if found is None:
            found = self._single[key] = fold([entry])
        return found

    def _effective_excused(
        self,
        namespace: str | None,
        labels: Mapping[str, str],
        namespace_labels: Mapping[str, str],
        excused: frozenset[tuple[str, str]],
    ) -> EffectivePolicy:
        key = (namespace, frozenset(labels.items()), frozenset(namespace_labels.items()), excused)
        found = self._excused_cache.get(key)
        if found is None:
            rules_of: dict[str, set[str]] = {}
            for source, rule in excused:
                rules_of.setdefault(source, set()).add(rule)
            found = fold(
                without_rules(e, frozenset(rules_of[e.source])) if e.source in rules_of else e
                for e in self.matching(namespace, labels, namespace_labels)
            )
            _remember(self._excused_cache, key, found, self.CACHE_SIZE)
        return found

    def cluster_policies_for_namespace(self, namespace_labels: Mapping[str, str]) -> tuple[PolicyEntry, ...]:
        """Cluster policies that can apply somewhere in a namespace (agent selectors ignored)."""
        return tuple(e for e in self.cluster if e.namespace_selector.matches(namespace_labels))

    def _compute(
        self, namespace: str | None, labels: frozenset[tuple[str, str]], ns_labels: frozenset[tuple[str, str]]
    ) -> EffectivePolicy:
        return fold(self.matching(namespace, dict(labels), dict(ns_labels)))


def _remember(cache: dict[Any, EffectivePolicy], key: Any, value: EffectivePolicy, size: int) -> None:
    if len(cache) >= size:
        # First in, first out; another thread may have changed it meanwhile.
        with contextlib.suppress(KeyError, StopIteration, RuntimeError):
            del cache[next(iter(cache))]
    cache[key] = value


def _by_source(entry: PolicyEntry) -> str:
    return entry.source
