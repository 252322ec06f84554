"""The controller's process-wide state: configuration, clients, and small in-memory caches.

One :class:`Context` is built at operator start-up (:mod:`controller.handlers`) and shared by
every handler.  Nothing in it is authoritative: the caches (agent readiness, autoscaler cool-down,
what was last reconciled) are rebuilt from the API server's watch after a restart, which is why
losing them is harmless.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis

from controller.autoscale import ScaleMemory
from controller.kube import Kube
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


@dataclass(slots=True)
class AgentInfo:
    ready_replicas: int = 0
    replicas: int = 0


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
    #: (namespace, Secret) -> (exists, monotonic time checked): one API call per Secret per TTL.
    secrets: dict[tuple[str, str], tuple[bool, float]] = field(default_factory=dict)
    #: Latest body of each agent from the watch (status refreshes read this, not the API).
    agent_bodies: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
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
            self.scale_memory,
            self.reconciled,
            self.last_full,
            self.last_refresh,
            self.rendered_provider,
            self._locks,
        ):
            cache.pop(key, None)
