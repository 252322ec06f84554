"""The webhook's in-memory view of the cluster, fed by list+watch: no API call per admission.

Five reflectors run as asyncio tasks on the server's event loop:

=========================  ==================================  ==================================
resource                   kept                                used for
=========================  ==================================  ==================================
ClusterAgentPolicy         the parsed model                    every decision
AgentPolicy                the parsed model                    every decision
AgentPolicyException       the parsed model (small, no         excusing named rules of named
                           prompts), expired ones too          policies for named agents
AgentDeployment            namespace, name, labels (metadata   ``known_agents`` (pipeline steps)
                           only: prompts never reach us here)  and Scale requests' target labels
Namespace                  labels (metadata only)              ClusterAgentPolicy namespaceSelector
=========================  ==================================  ==================================

Each is a :class:`kube.watch.Reflector` (list, then watch from the list's ``resourceVersion`` with
bookmarks, resume after a timeout, relist on ``410 Gone``).  Because every update happens on the
event loop that also serves admissions, readers never see a half-applied change.  After each
change a new immutable :class:`Snapshot` is built (with a new :class:`~policies.engine.PolicySet`
when a policy or an exception changed), so a decision in flight keeps the snapshot it started with.

Exceptions are kept whether or not they have expired: expiry is a matter of time, not of a watch
event, so the engine judges it against each request's own ``now`` (nothing here decides it, and
no verdict is cached), and an exception stops excusing the moment its ``expiresAt`` passes.

``synced`` turns true once every reflector has completed its first list; ``/readyz`` reports it.
AgentDeployments and Namespaces are fetched as ``PartialObjectMetadata``: the API server strips
spec and status, which keeps system prompts out of this process's memory and the watch cheap.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import kube
from contracts.resources import GROUP, VERSION, AgentPolicy, AgentPolicyException, ClusterAgentPolicy
from kube.watch import Reflector
from policies.engine import PolicySet


@dataclass(frozen=True)
class Snapshot:
    """What one admission decision reads; never mutated after it is built.

    ``policies`` carries no ``known_agents``: a PolicySet caches effective policies per instance,
    and agents come and go far more often than policies, so folding the agent list into it would
    throw those caches away on every agent create.  Only pipeline validation needs the agent
    list; :meth:`policies_for` adds it, once per snapshot.
    """

    policies: PolicySet
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    agent_labels: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)
    _with_agents: list[PolicySet] = field(default_factory=list, init=False, repr=False, compare=False)

    def policies_for(self, kind: str) -> PolicySet:
        """The policy set to decide a request for ``kind`` with."""
        if kind != "AgentPipeline":
            return self.policies
        if not self._with_agents:
            # Benign race: two threads may both build it; either result is equivalent.
            self._with_agents.append(
                dataclasses.replace(self.policies, known_agents=frozenset(self.agent_labels))
            )
        return self._with_agents[0]


class PolicySource(Protocol):
    """What the app needs from a cache: a snapshot and whether it is complete."""

    @property
    def synced(self) -> bool: ...

    def snapshot(self) -> Snapshot: ...

    def sizes(self) -> Mapping[str, int]: ...


class StaticPolicySource:
    """A fixed snapshot: for tests of the HTTP layer and for benchmarks without a cluster."""

    def __init__(self, snapshot: Snapshot, *, synced: bool = True) -> None:
        self._snapshot = snapshot
        self._synced = synced

    @property
    def synced(self) -> bool:
        return self._synced

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def sizes(self) -> Mapping[str, int]:
        return {
            "ClusterAgentPolicy": len(self._snapshot.policies.cluster),
            "AgentPolicy": len(self._snapshot.policies.namespaced),
            "AgentPolicyException": len(self._snapshot.policies.exceptions),
            "AgentDeployment": len(self._snapshot.agent_labels),
            "Namespace": len(self._snapshot.namespace_labels),
        }


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


class ClusterPolicyCache:
    """The real :class:`PolicySource`: five reflectors over one API connection."""

    def __init__(
        self, connection: kube.Connection, *, on_change: Callable[[Mapping[str, int]], None] | None = None
    ) -> None:
        self._api = kube.AsyncClient(connection, user_agent="agentops-webhook")
        self._on_change = on_change
        ours = f"{GROUP}/{VERSION}"
        # A policy the shared model rejects (version skew: the CRD schema comes from the same
        # model) is left out by the reflector, and logged, rather than crashing the cache.
        self._cluster = Reflector(
            self._api, kube.path(ours, "clusteragentpolicies"), "ClusterAgentPolicy",
            ClusterAgentPolicy.from_k8s, self._rebuild_policies,
        )  # fmt: skip
        self._namespaced = Reflector(
            self._api,
            kube.path(ours, "agentpolicies"),
            "AgentPolicy",
            AgentPolicy.from_k8s,
            self._rebuild_policies,
        )
        self._exceptions = Reflector(
            self._api,
            kube.path(ours, "agentpolicyexceptions"),
            "AgentPolicyException",
            AgentPolicyException.from_k8s,
            self._rebuild_policies,
        )
        self._agents = Reflector(
            self._api, kube.path(ours, "agentdeployments"), "AgentDeployment", _labels, self._rebuild_agents,
            metadata_only=True,
        )  # fmt: skip
        self._namespaces = Reflector(
            self._api,
            kube.path("v1", "namespaces"),
            "Namespace",
            _labels,
            self._rebuild_namespaces,
            metadata_only=True,
        )
        self._reflectors = (self._cluster, self._namespaced, self._exceptions, self._agents, self._namespaces)
        self._snapshot = Snapshot(PolicySet())
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self._reflectors)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def sizes(self) -> Mapping[str, int]:
        return {r.kind: len(r.store) for r in self._reflectors}

    def _rebuild_policies(self) -> None:
        policies = PolicySet(
            cluster=tuple(self._cluster.store.values()),
            namespaced=tuple(self._namespaced.store.values()),
            exceptions=tuple(self._exceptions.store.values()),
        )
        self._snapshot = Snapshot(policies, self._snapshot.namespace_labels, self._snapshot.agent_labels)
        self._changed()

    def _rebuild_agents(self) -> None:
        # The PolicySet object is kept (see Snapshot): its effective-policy caches stay warm.
        self._snapshot = Snapshot(
            self._snapshot.policies, self._snapshot.namespace_labels, dict(self._agents.store)
        )
        self._changed()

    def _rebuild_namespaces(self) -> None:
        labels = {name: labels for (_, name), labels in self._namespaces.store.items()}
        self._snapshot = Snapshot(self._snapshot.policies, labels, self._snapshot.agent_labels)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.sizes())

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(r.run(), name=f"watch-{r.kind}") for r in self._reflectors]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._api.aclose()
