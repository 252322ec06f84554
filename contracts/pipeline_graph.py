"""The step graph of an AgentPipeline: who depends on whom, the first dependency cycle, ancestors.

One reading of ``dependsOn`` for everyone: the admission rules refuse a pipeline whose graph is
broken, and the controller checks again before it schedules a pipeline stored before the webhook
ran.  Both report a cycle with :func:`cycle_message`, so the user reads the same words in the
``kubectl apply`` denial and in the pipeline's ``InvalidGraph`` condition.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from contracts.resources import AgentPipelineSpec


@dataclass(frozen=True, slots=True)
class UnknownDependency:
    """A ``dependsOn`` entry naming no step: ``spec.steps[index]`` (named ``step``) names ``dependency``."""

    index: int
    step: str
    dependency: str


def dependencies(spec: AgentPipelineSpec) -> tuple[dict[str, list[str]], list[UnknownDependency]]:
    """Step name -> the steps it depends on (known steps only, each once, in declaration order),
    and every dependency that names no step.

    Every step is a key, in declaration order; steps sharing a name (refused elsewhere) share one
    entry, so the graph stays well defined.
    """
    names = {step.name for step in spec.steps}
    deps: dict[str, list[str]] = {}
    unknown: list[UnknownDependency] = []
    for i, step in enumerate(spec.steps):
        own = deps.setdefault(step.name, [])
        for dep in step.depends_on:
            if dep not in names:
                unknown.append(UnknownDependency(i, step.name, dep))
            elif dep not in own:
                own.append(dep)
    return deps, unknown


def find_cycle(deps: Mapping[str, Sequence[str]]) -> list[str] | None:
    """The first dependency cycle, searching steps in declaration order, closed (``a -> b -> a``)."""
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

    for name in deps:
        if name not in state and (found := visit(name)):
            return found
    return None


def cycle_message(cycle: Sequence[str]) -> str:
    """What a user is told about a cycle, naming it: ``spec.steps: dependency cycle a -> b -> a``."""
    return f"spec.steps: dependency cycle {' -> '.join(cycle)}"


def ancestors(deps: Mapping[str, Sequence[str]]) -> dict[str, set[str]]:
    """Every step each step depends on, directly or transitively; ``deps`` must be acyclic."""
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
