"""Pure pipeline scheduling: which steps run next, what their prompt is, and where the pipeline stands.

An AgentPipeline is a DAG of steps.  Everything that decides its course is here and free of I/O,
so :mod:`controller.pipelines` only carries decisions out (Redis, status patches):

* :func:`runnable` - every step whose dependencies all succeeded, all at once;
* :func:`skip_blocked` - steps that can never run because a dependency failed or was skipped, and,
  with ``failFast`` (the default), every step not yet started once any step failed;
* :func:`compose_prompt` - a step's prompt from its ``inputs`` templates (seed syntax, rendered by
  :mod:`contracts.templates`); an input that renders empty is an error reported on the step;
* :func:`pipeline_phase` / :func:`progress`.

Task ids are deterministic, ``<pipeline uid>:<step>:<attempt>``, which is what makes a restart
safe: resubmitting after a crash produces the same id, and the submission script refuses an id it
has already seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from contracts import pipeline_graph, templates
from contracts.resources import AgentPipelineSpec, PipelinePhase, PipelineStep, StepStatus

#: How much of a step's (or the pipeline's) output is kept in status; the rest stays in Redis.
STATUS_OUTPUT_LIMIT = 2048
#: A step without ``timeoutSeconds`` gets this long, waiting for a ready agent included.
DEFAULT_STEP_TIMEOUT = 600
TERMINAL_STEP_PHASES = frozenset({"Succeeded", "Failed", "Skipped"})


class EmptyPromptError(ValueError):
    """A step's input rendered to nothing (e.g. an upstream step produced empty output)."""


def task_id(pipeline_uid: str, step: str, attempt: int) -> str:
    return f"{pipeline_uid}:{step}:{attempt}"


def initial_steps(spec: AgentPipelineSpec, existing: Iterable[StepStatus] = ()) -> dict[str, StepStatus]:
    """Step status in spec order, keeping what status already records (restart-safe resume)."""
    known = {s.name: s for s in existing}
    return {step.name: known.get(step.name) or StepStatus(name=step.name) for step in spec.steps}


def validate_graph(spec: AgentPipelineSpec) -> str | None:
    """A message when a dependency names no step or the steps form a cycle; None when the DAG is sound.

    The webhook refuses such pipelines; this catches one stored before it ran.  A cycle is named in
    the admission rules' words (:func:`contracts.pipeline_graph.cycle_message`).
    """
    deps, unknown = pipeline_graph.dependencies(spec)
    if unknown:
        first = unknown[0]
        return f"step {first.step!r} depends on {first.dependency!r}, which is not a step of this pipeline"
    cycle = pipeline_graph.find_cycle(deps)
    return pipeline_graph.cycle_message(cycle) if cycle else None


def runnable(spec: AgentPipelineSpec, steps: Mapping[str, StepStatus]) -> list[PipelineStep]:
    """Steps not started whose dependencies all succeeded, in spec order."""
    out = []
    for step in spec.steps:
        state = steps[step.name]
        if state.phase not in ("Pending", "Waiting"):
            continue
        if all(steps[d].phase == "Succeeded" for d in step.depends_on):
            out.append(step)
    return out


def skip_blocked(spec: AgentPipelineSpec, steps: Mapping[str, StepStatus]) -> list[str]:
    """Mark steps that can no longer run as Skipped (in place); return their names."""
    skipped: list[str] = []
    failed = [s.name for s in steps.values() if s.phase == "Failed"]
    changed = True
    while changed:
        changed = False
        for step in spec.steps:
            state = steps[step.name]
            if state.phase not in ("Pending", "Waiting"):
                continue
            bad = [d for d in step.depends_on if steps[d].phase in ("Failed", "Skipped")]
            if bad:
                state.phase = "Skipped"
                state.message = f"skipped: dependency {bad[0]!r} {steps[bad[0]].phase.lower()}"
            elif spec.fail_fast and failed:
                state.phase = "Skipped"
                state.message = f"skipped: step {failed[0]!r} failed and failFast is set"
            else:
                continue
            skipped.append(step.name)
            changed = True
    return skipped


def compose_prompt(step: PipelineStep, inputs: Mapping[str, str], outputs: Mapping[str, str]) -> str:
    """The task prompt: ``inputs.prompt`` first, then every other input as ``name: value`` lines.

    Raises :class:`contracts.templates.TemplateError` or :class:`EmptyPromptError`, whose
    messages name the input, so the step's status says what went wrong.
    """
    if not step.inputs:
        raise EmptyPromptError(f"step {step.name!r} has no inputs; set inputs.prompt")
    rendered: dict[str, str] = {}
    for key, template in step.inputs.items():
        try:
            value = templates.render(template, inputs, outputs)
        except templates.TemplateError as exc:
            raise templates.TemplateError(f"input {key!r}: {exc}") from None
        if not value.strip():
            raise EmptyPromptError(f"input {key!r} rendered an empty value from template {template!r}")
        rendered[key] = value
    parts = []
    if "prompt" in rendered:
        parts.append(rendered.pop("prompt"))
    parts.extend(f"{key}: {value}" for key, value in rendered.items())
    return "\n\n".join(parts)


def pipeline_phase(spec: AgentPipelineSpec, steps: Mapping[str, StepStatus]) -> PipelinePhase:
    phases = [s.phase for s in steps.values()]
    if all(p == "Succeeded" for p in phases):
        return "Succeeded"
    if all(p in TERMINAL_STEP_PHASES for p in phases):
        return "Failed"
    if spec.fail_fast and "Failed" in phases:
        return "Failed"
    if any(p in ("Running", "Waiting", "Succeeded", "Failed") for p in phases):
        return "Running"
    return "Pending"


def progress(steps: Mapping[str, StepStatus]) -> str:
    done = sum(1 for s in steps.values() if s.phase == "Succeeded")
    return f"{done}/{len(steps)}"


def truncate(text: str, limit: int = STATUS_OUTPUT_LIMIT) -> tuple[str, bool]:
    if len(text) <= limit:
        return text, False
    return text[:limit] + "\n[truncated; see `agentops pipeline output`]", True
