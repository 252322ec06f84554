"""Structural checks of an AgentPipeline: step names, dependencies, cycles and templates.

These are correctness rules, not policy: a pipeline that breaks one could never run, so it is
refused whatever mode the matching policies use.  The one exception is a step naming an
AgentDeployment that does not exist yet, which only draws a warning because GitOps tools do not
guarantee that agents are applied before the pipelines that use them.
"""

from __future__ import annotations

from collections.abc import Mapping

from contracts import templates
from contracts.resources import AgentPipelineSpec


def pipeline_problems(
    spec: AgentPipelineSpec, namespace: str | None, known_agents: frozenset[tuple[str, str]] | None
) -> tuple[list[str], list[str]]:
    """``(errors, warnings)`` of a pipeline spec; ``known_agents=None`` skips the existence check."""
    errors: list[str] = []
    warnings: list[str] = []
    names = [step.name for step in spec.steps]
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            errors.append(
                f'spec.steps[{i}].name: "{name}" is used by more than one step; names must be unique'
            )
        seen.add(name)

    deps: dict[str, list[str]] = {}
    for i, step in enumerate(spec.steps):
        own = deps.setdefault(step.name, [])
        for dep in step.depends_on:
            if dep not in seen:
                errors.append(f'spec.steps[{i}].dependsOn: "{dep}" is not a step of this pipeline')
            elif dep not in own:
                own.append(dep)

    cycle = _find_cycle(names, deps)
    if cycle:
        errors.append(f"spec.steps: dependency cycle {' -> '.join(cycle)}")

    ancestors = _ancestors(deps) if not cycle else {name: set(deps.get(name, ())) for name in names}
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
        if (
            known_agents is not None
            and namespace is not None
            and (namespace, step.agent_deployment) not in known_agents
        ):
            warnings.append(
                f'spec.steps[{i}].agentDeployment: AgentDeployment "{step.agent_deployment}" does not exist '
                f'in namespace "{namespace}" yet; the step waits until it does'
            )
    if spec.output is not None:
        errors.extend(_template_problems("spec.output", spec.output, input_keys, seen, seen, None))
    return errors, warnings


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


def _find_cycle(names: list[str], deps: Mapping[str, list[str]]) -> list[str] | None:
    """The first dependency cycle found, in declaration order, closed (``a -> b -> a``)."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in deps.get(node, ()):
            if state.get(dep) == 1:
                return [*path[path.index(dep) :], dep]
            if dep not in state and (found := visit(dep)):
                return found
        path.pop()
        state[node] = 2
        return None

    for name in names:
        if name not in state and (found := visit(name)):
            return found
    return None


def _ancestors(deps: Mapping[str, list[str]]) -> dict[str, set[str]]:
    """Every step each step depends on, directly or transitively (the graph is acyclic here)."""
    memo: dict[str, set[str]] = {}

    def of(node: str) -> set[str]:
        if node not in memo:
            found: set[str] = set()
            for dep in deps.get(node, ()):
                found.add(dep)
                found |= of(dep)
            memo[node] = found
        return memo[node]

    return {name: of(name) for name in deps}
