"""The controller's process-wide state: configuration, clients, and small in-memory caches.

One :class:`Context` is built at operator start-up (:mod:`controller.handlers`) and shared by
every handler.  Nothing in it is authoritative: the caches (agent readiness, autoscaler cool-down,
what was last reconciled) are rebuilt from the API server's watch after a restart, which is why
losing them is harmless.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from contracts.runtime_env import RuntimeConfig
from controller.autoscale import ScaleMemory
from controller.kube import Kube
from controller.metrics import ControllerMetrics
from controller.pods import Stuck
from controller.policy import PolicyCache
from controller.render import RenderOptions


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    namespaces: tuple[str, ...] = ()
    redis_url: str = "redis://127.0.0.1:6379/0"
    render: RenderOptions = field(default_factory=RenderOptions)
    #: How often each agent's status, budget and autoscaler are refreshed.
    resync_seconds: float = 2.0
    #: How often children are re-applied even without an event (a safety net; events do the work).
    full_resync_seconds: float = 60.0
    #: Redis address written into KEDA ScaledObjects (host:port as seen from KEDA).
    keda_redis_address: str = "redis:6379"
    #: Consumer name in the pipelines' result groups; one leader at a time (kopf peering).
    consumer_name: str = "controller"
    #: Background scan: every agent and pipeline is judged again at least this often (seconds).
    scan_interval: float = 300.0
    #: A change starts a scan once no other change came for this long (seconds) ...
    scan_debounce: float = 0.5
    #: ... or this long after the first one at the latest, however busy the watch (seconds).
    scan_debounce_max: float = 2.0
    #: ``--native-admission``: keep the generated ValidatingAdmissionPolicies and the webhooks'
    #: matchConditions in step with the policies (:mod:`controller.native`).
    native_admission: bool = False
    #: The Mutating- and ValidatingWebhookConfiguration whose matchConditions it sets.
    webhook_configuration: str = "agentops-admission"
    #: A policy change regenerates once no other came for this long, at most this long after the first.
    native_debounce: float = 0.2
    native_debounce_max: float = 1.0


@dataclass(slots=True)
class AgentInfo:
    ready_replicas: int = 0
    replicas: int = 0


@dataclass
class NamespaceScan:
    """The background scan's state for one namespace (see :mod:`controller.scan`)."""

    #: A scan was asked for (a change, the period, an expiry) and has not started yet.
    requested: bool = False
    #: Set on every request: the debounce waits for it to stay clear.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: Event-loop time at which the next scan is due without any change (period or expiry).
    due: float = 0.0
    #: The task running (debouncing, then scanning) for the namespace, if any.
    task: asyncio.Task[None] | None = None
    #: The report as last written or read (None: none is stored); unknown until first read.
    report: dict[str, Any] | None = None
    report_read: bool = False


@dataclass
class NativeState:
    """``--native-admission``'s state (see :mod:`controller.native`): what was applied, and when next."""

    #: A regeneration was asked for (a change, an expiry, a drift) and has not started yet.
    requested: bool = False
    #: Set on every request: the debounce waits for it to stay clear.
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    #: The task debouncing and regenerating, if any.
    task: asyncio.Task[None] | None = None
    #: Event-loop time of the next regeneration without any change (the next exception expiry).
    due: float = float("inf")
    #: (kind, name) -> the generated object as last applied, and the generation it got.
    applied: dict[tuple[str, str], tuple[dict[str, Any], str]] = field(default_factory=dict)
    #: What was generated when leftovers were last deleted (None: not since the start).
    pruned: frozenset[tuple[str, str]] | None = None
    #: Set at shutdown: no new regeneration starts.
    closed: bool = False


@dataclass
class ScanState:
    """What the background scan judges, from the watches, and what it found."""

    #: namespace -> (kind, name) -> the object as the engine reads it (:func:`controller.scan.essence`).
    objects: dict[str, dict[tuple[str, str], dict[str, Any]]] = field(default_factory=dict)
    namespaces: dict[str, NamespaceScan] = field(default_factory=dict)
    #: Namespaces with a change the index handlers saw and no scan was requested for yet.
    pending: set[str] = field(default_factory=set)
    #: (namespace, agent) -> the Enforce violations found by the last scan (empty: none); an agent
    #: not scanned yet has no entry, and its PolicyViolation condition is left as it is.
    violations: dict[tuple[str, str], tuple[str, ...]] = field(default_factory=dict)
    #: Whether the OpenReports CRD is served (None: not checked yet).
    reports_served: bool | None = None
    #: The threads reports are written on (created at the first write).
    writers: ThreadPoolExecutor | None = None
    #: Set at shutdown: no new scan starts.
    closed: bool = False
    _agent_keys: frozenset[tuple[str, str]] | None = None

    def agent_keys(self) -> frozenset[tuple[str, str]]:
        """(namespace, name) of every agent: what pipeline steps may name (one object until it changes)."""
        if self._agent_keys is None:
            self._agent_keys = frozenset(
                (namespace, name)
                for namespace, objects in self.objects.items()
                for kind, name in objects
                if kind == "AgentDeployment"
            )
        return self._agent_keys

    def forget_agent_keys(self) -> None:
        self._agent_keys = None

    def namespace(self, name: str) -> NamespaceScan:
        state = self.namespaces.get(name)
        if state is None:
            state = self.namespaces[name] = NamespaceScan()
        return state


@dataclass
class Context:
    config: ControllerConfig
    kube: Kube
    redis: Redis
    policies: PolicyCache = field(default_factory=PolicyCache)
    agents: dict[tuple[str, str], AgentInfo] = field(default_factory=dict)
    #: Last seen body of each agent's Deployment (from the watch), so status refreshes need no GET.
    deployments: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    scale_memory: dict[tuple[str, str], ScaleMemory] = field(default_factory=dict)
    reconciled: dict[tuple[str, str], tuple[Any, ...]] = field(default_factory=dict)
    last_full: dict[tuple[str, str], float] = field(default_factory=dict)
    last_refresh: dict[tuple[str, str], float] = field(default_factory=dict)
    #: The provider each agent's Deployment was last rendered with; a change forces a full reconcile.
    rendered_provider: dict[tuple[str, str], str] = field(default_factory=dict)
    #: The runtime configuration each agent's Deployment was last rendered with; a change (an
    #: exception for its budget given or expired, a policy changed) forces a full reconcile.
    rendered_config: dict[tuple[str, str], RuntimeConfig] = field(default_factory=dict)
    #: (namespace, Secret) -> (exists, monotonic time checked): one API call per Secret per TTL.
    secrets: dict[tuple[str, str], tuple[bool, float]] = field(default_factory=dict)
    #: Latest body of each agent from the watch (status refreshes read this, not the API).
    agent_bodies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    #: Per agent, the status fields this process last wrote (see controller.agents.stored_status).
    written_status: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    scans: ScanState = field(default_factory=ScanState)
    #: Only with ``--native-admission``.
    native: NativeState | None = None
    metrics: ControllerMetrics = field(default_factory=ControllerMetrics)
    #: (namespace, agent) -> (monotonic time, what its pods said): pods are read at most every
    #: :data:`controller.agents.POD_CHECK_SECONDS` while an agent has unready replicas.
    pod_checks: dict[tuple[str, str], tuple[float, Stuck | None]] = field(default_factory=dict)
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        key = (namespace, name)
        if key not in self._locks:
            self._locks[key] = asyncio.Lock()
        return self._locks[key]

    def forget(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        for cache in (
            self.agents,
            self.deployments,
            self.agent_bodies,
            self.written_status,
            self.scale_memory,
            self.reconciled,
            self.last_full,
            self.last_refresh,
            self.rendered_provider,
            self.rendered_config,
            self.scans.violations,
            self.pod_checks,
            self._locks,
        ):
            cache.pop(key, None)
