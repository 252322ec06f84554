"""Pure tests of pipeline scheduling: what runs next, what is skipped, prompts, phase."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from contracts.resources import AgentPipelineSpec, StepStatus
from contracts.templates import TemplateError
from controller import dag
from policies.engine import AdmissionRequest, PolicySet, UserInfo, validate


def spec(*steps: dict[str, Any], fail_fast: bool = True) -> AgentPipelineSpec:
    return AgentPipelineSpec.model_validate(
        {"input": {"topic": "AI"}, "steps": list(steps), "failFast": fail_fast}
    )


def step(name: str, *deps: str, prompt: str = "do {{ .pipeline.input.topic }}") -> dict[str, Any]:
    return {"name": name, "agentDeployment": "agent", "dependsOn": list(deps), "inputs": {"prompt": prompt}}


DIAMOND = spec(step("a"), step("b"), step("c", "a", "b"), step("d", "c"))


def test_independent_steps_are_runnable_together_and_dependents_wait() -> None:
    steps = dag.initial_steps(DIAMOND)
    assert [s.name for s in dag.runnable(DIAMOND, steps)] == ["a", "b"]
    steps["a"].phase = "Succeeded"
    assert [s.name for s in dag.runnable(DIAMOND, steps)] == ["b"]
    steps["b"].phase = "Succeeded"
    assert [s.name for s in dag.runnable(DIAMOND, steps)] == ["c"]


def test_fail_fast_skips_everything_not_started() -> None:
    steps = dag.initial_steps(DIAMOND)
    steps["a"].phase = "Failed"
    assert dag.skip_blocked(DIAMOND, steps) == ["b", "c", "d"]
    assert dag.pipeline_phase(DIAMOND, steps) == "Failed"


def test_without_fail_fast_independent_steps_continue() -> None:
    s = spec(step("a"), step("b"), step("c", "a"), fail_fast=False)
    steps = dag.initial_steps(s)
    steps["a"].phase = "Failed"
    assert dag.skip_blocked(s, steps) == ["c"]
    assert [x.name for x in dag.runnable(s, steps)] == ["b"]
    assert dag.pipeline_phase(s, steps) == "Running"
    steps["b"].phase = "Succeeded"
    assert dag.pipeline_phase(s, steps) == "Failed"


def test_resume_keeps_recorded_step_status() -> None:
    recorded = [StepStatus(name="a", phase="Succeeded", attempts=1), StepStatus(name="gone")]
    steps = dag.initial_steps(DIAMOND, recorded)
    assert steps["a"].phase == "Succeeded"
    assert set(steps) == {"a", "b", "c", "d"}


def test_task_ids_are_deterministic() -> None:
    assert dag.task_id("uid", "research", 2) == "uid:research:2"


def test_prompt_from_templates_and_empty_values_are_reported() -> None:
    s = step("c", "a", prompt="Summarize: {{ .steps.a.output }}")
    from contracts.resources import PipelineStep

    model = PipelineStep.model_validate({**s, "inputs": {"prompt": s["inputs"]["prompt"], "style": "short"}})
    assert dag.compose_prompt(model, {}, {"a": "facts"}) == "Summarize: facts\n\nstyle: short"
    empty = PipelineStep.model_validate({**s, "inputs": {"prompt": "{{ .steps.a.output }}"}})
    with pytest.raises(dag.EmptyPromptError, match="rendered an empty value"):
        dag.compose_prompt(empty, {}, {"a": "  "})
    with pytest.raises(TemplateError, match="not available"):
        dag.compose_prompt(model, {}, {})


def test_graph_validation_names_cycles_and_unknown_steps() -> None:
    assert dag.validate_graph(DIAMOND) is None
    msg = dag.validate_graph(spec(step("a", "b"), step("b", "a")))
    assert msg is not None
    assert "cycle" in msg
    msg = dag.validate_graph(spec(step("a", "nope")))
    assert msg is not None
    assert "'nope'" in msg


def test_progress_and_truncation() -> None:
    steps = dag.initial_steps(DIAMOND)
    steps["a"].phase = "Succeeded"
    assert dag.progress(steps) == "1/4"
    text, cut = dag.truncate("x" * (dag.STATUS_OUTPUT_LIMIT + 1))
    assert cut
    assert text.startswith("x" * dag.STATUS_OUTPUT_LIMIT)
    assert "agentops pipeline output" in text


@pytest.mark.parametrize(
    "steps",
    [
        (step("a", "b"), step("b", "a")),
        (step("a", "a"),),
        (step("x"), step("a", "c"), step("b", "a"), step("c", "b")),
    ],
)
def test_a_cycle_is_named_in_the_admission_rules_words(steps: tuple[dict[str, Any], ...]) -> None:
    # The controller's InvalidGraph condition and the webhook's denial read the same.
    pipeline = {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPipeline",
        "metadata": {"name": "p", "namespace": "team"},
        "spec": {"input": {"topic": "AI"}, "steps": list(steps)},
    }
    admission = validate(
        AdmissionRequest(
            uid="u",
            kind="AgentPipeline",
            operation="CREATE",
            namespace="team",
            name="p",
            object=pipeline,
            old_object=None,
            user=UserInfo("alice"),
            now=datetime(2026, 1, 2, tzinfo=UTC),
        ),
        PolicySet(),
    )
    message = dag.validate_graph(spec(*steps))
    assert message is not None
    assert message.startswith("spec.steps: dependency cycle ")
    assert message in admission.denials
