"""The fault tests' model endpoint in a pod, and agents pointed at it.

:func:`deploy_fake_model` runs :mod:`tests.cluster.fake_model_server` in a pod of the product
image behind a Service and returns its base URL; :func:`make_sick` lists the pod IPs whose
semantic probes it answers wrongly; :func:`agent_on_fake_model` turns an AgentDeployment's pods
into OpenAI-provider workers calling it.

An AgentDeployment has no field for the provider's endpoint (the runtime reads
``AGENTOPS_BASE_URL``, but the controller renders none), so the base URL is added to the agent's
Deployment by a strategic-merge patch: the controller's server-side apply owns only the variables
it renders and leaves this one alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from localstack import images
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

NAME = "fake-model"
PORT = 8080
SERVER = Path(__file__).with_name("fake_model_server.py")
#: The Secret the OpenAI provider takes its key from; the fake accepts any key.
KEY_SECRET = "fake-model-key"
#: A model name the provider inference maps to ``openai`` and org-wide policies allow (``gpt-4o*``).
MODEL = "gpt-4o-mini"


def manifests() -> list[dict[str, Any]]:
    labels = {"app": NAME}
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": NAME},
            "data": {"server.py": SERVER.read_text()},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": KEY_SECRET},
            "stringData": {"api-key": "sk-fake-not-a-real-key"},
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": NAME},
            "spec": {"selector": labels, "ports": [{"port": PORT, "targetPort": PORT}]},
        },
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": NAME, "labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
                "containers": [
                    {
                        "name": "server",
                        "image": images.PRODUCT_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python", "/app/server.py"],
                        "ports": [{"containerPort": PORT}],
                        "readinessProbe": {"httpGet": {"path": "/healthz", "port": PORT}, "periodSeconds": 1},
                        "securityContext": {
                            "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": [
                            {"name": "app", "mountPath": "/app", "readOnly": True},
                            {"name": "state", "mountPath": "/state"},
                        ],
                    }
                ],
                "volumes": [
                    {"name": "app", "configMap": {"name": NAME}},
                    {"name": "state", "emptyDir": {"sizeLimit": "1Mi"}},
                ],
            },
        },
    ]


def deploy_fake_model(kubectl: Kubectl) -> str:
    """Start the fake in the kubectl's namespace; its base URL once it is Ready."""
    assert kubectl.namespace, "the fake model needs a namespace"
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(manifests()))
    kubectl("wait", "--for=condition=Ready", f"pod/{NAME}", "--timeout=120s", timeout=130)
    return f"http://{NAME}.{kubectl.namespace}.svc:{PORT}/v1"


def make_sick(kubectl: Kubectl, *pod_ips: str) -> None:
    """From now on, probes from these pod IPs get ``UNHEALTHY`` (none: everyone is healthy)."""
    script = "import sys; open('/state/sick', 'w').write(''.join(a + '\\n' for a in sys.argv[1:]))"
    kubectl("exec", NAME, "--", "python", "-c", script, *pod_ips)


def agent_spec(
    *, replicas: int, max_concurrent: int, timeout: int, probe: dict[str, Any] | None = None
) -> dict[str, Any]:
    """An AgentDeployment spec on the OpenAI provider with the fake's key."""
    spec: dict[str, Any] = {
        "replicas": replicas,
        "model": MODEL,
        "systemPrompt": "You answer test prompts.",
        "credentials": {"secretRef": {"name": KEY_SECRET, "key": "api-key"}},
        "limits": {"maxTokensPerCall": 200, "maxConcurrentTasks": max_concurrent, "timeoutSeconds": timeout},
    }
    if probe is not None:
        spec["livenessProbe"] = probe
    return spec


def agent_on_fake_model(kubectl: Kubectl, agent: str, base_url: str, replicas: int) -> None:
    """Point an agent created with 0 replicas at the fake, then scale it and wait for the rollout.

    Created at 0 replicas so that no pod ever runs against the default endpoint (which is not
    reachable from the node, and would fail tasks rather than take none).
    """
    patch = {
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "agent", "env": [{"name": "AGENTOPS_BASE_URL", "value": base_url}]}
                    ]
                }
            }
        }
    }
    kubectl("wait", "--for=create", f"deployment/{agent}", "--timeout=60s", timeout=70)
    kubectl("patch", "deployment", agent, "--type=strategic", "-p", json.dumps(patch))
    kubectl("scale", "agentdeployment", agent, f"--replicas={replicas}")

    def rolled_out() -> bool:
        deployment = kubectl.json("get", "deployment", agent)
        status = deployment.get("status", {})
        return bool(
            deployment["spec"]["replicas"] == replicas
            and status.get("observedGeneration") == deployment["metadata"]["generation"]
            and status.get("replicas") == replicas
            and status.get("updatedReplicas") == replicas
            and status.get("readyReplicas") == replicas
        )

    eventually(f"agent {agent} runs {replicas} ready pods on the fake model", rolled_out, within=120)
