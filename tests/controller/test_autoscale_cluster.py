"""Queue-depth autoscaling against the real control plane and Redis, and the KEDA alternative.

No workers run here, so a backlog stays a backlog: the test controls the queue exactly.
"""

from __future__ import annotations

import json
from typing import Any

import redis

import kube
from contracts.keys import task_stream
from tests.controller.conftest import ControllerProcess
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

SCALED_AGENT = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentDeployment
metadata:
  name: {name}
spec:
  replicas: 1
  model: offline-test
  systemPrompt: "You answer briefly."
  limits: {{maxTokensPerCall: 100, maxConcurrentTasks: 1, timeoutSeconds: 30}}
  autoscaling:
    {{minReplicas: 1, maxReplicas: 5, targetPendingPerReplica: 2, cooldownSeconds: 3, engine: {engine}}}
"""

CEILING = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPolicy
metadata: {name: replica-ceiling}
spec: {replicas: {max: 3}}
"""


def replicas(k8s_api: kube.Client, namespace: str, name: str) -> tuple[int, int]:
    """(AgentDeployment spec.replicas, Deployment spec.replicas; -1 while there is none)."""
    agent = k8s_api.request(
        "GET", kube.path("agentops.agentops.io/v1alpha1", "agentdeployments", name, namespace=namespace)
    )
    deployment = k8s_api.get(kube.path("apps/v1", "deployments", name, namespace=namespace))
    return agent["spec"]["replicas"], deployment["spec"]["replicas"] if deployment else -1


def test_backlog_scales_up_within_the_policy_ceiling_and_an_empty_queue_scales_down(
    kubectl: Kubectl, namespace: str, redis_url: str, controller: ControllerProcess, k8s_api: kube.Client
) -> None:
    kubectl("apply", "-f", "-", input=CEILING)
    kubectl("apply", "-f", "-", input=SCALED_AGENT.format(name="elastic", engine="builtin"))
    eventually("the initial replica", lambda: replicas(k8s_api, namespace, "elastic") == (1, 1))

    r: Any = redis.Redis.from_url(redis_url)
    for i in range(20):  # desired = ceil(20 / 2) = 10, spec max 5, policy max 3
        r.xadd(task_stream(namespace, "elastic"), {"task_id": f"t{i}", "prompt": "p", "reply_to": "x"})
    eventually(
        "scale-up to the policy ceiling of 3", lambda: replicas(k8s_api, namespace, "elastic") == (3, 3)
    )
    events = kubectl.json("get", "events", "--field-selector", "involvedObject.name=elastic,reason=Scaled")
    message = events["items"][0]["message"]
    assert "scaled from 1 to 3" in message
    assert "policy ceiling 3 (AgentPolicy/replica-ceiling)" in message

    r.delete(task_stream(namespace, "elastic"))
    seen: list[tuple[int, int]] = []

    def scaled_down() -> bool:
        seen.append(replicas(k8s_api, namespace, "elastic"))
        return seen[-1] == (1, 1)

    eventually("scale-down to minReplicas after the cool-down", scaled_down, within=30)
    assert max(a for a, _ in seen) <= 3


def test_keda_engine_emits_a_scaled_object_only_when_keda_is_installed(
    kubectl: Kubectl, cluster_kubectl: Kubectl, namespace: str, controller: ControllerProcess
) -> None:
    kubectl("apply", "-f", "-", input=SCALED_AGENT.format(name="kedaed", engine="keda"))

    def autoscaling_condition() -> dict[str, Any] | None:
        status = kubectl.json("get", "agdep", "kedaed").get("status") or {}
        return next((c for c in status.get("conditions", []) if c["type"] == "Autoscaling"), None)

    cond = eventually("the Autoscaling condition", autoscaling_condition)
    assert cond["status"] == "False"
    assert cond["reason"] == "KedaNotInstalled"
    assert "scaledobjects.keda.sh" in cond["message"]

    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "scaledobjects.keda.sh"},
        "spec": {
            "group": "keda.sh",
            "names": {"kind": "ScaledObject", "plural": "scaledobjects", "singular": "scaledobject"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1alpha1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }
    cluster_kubectl("apply", "-f", "-", input=json.dumps(crd))
    try:
        cluster_kubectl("wait", "--for=condition=Established", "crd/scaledobjects.keda.sh", "--timeout=30s")
        # A spec change makes the controller look again at once.
        kubectl(
            "patch", "agdep", "kedaed", "--type=merge", "-p", '{"spec":{"autoscaling":{"cooldownSeconds":4}}}'
        )
        scaled = eventually(
            "the ScaledObject",
            lambda: (
                (r := kubectl("get", "scaledobjects.keda.sh", "kedaed", "-o", "json", check=False)).returncode
                == 0
                and json.loads(r.stdout)
            ),
        )
        trigger = scaled["spec"]["triggers"][0]
        assert trigger["type"] == "redis-streams"
        assert trigger["metadata"]["stream"] == task_stream(namespace, "kedaed")
        assert trigger["metadata"]["consumerGroup"] == "workers"
        assert scaled["spec"]["scaleTargetRef"]["kind"] == "AgentDeployment"
        assert scaled["spec"]["cooldownPeriod"] == 4
        assert scaled["metadata"]["ownerReferences"][0]["name"] == "kedaed"
        eventually(
            "condition update",
            lambda: (autoscaling_condition() or {}).get("reason") == "KedaScaledObject",
        )
    finally:
        cluster_kubectl("delete", "crd", "scaledobjects.keda.sh", "--wait=false", check=False)
