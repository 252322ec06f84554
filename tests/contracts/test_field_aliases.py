"""The camelCase -> snake_case mapping comes from the model's aliases, and every user agrees on it."""

from __future__ import annotations

from pydantic.alias_generators import to_camel

from contracts.resources import AgentDeploymentSpec, LimitRules, Limits, Usage
from controller.policy import PolicyCache
from policies.effective import BOUND_KEYS, LIMIT_ATTRS


def test_every_limit_field_is_mapped_from_its_alias() -> None:
    mapping = Limits.fields_by_alias()
    assert sorted(mapping.values()) == sorted(Limits.model_fields)
    assert all(alias == to_camel(name) for alias, name in mapping.items())
    assert tuple(mapping) == Limits.NAMES


def test_policy_limit_rules_name_the_same_limits() -> None:
    # The engine reads a policy's LimitRules with the attribute names of Limits.
    assert LimitRules.fields_by_alias() == Limits.fields_by_alias()


def test_explicit_aliases_win_over_the_generated_ones() -> None:
    assert Usage.fields_by_alias()["costUSD"] == "cost_usd"
    assert AgentDeploymentSpec.fields_by_alias()["systemPrompt"] == "system_prompt"


def test_the_engine_bounds_every_limit() -> None:
    assert Limits.fields_by_alias() == LIMIT_ATTRS
    assert {f"limits.{name}.max" for name in Limits.NAMES} <= set(BOUND_KEYS)


def test_the_controller_hands_every_limit_default_to_the_runtime_by_attribute() -> None:
    cache = PolicyCache()
    defaults = {name: {"default": 7 + i} for i, name in enumerate(Limits.NAMES)}
    cache.update_policy(
        {
            "apiVersion": "agentops.agentops.io/v1alpha1",
            "kind": "ClusterAgentPolicy",
            "metadata": {"name": "org"},
            "spec": {"limits": defaults},
        },
        deleted=False,
    )
    view = cache.for_agent("team", {})
    assert dict(view.limit_defaults) == {
        attr: 7 + i for i, attr in enumerate(Limits.fields_by_alias().values())
    }
    # Every key is a Limits field, which is what the runtime's config is rendered from.
    Limits.model_validate(dict(view.limit_defaults))
