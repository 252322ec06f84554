"""Queue-depth autoscaling: the pure arithmetic, the Redis reading, and the KEDA alternative.

``desired = ceil((lag + pending) / targetPendingPerReplica)``, clamped to
``[minReplicas, min(maxReplicas, policy replicas.max)]``.  ``lag`` is the number of entries of
the agent's task stream the consumer group has not been handed yet, ``pending`` the number handed
out but not yet acknowledged (being worked on, or stuck with a crashed worker).  Scaling up happens
at once; scaling down only after the desired count has stayed lower for ``cooldownSeconds``, so a
queue that drains and refills between two ticks does not flap.

The controller scales by patching the AgentDeployment's **scale subresource**, never the
Deployment: the agent's ``spec.replicas`` stays the one source of truth, the admission webhook sees
(and can refuse) every scale, and the Deployment simply follows the spec.  With ``engine: keda``
the controller writes a KEDA ``ScaledObject`` that targets the same scale subresource and does not
scale by itself.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import ResponseError

from contracts.keys import task_stream
from contracts.resources import AgentDeployment, Autoscaling
from contracts.streams import CONSUMER_GROUP

KEDA_GROUP = "keda.sh"
KEDA_VERSION = "v1alpha1"
KEDA_PLURAL = "scaledobjects"


@dataclass(frozen=True, slots=True)
class QueueDepth:
    lag: int
    pending: int

    @property
    def total(self) -> int:
        return self.lag + self.pending


def desired_replicas(depth: QueueDepth, autoscaling: Autoscaling, ceiling: int | None) -> int:
    """The replica count the queue asks for, within the spec's range and the policy ceiling."""
    upper = autoscaling.max_replicas if ceiling is None else min(autoscaling.max_replicas, ceiling)
    lower = min(autoscaling.min_replicas, upper)
    wanted = math.ceil(depth.total / autoscaling.target_pending_per_replica)
    return max(lower, min(upper, wanted))


@dataclass(slots=True)
class ScaleMemory:
    """Per-agent memory of when the queue first asked for fewer replicas (for the cool-down)."""

    lower_since: float | None = None


def next_replicas(
    current: int, desired: int, autoscaling: Autoscaling, memory: ScaleMemory, now: float
) -> int | None:
    """The replica count to set now, or None to leave it; scale down only after the cool-down."""
    if desired > current:
        memory.lower_since = None
        return desired
    if desired == current:
        memory.lower_since = None
        return None
    if memory.lower_since is None:
        memory.lower_since = now
    if now - memory.lower_since >= autoscaling.cooldown_seconds:
        memory.lower_since = None
        return desired
    return None


async def queue_depth(redis: Redis, namespace: str, agent: str) -> QueueDepth:
    """Lag and pending of the agent's consumer group; a stream nobody created yet is empty."""
    stream = task_stream(namespace, agent)
    try:
        groups: list[dict[Any, Any]] = await redis.xinfo_groups(stream)
    except ResponseError:
        return QueueDepth(0, 0)
    for group in groups:
        name = group.get("name") or group.get(b"name")
        if isinstance(name, bytes):
            name = name.decode()
        if name != CONSUMER_GROUP:
            continue
        pending = int(group.get("pending") or group.get(b"pending") or 0)
        lag = group.get("lag", group.get(b"lag"))
        if lag is None:
            # Redis reports no lag when it cannot compute it cheaply (after XDEL); count entries instead.
            lag = max(0, int(await redis.xlen(stream)) - pending)
        return QueueDepth(int(lag), pending)
    # No group yet: no worker has started, so everything in the stream is waiting.
    return QueueDepth(int(await redis.xlen(stream)), 0)


def render_scaled_object(agent: AgentDeployment, redis_address: str, owner: dict[str, Any]) -> dict[str, Any]:
    """A KEDA ScaledObject scaling the AgentDeployment (scale subresource) on its stream's lag."""
    autoscaling = agent.spec.autoscaling
    assert autoscaling is not None
    namespace = str(agent.metadata.namespace)
    name = str(agent.metadata.name)
    return {
        "apiVersion": f"{KEDA_GROUP}/{KEDA_VERSION}",
        "kind": "ScaledObject",
        "metadata": {"name": name, "namespace": namespace, "ownerReferences": [owner]},
        "spec": {
            "scaleTargetRef": {
                "apiVersion": agent.api_version,
                "kind": "AgentDeployment",
                "name": name,
            },
            "minReplicaCount": autoscaling.min_replicas,
            "maxReplicaCount": autoscaling.max_replicas,
            "cooldownPeriod": autoscaling.cooldown_seconds,
            "triggers": [
                {
                    "type": "redis-streams",
                    "metadata": {
                        "address": redis_address,
                        "stream": task_stream(namespace, name),
                        "consumerGroup": CONSUMER_GROUP,
                        "lagCount": str(autoscaling.target_pending_per_replica),
                    },
                }
            ],
        },
    }
