"""Agents and pods in a real cluster, as the security, uninstall and bad-input tests read them.

Small readers over :class:`tests.support.kubectl.Kubectl` (no client library, no cache): an
AgentDeployment manifest with the limits every agent needs when no policy sets defaults, its
conditions and READY count as stored, the pods of an agent, every pod's logs, and the article's
samples run to completion.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from contracts.resources import API_VERSION, LABEL_AGENT
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"
#: Limits the webhook demands when no policy sets defaults (a node of its own has no policy).
LIMITS = {"maxTokensPerCall": 200, "maxConcurrentTasks": 1, "timeoutSeconds": 10}


def agent(name: str, **spec: Any) -> dict[str, Any]:
    """An AgentDeployment on the offline provider unless ``spec`` says otherwise."""
    body: dict[str, Any] = {
        "replicas": 1,
        "model": "offline-echo",
        "systemPrompt": "You answer in one word.",
        "limits": dict(LIMITS),
    }
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "AgentDeployment", "metadata": {"name": name}, "spec": body}


def apply(kubectl: Kubectl, *docs: dict[str, Any]) -> str:
    return kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs)).stdout


def status(kubectl: Kubectl, name: str) -> dict[str, Any]:
    found: dict[str, Any] = kubectl.json("get", "agdep", name).get("status") or {}
    return found


def condition(kubectl: Kubectl, name: str, type_: str) -> dict[str, Any] | None:
    return next((c for c in status(kubectl, name).get("conditions", []) if c["type"] == type_), None)


def ready_replicas(kubectl: Kubectl, name: str) -> int:
    return int(status(kubectl, name).get("readyReplicas") or 0)


def agent_pods(kubectl: Kubectl, name: str | None = None) -> list[dict[str, Any]]:
    """Live pods of one agent (or of every agent in the namespace), none being deleted."""
    selector = f"{LABEL_AGENT}={name}" if name else LABEL_AGENT
    pods: list[dict[str, Any]] = kubectl.json("get", "pods", "-l", selector)["items"]
    return [p for p in pods if p["metadata"].get("deletionTimestamp") is None]


def waiting(pod: dict[str, Any]) -> dict[str, Any]:
    """The first container's ``state.waiting`` (empty when it is not waiting)."""
    statuses = pod["status"].get("containerStatuses") or [{}]
    found: dict[str, Any] = (statuses[0].get("state") or {}).get("waiting") or {}
    return found


def logs_of_every_pod(kubectl: Kubectl, namespace: str) -> dict[str, str]:
    """``kubectl logs --all-containers`` of each pod in ``namespace``, by pod name."""
    pods = kubectl.json("get", "pods", namespace=namespace)["items"]
    return {
        p["metadata"]["name"]: kubectl(
            "logs", p["metadata"]["name"], "--all-containers", "--prefix", namespace=namespace, timeout=60
        ).stdout
        for p in pods
        if p["status"].get("phase") in ("Running", "Succeeded", "Failed")
    }


def run_the_article(kubectl: Kubectl) -> None:
    """``kubectl apply -f deploy/samples/`` in the client's namespace, then wait until both agents
    are READY and the pipeline Succeeded."""
    kubectl("apply", "-f", str(SAMPLES))
    eventually("research-agent has 3 ready pods", lambda: ready_replicas(kubectl, "research-agent") == 3, 180)
    eventually("summarizer-agent has 1 ready pod", lambda: ready_replicas(kubectl, "summarizer-agent") == 1)

    def finished() -> dict[str, Any]:
        state: dict[str, Any] = kubectl.json("get", "agpipe", "research-then-summarize").get("status") or {}
        return state if state.get("phase") in ("Succeeded", "Failed") else {}

    state = eventually("the pipeline finishes", finished, within=180)
    assert state["phase"] == "Succeeded", state
