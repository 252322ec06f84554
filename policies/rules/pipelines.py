"""AgentPipeline: structure (step names, dependencies, cycles, templates) and ``pipelines.maxSteps``.

The structural checks are correctness rules, not policy: a pipeline that breaks one could never
run, so it is refused whatever mode the matching policies use.  The one exception is a step naming
an AgentDeployment that does not exist yet, which only draws a warning because GitOps tools do not
guarantee that agents are applied before the pipelines that use them.  The step graph itself is
read by :mod:`contracts.pipeline_graph`, which the controller uses too.
"""

from __future__ import annotations

from collections.abc import Mapping

from contracts import pipeline_graph, templates
from contracts.resources import AgentPipeline, AgentPipelineSpec
from policies.effective import EffectivePolicy
from policies.review import AdmissionRequest, PolicySet
from policies.rules.base import Checked, Rules, bound_findings, effective_for, model_parser
from policies.verdict import Finding


def structure_problems(spec: AgentPipelineSpec) -> list[str]:
    """Why a pipeline could never run: duplicate names, unknown dependencies, a cycle, templates."""
    errors: list[str] = []
    seen: set[str] = set()
    for i, step in enumerate(spec.steps):
        if step.name in seen:
            errors.append(
                f'spec.steps[{i}].name: "{step.name}" is used by more than one step; names must be unique'
            )
        seen.add(step.name)

    deps, unknown = pipeline_graph.dependencies(spec)
    errors += [
        f'spec.steps[{u.index}].dependsOn: "{u.dependency}" is not a step of this pipeline' for u in unknown
    ]
    cycle = pipeline_graph.find_cycle(deps)
    if cycle:
        errors.append(pipeline_graph.cycle_message(cycle))

    ancestors = (
        pipeline_graph.ancestors(deps) if not cycle else {name: set(deps.get(name, ())) for name in seen}
    )
    input_keys = spec.input
    for i, step in enumerate(spec.steps):
        for key, template in step.inputs.items():
            errors.extend(
                _template_problems(
                    f"spec.steps[{i}].inputs.{key}",
                    template,
                    input_keys,
                    seen,
                    ancestors[step.name],
                    step.name,
                )
            )
    if spec.output is not None:
        errors.extend(_template_problems("spec.output", spec.output, input_keys, seen, seen, None))
    return errors


def missing_agents(
    spec: AgentPipelineSpec, namespace: str | None, known_agents: frozenset[tuple[str, str]]
) -> list[str]:
    """Warnings for steps naming an AgentDeployment the webhook has not seen in ``namespace``."""
    if namespace is None:
        return []
    return [
        f'spec.steps[{i}].agentDeployment: AgentDeployment "{step.agent_deployment}" does not exist '
        f'in namespace "{namespace}" yet; the step waits until it does'
        for i, step in enumerate(spec.steps)
        if (namespace, step.agent_deployment) not in known_agents
    ]


def size_findings(spec: AgentPipelineSpec, eff: EffectivePolicy) -> list[Finding]:
    """``pipelines.maxSteps``: the most severe ceiling the number of steps exceeds."""
    return bound_findings(
        "pipelines.maxSteps",
        "spec.steps",
        len(spec.steps),
        eff.ceilings.get("pipelines.maxSteps", ()),
        " steps",
    )


def stored(request: AdmissionRequest, pipeline: AgentPipeline, policies: PolicySet) -> list[Finding]:
    findings = [Finding(m, None) for m in structure_problems(pipeline.spec)]
    return findings + size_findings(pipeline.spec, effective_for(request, pipeline.metadata.labels, policies))


def check(request: AdmissionRequest, pipeline: AgentPipeline, policies: PolicySet) -> Checked:
    return (
        stored(request, pipeline, policies),
        missing_agents(pipeline.spec, request.namespace, policies.known_agents),
    )


def _template_problems(
    field: str,
    template: str,
    input_keys: Mapping[str, str],
    steps: set[str],
    reachable: set[str],
    step: str | None,
) -> list[str]:
    try:
        refs = templates.parse(template)
    except templates.TemplateError as err:
        return [f"{field}: {err}"]
    problems: list[str] = []
    for ref in refs:
        if ref.kind == "input":
            if ref.name not in input_keys:
                known = ", ".join(sorted(input_keys)) or "none"
                problems.append(
                    f"{field}: refers to .pipeline.input.{ref.name}, which is not a key of spec.input "
                    f"(keys: {known})"
                )
        elif ref.name not in steps:
            problems.append(
                f'{field}: refers to the output of step "{ref.name}", which is not a step of this pipeline'
            )
        elif ref.name not in reachable:
            problems.append(
                f'{field}: refers to the output of step "{ref.name}", which step "{step}" does not '
                f'depend on; add "{ref.name}" to its dependsOn'
            )
    return problems


RULES: Rules[AgentPipeline] = Rules(parse=model_parser(AgentPipeline), check=check, stored=stored)
