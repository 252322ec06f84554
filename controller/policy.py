"""The policies the controller needs: replica ceiling, budget and limit defaults of each agent, and
the policy set the background scan judges every agent and pipeline by.

Policies, exceptions and namespace labels are kept from kopf watches (no API call per reconcile);
the effective policy is computed by the shared policy engine, the same code the webhook uses, so
the autoscaler's ceiling and the runtime's budget are exactly what admission enforces, and a
background scan's verdict is the one admission would give.

An agent's effective policy leaves out what its unexpired AgentPolicyExceptions excuse at the
time the caller passes (:func:`policies.engine.effective_policy` with ``name`` and ``now``): an
agent excused from rule ``budget`` runs without that policy's budget (a looser one of another
policy still applies), and from the moment the exception expires the budget is back.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from contracts.resources import AgentPolicy, AgentPolicyException, Budget, ClusterAgentPolicy
from policies.effective import LIMIT_ATTRS, EffectivePolicy
from policies.engine import effective_policy
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
    #: Policies and exceptions, for effective policies (no known agents: they judge no pipeline).
    _base: PolicySet | None = None
    #: The same with the agents pipelines may name, for the scan (see :meth:`policy_set`).
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
        self._base = None
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
        self._base = None
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

    def effective(
        self,
        namespace: str,
        labels: Mapping[str, str],
        *,
        name: str | None = None,
        now: datetime | None = None,
    ) -> EffectivePolicy:
        """The effective policy of an object; with its ``name`` and ``now``, without what the
        exceptions in force at ``now`` excuse for it (the runtime's and the status's budget)."""
        base = self._base
        if base is None:
            base = self._base = PolicySet(
                cluster=tuple(self.cluster.values()),
                namespaced=tuple(self.namespaced.values()),
                exceptions=tuple(self.exceptions.values()),
            )
        return effective_policy(
            namespace, labels, self.namespace_labels.get(namespace, {}), base, name=name, now=now
        )

    def for_agent(
        self,
        namespace: str,
        labels: Mapping[str, str],
        *,
        name: str | None = None,
        now: datetime | None = None,
    ) -> AgentPolicyView:
        """What the controller uses of an agent's effective policy (see :meth:`effective`)."""
        policy = self.effective(namespace, labels, name=name, now=now)
        ceiling = policy.replicas_max
        budget = policy.budget
        defaults = {
            LIMIT_ATTRS[limit]: value
            for limit, (value, _max, _source) in policy.limits.items()
            if value is not None and limit in LIMIT_ATTRS
        }
        return AgentPolicyView(
            replicas_max=ceiling.value if ceiling else None,
            replicas_max_source=ceiling.source if ceiling else None,
            budget=budget.to_budget() if budget else None,
            limit_defaults=defaults,
        )
