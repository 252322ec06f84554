"""What the kube tests create: AgentDeployments (a CRD with status and scale subresources)."""

from __future__ import annotations

from typing import Any

import kube
from contracts.resources import GROUP, VERSION

API_VERSION = f"{GROUP}/{VERSION}"
MANAGER = "agentops-tests"


def agent(name: str, namespace: str, replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": "blue"}},
        "spec": {
            "model": "claude-sonnet-4-20250514",
            "systemPrompt": "PROMPT",
            "replicas": replicas,
            "limits": {"maxTokensPerCall": 10, "maxConcurrentTasks": 1, "timeoutSeconds": 5},
        },
    }


def agent_path(namespace: str, name: str | None = None) -> str:
    return kube.path(API_VERSION, "agentdeployments", name, namespace=namespace)
