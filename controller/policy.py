"""The policies the controller needs: replica ceiling, budget and limit defaults of each agent, and
the policy set the background scan judges every agent and pipeline by.

Policies, exceptions and namespace labels are kept from kopf watches (no API call per reconcile);
the effective policy is computed by the shared policy engine, the same code the webhook uses, so
the autoscaler's ceiling and the runtime's budget are exactly what admission enforces, and a
background scan's verdict is the one admission would give.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from contracts.resources import AgentPolicy, AgentPolicyException, Budget, ClusterAgentPolicy
from policies.effective import LIMIT_ATTRS, EffectivePolicy, PolicyIndex
from policies.review import PolicySet


@dataclass(frozen=True, slots=True)
class AgentPolicyView:
    """What the controller uses of an agent's effective policy."""

    replicas_max: int | None = None
    replicas_max_source: str | None = None
    budget: Budget | None = None
    limit_defaults: Mapping[str, int] = field(default_factory=dict)


@dataclass
class PolicyCache:
    cluster: dict[str, ClusterAgentPolicy] = field(default_factory=dict)
    namespaced: dict[tuple[str, str], AgentPolicy] = field(default_factory=dict)
    namespace_labels: dict[str, dict[str, str]] = field(default_factory=dict)
    exceptions: dict[tuple[str, str], AgentPolicyException] = field(default_factory=dict)
    _index: PolicyIndex | None = None
    _set: PolicySet | None = None

    def update_policy(self, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata", {})
        kind = body.get("kind")
        obj = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
        try:
            if kind == "ClusterAgentPolicy":
                if deleted:
                    self.cluster.pop(meta["name"], None)
                else:
                    self.cluster[meta["name"]] = ClusterAgentPolicy.from_k8s(obj)
            elif kind == "AgentPolicy":
                key = (meta["namespace"], meta["name"])
                if deleted:
                    self.namespaced.pop(key, None)
                else:
                    self.namespaced[key] = AgentPolicy.from_k8s(obj)
        except ValidationError:
            # The webhook refuses invalid policies; one stored before it ran is ignored, not fatal.
            return
        self._index = None
        self._set = None

    def update_exception(self, body: Mapping[str, Any], deleted: bool) -> None:
        meta = body.get("metadata", {})
        key = (meta["namespace"], meta["name"])
        if deleted:
            self.exceptions.pop(key, None)
        else:
            obj = {k: body[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in body}
            try:
                self.exceptions[key] = AgentPolicyException.from_k8s(obj)
            except ValidationError:
                # Refused by the CRD schema and the webhook; one stored before they ran excuses nothing.
                self.exceptions.pop(key, None)
        self._set = None

    def exceptions_in(self, namespace: str) -> list[AgentPolicyException]:
        return [e for (ns, _name), e in self.exceptions.items() if ns == namespace]

    def policy_set(self, known_agents: frozenset[tuple[str, str]] = frozenset()) -> PolicySet:
        """Every policy and exception, as the engine takes them (rebuilt only after a change)."""
        current = self._set
        if current is None or current.known_agents is not known_agents:
            current = self._set = PolicySet(
                cluster=tuple(self.cluster.values()),
                namespaced=tuple(self.namespaced.values()),
                known_agents=known_agents,
                exceptions=tuple(self.exceptions.values()),
            )
        return current

    def update_namespace(self, name: str, labels: Mapping[str, str] | None) -> None:
        if labels is None:
            self.namespace_labels.pop(name, None)
        else:
            self.namespace_labels[name] = dict(labels)
        self._index = None

    def effective(self, namespace: str, labels: Mapping[str, str]) -> EffectivePolicy:
        if self._index is None:
            self._index = PolicyIndex(self.cluster.values(), self.namespaced.values())
        return self._index.effective(namespace, labels, self.namespace_labels.get(namespace, {}))

    def for_agent(self, namespace: str, labels: Mapping[str, str]) -> AgentPolicyView:
        policy = self.effective(namespace, labels)
        ceiling = policy.replicas_max
        budget = policy.budget
        defaults = {
            LIMIT_ATTRS[name]: value
            for name, (value, _max, _source) in policy.limits.items()
            if value is not None and name in LIMIT_ATTRS
        }
        return AgentPolicyView(
            replicas_max=ceiling.value if ceiling else None,
            replicas_max_source=ceiling.source if ceiling else None,
            budget=budget.to_budget() if budget else None,
            limit_defaults=defaults,
        )
