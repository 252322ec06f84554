"""The one reading of a pipeline's step graph: dependencies, the first cycle, ancestors."""

from __future__ import annotations

from typing import Any

import pytest

from contracts import pipeline_graph
from contracts.resources import AgentPipelineSpec


def spec(*steps: tuple[str, list[str]]) -> AgentPipelineSpec:
    return AgentPipelineSpec.model_validate(
        {"steps": [{"name": n, "agentDeployment": "agent", "dependsOn": d} for n, d in steps]}
    )


def test_dependencies_keep_order_drop_repeats_and_report_unknown_steps() -> None:
    deps, unknown = pipeline_graph.dependencies(
        spec(("a", []), ("b", ["a", "a", "ghost"]), ("c", ["b", "a"]))
    )
    assert deps == {"a": [], "b": ["a"], "c": ["b", "a"]}
    assert unknown == [pipeline_graph.UnknownDependency(1, "b", "ghost")]


@pytest.mark.parametrize(
    ("steps", "cycle"),
    [
        ((("a", ["b"]), ("b", ["a"])), ["a", "b", "a"]),
        ((("a", ["a"]),), ["a", "a"]),
        ((("x", []), ("a", ["c"]), ("b", ["a"]), ("c", ["b"])), ["a", "c", "b", "a"]),
        ((("a", []), ("b", ["a"]), ("c", ["a", "b"])), None),
    ],
)
def test_the_first_cycle_in_declaration_order_is_named_closed(steps: Any, cycle: list[str] | None) -> None:
    deps, _ = pipeline_graph.dependencies(spec(*steps))
    assert pipeline_graph.find_cycle(deps) == cycle


def test_a_cycle_message_names_the_cycle() -> None:
    assert pipeline_graph.cycle_message(["a", "b", "a"]) == "spec.steps: dependency cycle a -> b -> a"


def test_ancestors_are_transitive() -> None:
    deps, _ = pipeline_graph.dependencies(spec(("a", []), ("b", ["a"]), ("c", ["b"]), ("d", [])))
    assert pipeline_graph.ancestors(deps) == {"a": set(), "b": {"a"}, "c": {"a", "b"}, "d": set()}
