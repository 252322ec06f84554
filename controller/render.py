"""Pure rendering: an AgentDeployment into the ConfigMap, Deployment and Service that run it.

Nothing here talks to the API server or Redis, so every decision about what an agent's pods
look like is unit-testable: the environment (exactly :meth:`RuntimeConfig.to_env`, plus the API
key from the Secret by ``secretKeyRef``), the prompt file, probes, the non-root security
context, and the pod-template hash that makes a change of prompt, model or limits roll the
Deployment.  :mod:`controller.agents` applies what this module returns.

The provider decision lives here too, because it changes the environment: an agent whose
provider needs an API key but has none (no ``credentials.secretRef`` and no default Secret)
runs on the offline provider when the controller is started with ``--offline-fallback``, and
``status.effectiveProvider`` says so (``"offline (no API key)"``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from contracts.resources import (
    API_VERSION,
    LABEL_AGENT,
    LABEL_MANAGED_BY,
    AgentDeployment,
    Budget,
    Condition,
    Provider,
    SecretKeyRef,
)
from contracts.runtime_env import (
    API_KEY_ENV,
    DEFAULT_HTTP_PORT,
    DEFAULT_PROMPT_FILE,
    PROMPT_FILE_NAME,
    PROMPT_MOUNT_DIR,
    RuntimeConfig,
)

CONTROLLER_NAME = "agentops-controller"
#: Field manager for server-side apply: the fields the controller owns on its children.
FIELD_MANAGER = CONTROLLER_NAME
#: Pod-template annotation: a hash of everything that must roll the pods when it changes.
TEMPLATE_HASH_ANNOTATION = "agentops.agentops.io/template-hash"
CONTAINER_NAME = "agent"
HTTP_PORT_NAME = "http"
PROMPT_VOLUME = "prompt"
#: Used when neither the spec nor a policy default sets a limit (the webhook normally fills them).
FALLBACK_LIMITS = {"max_tokens_per_call": 4000, "max_concurrent_tasks": 2, "timeout_seconds": 60}
#: Non-root uid/gid of the runtime image.
RUNTIME_UID = 10001
#: One image for every component (deploy/Dockerfile); the pod command picks the runtime.
DEFAULT_RUNTIME_IMAGE = "agentops-operator:0.1.0"


@dataclass(frozen=True, slots=True)
class RenderOptions:
    """Controller-wide settings that shape every agent's pods."""

    runtime_image: str = DEFAULT_RUNTIME_IMAGE
    redis_url: str = "redis://127.0.0.1:6379/0"
    offline_fallback: bool = False
    #: Secret used by agents whose spec names none (the local stack creates it from ANTHROPIC_API_KEY).
    default_secret: SecretKeyRef | None = None
    image_pull_policy: str = "IfNotPresent"


@dataclass(frozen=True, slots=True)
class ProviderDecision:
    """Which provider the pods run and where their API key comes from."""

    provider: Provider
    secret: SecretKeyRef | None
    #: What ``status.effectiveProvider`` shows, e.g. ``anthropic`` or ``offline (no API key)``.
    display: str
    #: A condition reason and message when credentials are missing; ``None`` when all is well.
    problem: tuple[str, str] | None = None
    #: True when the offline provider replaced the requested one (an Event says so once).
    fell_back: bool = False


def decide_provider(
    agent: AgentDeployment, secret_exists: bool | None, options: RenderOptions
) -> ProviderDecision:
    """Pick provider and Secret; ``secret_exists``: does the Secret to use exist (None: none named)."""
    wanted = agent.spec.effective_provider()
    if wanted == "offline":
        return ProviderDecision("offline", None, "offline")
    named = agent.spec.credentials.secret_ref if agent.spec.credentials else None
    secret = named or options.default_secret
    if secret is not None and secret_exists:
        return ProviderDecision(wanted, secret, wanted)
    if named is not None:
        problem = (
            "SecretNotFound",
            f"Secret {named.name!r} named by spec.credentials.secretRef does not exist in this namespace; "
            f"create it with key {named.key!r} holding the {wanted} API key",
        )
        # No offline fallback here: the spec asked for this Secret, so running without it would hide the
        # mistake.  Rendered anyway: the pods start by themselves once the Secret appears.
        return ProviderDecision(wanted, named, wanted, problem)
    if options.offline_fallback:
        return ProviderDecision("offline", None, "offline (no API key)", None, fell_back=True)
    return ProviderDecision(
        wanted,
        None,
        wanted,
        (
            "NoCredentials",
            f"provider {wanted} needs an API key: set spec.credentials.secretRef to a Secret holding it",
        ),
    )


def child_names(agent: str) -> dict[str, str]:
    """Names of the objects an agent owns (Deployment and Service share the agent's name)."""
    return {"deployment": agent, "configmap": f"{agent}-prompt", "service": f"{agent}-metrics"}


def selector_labels(agent: str) -> dict[str, str]:
    return {LABEL_AGENT: agent}


def selector_string(agent: str) -> str:
    """The label selector the scale subresource publishes (``status.selector``)."""
    return f"{LABEL_AGENT}={agent}"


def owner_reference(agent: AgentDeployment) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "AgentDeployment",
        "name": agent.metadata.name,
        "uid": agent.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _labels(agent: str) -> dict[str, str]:
    return {**selector_labels(agent), LABEL_MANAGED_BY: CONTROLLER_NAME}


def _meta(agent: AgentDeployment, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": agent.metadata.namespace,
        "labels": _labels(str(agent.metadata.name)),
        "ownerReferences": [owner_reference(agent)],
    }


def runtime_config(
    agent: AgentDeployment,
    decision: ProviderDecision,
    options: RenderOptions,
    budget: Budget | None = None,
    limit_defaults: dict[str, int] | None = None,
) -> RuntimeConfig:
    """The runtime's configuration for this agent: every limit, the probe, and the budget."""
    spec = agent.spec
    limits = dict(FALLBACK_LIMITS)
    limits.update(limit_defaults or {})
    if spec.limits is not None:
        limits.update(spec.limits.model_dump(exclude_none=True))
    probe = spec.liveness_probe
    return RuntimeConfig(
        namespace=str(agent.metadata.namespace),
        agent=str(agent.metadata.name),
        # The offline provider ignores the model name but reports it; keep the spec's for the record.
        model=spec.model,
        provider=decision.provider,
        redis_url=options.redis_url,
        prompt_file=DEFAULT_PROMPT_FILE,
        http_port=DEFAULT_HTTP_PORT,
        probe_type=probe.type if probe else "ping",
        probe_interval_seconds=probe.interval_seconds if probe else 60,
        probe_validator_prompt=probe.validator_prompt if probe else None,
        probe_expect=probe.expect if probe else "HEALTHY",
        budget_tokens=budget.tokens if budget else None,
        budget_cost_usd=budget.cost_usd if budget else None,
        budget_period=budget.period if budget else "month",
        budget_scope=budget.scope if budget else "Agent",
        **limits,
    )


def render_configmap(agent: AgentDeployment) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(agent, child_names(str(agent.metadata.name))["configmap"]),
        "data": {PROMPT_FILE_NAME: agent.spec.system_prompt},
    }


def render_service(agent: AgentDeployment) -> dict[str, Any]:
    name = str(agent.metadata.name)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(agent, child_names(name)["service"]),
        "spec": {
            "selector": selector_labels(name),
            "ports": [{"name": "metrics", "port": DEFAULT_HTTP_PORT, "targetPort": HTTP_PORT_NAME}],
        },
    }


def template_hash(prompt: str, env: list[dict[str, Any]], image: str) -> str:
    """Changes whenever the pods must be replaced: prompt, model, limits, provider, budget, image."""
    blob = json.dumps({"prompt": prompt, "env": env, "image": image}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def render_deployment(
    agent: AgentDeployment, config: RuntimeConfig, decision: ProviderDecision, options: RenderOptions
) -> dict[str, Any]:
    name = str(agent.metadata.name)
    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in sorted(config.to_env().items())]
    # The pod's own name identifies the worker in results and consumer-group state.
    env.append({"name": "AGENTOPS_WORKER_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}})
    if decision.secret is not None:
        env.append(
            {
                "name": API_KEY_ENV,
                "valueFrom": {"secretKeyRef": {"name": decision.secret.name, "key": decision.secret.key}},
            }
        )
    probe_interval = config.probe_interval_seconds
    # /healthz reports the last (semantic) probe; checking it once per probe interval is enough, and
    # three misses in a row restart the pod.  A call is bounded by the agent's own timeout.
    liveness = {
        "httpGet": {"path": "/healthz", "port": HTTP_PORT_NAME},
        "periodSeconds": probe_interval,
        "timeoutSeconds": max(1, min(config.timeout_seconds, probe_interval, 30)),
        "failureThreshold": 3,
        "initialDelaySeconds": min(probe_interval, 30),
    }
    readiness = {
        "httpGet": {"path": "/readyz", "port": HTTP_PORT_NAME},
        "periodSeconds": min(probe_interval, 10),
        "timeoutSeconds": max(1, min(config.timeout_seconds, 5)),
        "failureThreshold": 2,
    }
    container = {
        "name": CONTAINER_NAME,
        "image": options.runtime_image,
        "imagePullPolicy": options.image_pull_policy,
        "command": ["python", "-m", "agent_runtime"],
        "env": env,
        "ports": [{"name": HTTP_PORT_NAME, "containerPort": DEFAULT_HTTP_PORT, "protocol": "TCP"}],
        "readinessProbe": readiness,
        "livenessProbe": liveness,
        "volumeMounts": [{"name": PROMPT_VOLUME, "mountPath": PROMPT_MOUNT_DIR, "readOnly": True}],
        "resources": {
            "requests": {"cpu": "50m", "memory": "96Mi"},
            "limits": {"memory": "256Mi"},
        },
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    thash = template_hash(agent.spec.system_prompt, env, options.runtime_image)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(agent, child_names(name)["deployment"]),
        "spec": {
            "replicas": agent.spec.replicas,
            "selector": {"matchLabels": selector_labels(name)},
            "template": {
                "metadata": {
                    "labels": _labels(name),
                    "annotations": {TEMPLATE_HASH_ANNOTATION: thash},
                },
                "spec": {
                    "automountServiceAccountToken": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": RUNTIME_UID,
                        "runAsGroup": RUNTIME_UID,
                        "fsGroup": RUNTIME_UID,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {
                            "name": PROMPT_VOLUME,
                            "configMap": {
                                "name": child_names(name)["configmap"],
                                "items": [{"key": PROMPT_FILE_NAME, "path": PROMPT_FILE_NAME}],
                            },
                        }
                    ],
                },
            },
        },
    }


# --- status ------------------------------------------------------------------------------------


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_precise() -> str:
    """RFC 3339 with microseconds: step times must order events less than a second apart."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(slots=True)
class Conditions:
    """Set conditions by type, keeping ``lastTransitionTime`` unless the status really flips."""

    items: list[dict[str, Any]] = field(default_factory=list)
    generation: int | None = None
    flipped: list[str] = field(default_factory=list)

    def set(self, type_: str, status: bool, reason: str, message: str) -> None:
        value = "True" if status else "False"
        for item in self.items:
            if item.get("type") == type_:
                if item.get("status") != value:
                    item["lastTransitionTime"] = now_iso()
                    self.flipped.append(type_)
                item.update(status=value, reason=reason, message=message)
                if self.generation is not None:
                    item["observedGeneration"] = self.generation
                return
        new = Condition(
            type=type_,
            status=value,
            reason=reason,
            message=message,
            last_transition_time=now_iso(),
            observed_generation=self.generation,
        ).to_k8s()
        self.items.append(new)
        self.flipped.append(type_)

    def get(self, type_: str) -> dict[str, Any] | None:
        return next((c for c in self.items if c.get("type") == type_), None)


def workload_conditions(
    conditions: Conditions,
    desired: int,
    deployment: dict[str, Any] | None,
    decision: ProviderDecision,
) -> None:
    """Ready and Progressing from the Deployment's real status, not from "object written"."""
    if deployment is None:
        conditions.set("Ready", False, "DeploymentMissing", "the Deployment is being (re)created")
        conditions.set("Progressing", True, "Creating", "creating the Deployment")
        return
    status = deployment.get("status") or {}
    ready = int(status.get("readyReplicas") or 0)
    updated = int(status.get("updatedReplicas") or 0)
    available = int(status.get("availableReplicas") or 0)
    total = int(status.get("replicas") or 0)
    observed = int(status.get("observedGeneration") or 0)
    generation = int((deployment.get("metadata") or {}).get("generation") or 0)
    if decision.problem is not None:
        reason, message = decision.problem
        conditions.set("Ready", False, reason, message)
    elif desired == 0:
        conditions.set("Ready", True, "ScaledToZero", "spec.replicas is 0")
    elif ready >= desired:
        conditions.set("Ready", True, "AllReplicasReady", f"{ready}/{desired} replicas ready")
    elif ready > 0:
        conditions.set("Ready", True, "PartiallyReady", f"{ready}/{desired} replicas ready")
    else:
        conditions.set("Ready", False, "NoReadyReplicas", f"0/{desired} replicas ready")
    if observed < generation or updated < desired or available < desired or total > desired:
        conditions.set(
            "Progressing",
            True,
            "RollingOut",
            f"{updated}/{desired} updated, {available} available, {total} total",
        )
    else:
        conditions.set("Progressing", False, "Complete", f"{desired} replicas up to date")
