"""Pipeline templates in the seed's syntax (pure: no server)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from contracts.templates import Reference, TemplateError, parse, render


def test_seed_templates_parse_and_render() -> None:
    assert parse("Research this topic: {{ .pipeline.input.topic }}") == [Reference("input", "topic", 21, 48)]
    assert render("Research this topic: {{ .pipeline.input.topic }}", {"topic": "AI in healthcare"}, {}) == (
        "Research this topic: AI in healthcare"
    )
    assert render("Summarize these findings: {{ .steps.research.output }}", {}, {"research": "R"}) == (
        "Summarize these findings: R"
    )
    assert render("{{ .steps.summarize.output }}", {}, {"summarize": "S"}) == "S"


def test_whitespace_trim_markers_and_hyphenated_steps() -> None:
    refs = parse("{{-.steps.fetch-data.output-}} and {{.pipeline.input.user_id}}")
    assert [(r.kind, r.name) for r in refs] == [("step", "fetch-data"), ("input", "user_id")]


def test_text_without_references_is_unchanged() -> None:
    assert parse("plain text, no braces") == []
    assert render("plain text", {"x": "y"}, {}) == "plain text"


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("{{ .pipeline.secret }}", "unsupported expression {{ .pipeline.secret }} at offset 0"),
        ("a {{ .steps.x.input }}", "unsupported expression {{ .steps.x.input }} at offset 2"),
        ('{{ printf "%s" .x }}', "use {{ .pipeline.input.<key> }} or {{ .steps.<step>.output }}"),
        ("{{ .steps.Research.output }}", "unsupported expression"),
        ("open {{ .pipeline.input.a", "unbalanced '{{' at offset 5"),
        ("close }} here", "unbalanced '}}' at offset 6"),
        ("{{ .pipeline.input.a }} }}", "unbalanced '}}' at offset 24"),
    ],
)
def test_bad_templates_name_position_and_text(template: str, message: str) -> None:
    with pytest.raises(TemplateError) as err:
        parse(template)
    assert message in str(err.value)


def test_missing_values_are_named() -> None:
    with pytest.raises(TemplateError, match="pipeline input 'topic' is not available"):
        render("{{ .pipeline.input.topic }}", {}, {})
    with pytest.raises(TemplateError, match="output of step 'research' is not available"):
        render("{{ .steps.research.output }}", {"topic": "x"}, {})


_plain = st.text(st.characters(blacklist_characters="{}"), max_size=30)


@given(parts=st.lists(st.tuples(_plain, st.sampled_from(["a", "b"])), max_size=5), tail=_plain)
def test_render_substitutes_exactly_the_references(parts: list[tuple[str, str]], tail: str) -> None:
    values = {"a": "{{ not a template }}", "b": ""}
    template = "".join(f"{text}{{{{ .pipeline.input.{key} }}}}" for text, key in parts) + tail
    expected = "".join(text + values[key] for text, key in parts) + tail
    # Substituted values are data: braces inside them are never parsed again.
    assert render(template, values, {}) == expected
