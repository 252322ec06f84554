"""What the end-to-end tests apply with kubectl, and how they see the webhook act on it.

Objects are plain dicts (as a user would write them in YAML); a ClusterAgentPolicy built here
selects one namespace only and carries the webhook's scope label, so tests sharing the API server
do not see each other's policies.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually
from tests.webhook.conftest import SCOPE_LABEL

API_VERSION = "agentops.agentops.io/v1alpha1"
DEFAULT_TOKENS = 4321


def agent(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"replicas": 1, "model": "claude-sonnet-4-20250514", "systemPrompt": "You help."}
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": "AgentDeployment", "metadata": {"name": name}, "spec": body}


def limits(tokens: int = 1000, tasks: int = 2, timeout: int = 30) -> dict[str, int]:
    return {"maxTokensPerCall": tokens, "maxConcurrentTasks": tasks, "timeoutSeconds": timeout}


def dump(obj: dict[str, Any]) -> str:
    return yaml.safe_dump(obj)


def cluster_policy(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}
    body.update(spec)
    return {
        "apiVersion": API_VERSION,
        "kind": "ClusterAgentPolicy",
        "metadata": {"name": name, "labels": {SCOPE_LABEL[0]: SCOPE_LABEL[1]}},
        "spec": body,
    }


def default_filled_in(kubectl: Kubectl, tokens: int) -> bool:
    """True when a dry-run agent without limits comes back with ``tokens`` filled in; else raises,
    saying what came back."""
    probe = dump(agent("policy-probe"))
    result = kubectl("apply", "--dry-run=server", "-o", "json", "-f", "-", input=probe)
    got = json.loads(result.stdout)["spec"].get("limits", {}).get("maxTokensPerCall")
    assert got == tokens, f"the probe came back with maxTokensPerCall={got}"
    return True


def wait_for_default(kubectl: Kubectl, tokens: int) -> None:
    eventually(
        f"policy default {tokens} in effect",
        lambda: default_filled_in(kubectl, tokens),
        within=20,
        interval=0.1,
    )


def denied(result: Any) -> str:
    assert result.returncode != 0, f"expected a denial, kubectl succeeded:\n{result.stdout}\n{result.stderr}"
    stderr: str = result.stderr
    return stderr
