"""Pure tests of what an agent's pods look like: environment, prompt file, probes, rollout hash."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.resources import AgentDeployment, Budget, SecretKeyRef
from contracts.runtime_env import API_KEY_ENV, DEFAULT_PROMPT_FILE, RuntimeConfig
from controller import render


def agent(**spec: Any) -> AgentDeployment:
    body = {
        "metadata": {"name": "research-agent", "namespace": "team-a", "uid": "u-1", "generation": 1},
        "spec": {
            "model": "claude-sonnet-4-20250514",
            "systemPrompt": "You are a research agent.",
            "limits": {"maxTokensPerCall": 8000, "maxConcurrentTasks": 5, "timeoutSeconds": 120},
            **spec,
        },
    }
    return AgentDeployment.model_validate(body)


def rendered(a: AgentDeployment, options: render.RenderOptions | None = None, **kw: Any) -> dict[str, Any]:
    opts = options or render.RenderOptions(redis_url="redis://r:6379/0")
    decision = render.decide_provider(a, kw.pop("secret_exists", True), opts)
    config = render.runtime_config(a, decision, opts, kw.pop("budget", None))
    return render.render_deployment(a, config, decision, opts)


def env_of(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_environment_is_exactly_the_runtime_contract_with_every_limit_and_budget() -> None:
    a = agent(credentials={"secretRef": {"name": "anthropic", "key": "key"}})
    env = env_of(rendered(a, budget=Budget(tokens=1000, cost_usd=5, period="day", scope="Agent")))
    plain = {k: v for k, v in env.items() if isinstance(v, str)}
    config = RuntimeConfig.from_env(plain)
    assert (config.max_tokens_per_call, config.max_concurrent_tasks, config.timeout_seconds) == (8000, 5, 120)
    assert (config.budget_tokens, config.budget_cost_usd, config.budget_period) == (1000, 5.0, "day")
    assert config.provider == "anthropic"
    assert config.prompt_file == DEFAULT_PROMPT_FILE
    assert env[API_KEY_ENV] == {"secretKeyRef": {"name": "anthropic", "key": "key"}}
    assert env["AGENTOPS_WORKER_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_prompt_is_a_mounted_configmap_file_and_pods_run_as_non_root() -> None:
    a = agent()
    dep = rendered(a)
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["volumeMounts"][0]["mountPath"] + "/system-prompt" == DEFAULT_PROMPT_FILE
    assert pod["volumes"][0]["configMap"]["name"] == "research-agent-prompt"
    assert render.render_configmap(a)["data"]["system-prompt"] == "You are a research agent."
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert dep["metadata"]["ownerReferences"][0]["uid"] == "u-1"


def test_probe_timings_follow_the_spec() -> None:
    a = agent(livenessProbe={"type": "semantic", "intervalSeconds": 45, "validatorPrompt": "say HEALTHY"})
    container = rendered(a)["spec"]["template"]["spec"]["containers"][0]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["livenessProbe"]["periodSeconds"] == 45
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["periodSeconds"] == 10
    assert env_of(rendered(a))["AGENTOPS_PROBE_TYPE"] == "semantic"


def _hash(a: AgentDeployment) -> str:
    return str(rendered(a)["spec"]["template"]["metadata"]["annotations"][render.TEMPLATE_HASH_ANNOTATION])


def test_prompt_model_or_limit_change_rolls_the_pods_but_replicas_do_not() -> None:
    base = _hash(agent())
    assert _hash(agent(systemPrompt="Another prompt")) != base
    assert _hash(agent(model="claude-opus-4")) != base
    assert (
        _hash(agent(limits={"maxTokensPerCall": 8000, "maxConcurrentTasks": 6, "timeoutSeconds": 120}))
        != base
    )
    assert _hash(agent(replicas=7)) == base


@pytest.mark.parametrize(
    ("credentials", "secret_exists", "fallback", "provider", "display", "problem"),
    [
        (None, None, True, "offline", "offline (no API key)", None),
        (None, None, False, "anthropic", "anthropic", "NoCredentials"),
        ({"secretRef": {"name": "k"}}, True, True, "anthropic", "anthropic", None),
        ({"secretRef": {"name": "k"}}, False, False, "anthropic", "anthropic", "SecretNotFound"),
        ({"secretRef": {"name": "k"}}, False, True, "anthropic", "anthropic", "SecretNotFound"),
    ],
)
def test_provider_decision(
    credentials: Any,
    secret_exists: bool | None,
    fallback: bool,
    provider: str,
    display: str,
    problem: str | None,
) -> None:
    spec = {"credentials": credentials} if credentials else {}
    decision = render.decide_provider(
        agent(**spec), secret_exists, render.RenderOptions(offline_fallback=fallback)
    )
    assert (decision.provider, decision.display) == (provider, display)
    assert (decision.problem[0] if decision.problem else None) == problem


def test_default_secret_serves_agents_without_credentials() -> None:
    options = render.RenderOptions(default_secret=SecretKeyRef(name="anthropic-api-key"))
    decision = render.decide_provider(agent(), True, options)
    assert decision.provider == "anthropic"
    assert decision.secret == SecretKeyRef(name="anthropic-api-key")


def test_missing_limits_fall_back_to_policy_defaults() -> None:
    a = agent(limits=None)
    opts = render.RenderOptions()
    decision = render.decide_provider(a, None, render.RenderOptions(offline_fallback=True))
    config = render.runtime_config(a, decision, opts, None, {"max_tokens_per_call": 1234})
    assert config.max_tokens_per_call == 1234
    assert config.max_concurrent_tasks == render.FALLBACK_LIMITS["max_concurrent_tasks"]


def test_conditions_keep_transition_time_unless_status_flips() -> None:
    conditions = render.Conditions()
    conditions.set("Ready", False, "NoReadyReplicas", "0/1")
    first = dict(conditions.items[0])
    conditions.flipped.clear()
    conditions.set("Ready", False, "NoReadyReplicas", "0/1")
    assert conditions.items[0] == first
    assert conditions.flipped == []
    conditions.set("Ready", True, "AllReplicasReady", "1/1")
    assert conditions.flipped == ["Ready"]
