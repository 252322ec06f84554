"""AgentPipeline rules: names, dependencies, cycles, templates, unknown agents, step count."""

from __future__ import annotations

from typing import Any

import pytest

from policies.engine import PolicySet, mutate, validate
from tests.policies.builders import NAMESPACE, cluster_policy, pipeline, policies, request, step

KNOWN = frozenset({(NAMESPACE, "researcher"), (NAMESPACE, "summarizer")})
WITH_AGENTS = PolicySet(known_agents=KNOWN)


def seed_pipeline() -> dict[str, Any]:
    return pipeline(
        [
            step("research", "researcher", prompt="Research this topic: {{ .pipeline.input.topic }}"),
            step("summarize", "summarizer", ["research"], prompt="Summarize: {{ .steps.research.output }}"),
        ],
        inputs={"topic": "AI in healthcare"},
        output="{{ .steps.summarize.output }}",
    )


def test_the_seed_pipeline_is_allowed_and_never_patched() -> None:
    decision = validate(request(seed_pipeline()), WITH_AGENTS)
    assert decision.allowed
    assert decision.warnings == ()
    assert mutate(request(seed_pipeline()), WITH_AGENTS).patch == ()


def test_a_step_naming_an_unknown_agent_only_warns() -> None:
    decision = validate(
        request(seed_pipeline()), PolicySet(known_agents=frozenset({(NAMESPACE, "researcher")}))
    )
    assert decision.allowed
    assert decision.warnings == (
        'spec.steps[1].agentDeployment: AgentDeployment "summarizer" does not exist in namespace "team" yet; '
        "the step waits until it does",
    )


CASES = [
    pytest.param(
        [step("a"), step("a")],
        {},
        None,
        'spec.steps[1].name: "a" is used by more than one step; names must be unique',
        id="duplicate-name",
    ),
    pytest.param(
        [step("a", depends_on=["ghost"])],
        {},
        None,
        'spec.steps[0].dependsOn: "ghost" is not a step of this pipeline',
        id="unknown-dependency",
    ),
    pytest.param(
        [step("a", depends_on=["b"]), step("b", depends_on=["a"])],
        {},
        None,
        "spec.steps: dependency cycle a -> b -> a",
        id="cycle",
    ),
    pytest.param(
        [step("x"), step("a", depends_on=["c"]), step("b", depends_on=["a"]), step("c", depends_on=["b"])],
        {},
        None,
        "spec.steps: dependency cycle a -> c -> b -> a",
        id="long-cycle",
    ),
    pytest.param(
        [step("a", depends_on=["a"])], {}, None, "spec.steps: dependency cycle a -> a", id="self-cycle"
    ),
    pytest.param(
        [step("a", prompt="{{ .pipeline.input.topic ")],
        {"topic": "t"},
        None,
        "spec.steps[0].inputs.prompt: unbalanced '{{' at offset 0",
        id="unbalanced",
    ),
    pytest.param(
        [step("a", prompt="{{ .Values.x }}")],
        {},
        None,
        "spec.steps[0].inputs.prompt: unsupported expression {{ .Values.x }} at offset 0: "
        "use {{ .pipeline.input.<key> }} or {{ .steps.<step>.output }}",
        id="unsupported-expression",
    ),
    pytest.param(
        [step("a", prompt="{{ .pipeline.input.subject }}")],
        {"topic": "t"},
        None,
        "spec.steps[0].inputs.prompt: refers to .pipeline.input.subject, which is not a key of spec.input "
        "(keys: topic)",
        id="unknown-input",
    ),
    pytest.param(
        [step("a"), step("b", prompt="{{ .steps.a.output }}")],
        {},
        None,
        'spec.steps[1].inputs.prompt: refers to the output of step "a", which step "b" does not depend on; '
        'add "a" to its dependsOn',
        id="not-a-dependency",
    ),
    pytest.param(
        [step("a", prompt="{{ .steps.zzz.output }}")],
        {},
        None,
        'spec.steps[0].inputs.prompt: refers to the output of step "zzz", '
        "which is not a step of this pipeline",
        id="unknown-step-ref",
    ),
    pytest.param(
        [step("a")],
        {},
        "{{ .steps.b.output }}",
        'spec.output: refers to the output of step "b", which is not a step of this pipeline',
        id="output-unknown-step",
    ),
]


@pytest.mark.parametrize(("steps", "inputs", "output", "message"), CASES)
def test_broken_pipelines_are_denied_whatever_the_mode(
    steps: list[dict[str, Any]], inputs: dict[str, str], output: str | None, message: str
) -> None:
    obj = pipeline(steps, inputs=inputs, output=output)
    lenient = PolicySet(cluster=(cluster_policy("lenient", "Audit"),), known_agents=KNOWN)
    decision = validate(request(obj), lenient)
    assert not decision.allowed
    assert message in decision.denials, decision.denials


def test_transitive_dependencies_and_any_step_in_output_are_allowed() -> None:
    obj = pipeline(
        [
            step("a", prompt="{{ .pipeline.input.topic }}"),
            step("b", depends_on=["a"], prompt="{{ .steps.a.output }}"),
            step("c", depends_on=["b"], prompt="{{ .steps.a.output }} and {{ .steps.b.output }}"),
            step("d", prompt="independent"),
        ],
        inputs={"topic": "t"},
        output="{{ .steps.c.output }} {{ .steps.d.output }} {{ .pipeline.input.topic }}",
    )
    decision = validate(request(obj), WITH_AGENTS)
    assert decision.allowed, decision.denials


def test_step_count_ceiling_follows_the_policy_mode() -> None:
    obj = pipeline([step("a"), step("b"), step("c")])
    enforce = PolicySet(cluster=(cluster_policy("org", pipelines={"maxSteps": 2}),), known_agents=KNOWN)
    assert validate(request(obj), enforce).denials == (
        "spec.steps: 3 steps exceeds 2 set by ClusterAgentPolicy/org",
    )
    warn = PolicySet(cluster=(cluster_policy("org", "Warn", pipelines={"maxSteps": 2}),), known_agents=KNOWN)
    decision = validate(request(obj), warn)
    assert decision.allowed
    assert decision.warnings == ("spec.steps: 3 steps exceeds 2 set by ClusterAgentPolicy/org",)


def test_pipeline_selector_uses_pipeline_labels() -> None:
    obj = pipeline([step("a"), step("b")])
    ps = policies(
        cluster_policy("big", selector={"matchLabels": {"size": "small"}}, pipelines={"maxSteps": 1})
    )
    assert validate(request(obj), ps).allowed
    obj["metadata"]["labels"] = {"size": "small"}
    assert not validate(request(obj), ps).allowed


def test_malformed_pipeline_is_denied_naming_the_field() -> None:
    obj = pipeline([{"name": "Bad Name", "agentDeployment": "researcher"}])
    decision = validate(request(obj), WITH_AGENTS)
    assert decision.denials == (
        "spec.steps[0].name: String should match pattern '^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'",
    )
