"""Pipeline templates in the seed article's syntax.

A template refers to ``{{ .pipeline.input.topic }}`` and ``{{ .steps.research.output }}``.

Only these two references exist; anything else between ``{{`` and ``}}`` is an error that names
the position and the text, so the webhook can refuse a pipeline before it runs and the
controller never meets a template it cannot render.  Step names may contain hyphens
(they are DNS labels), which Go templates would not allow; that is deliberate.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

_ACTION = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
_INPUT = re.compile(r"^\.pipeline\.input\.([A-Za-z_][A-Za-z0-9_-]*)$")
_STEP = re.compile(r"^\.steps\.([a-z0-9]([-a-z0-9]*[a-z0-9])?)\.output$")


class TemplateError(ValueError):
    """A template that cannot be parsed or rendered; the message says where and why."""


@dataclass(frozen=True, slots=True)
class Reference:
    kind: Literal["input", "step"]
    name: str
    start: int
    end: int


def parse(template: str) -> list[Reference]:
    """Every reference in ``template``, in order; raises :class:`TemplateError` on bad syntax."""
    refs: list[Reference] = []
    pos = 0
    for match in _ACTION.finditer(template):
        _check_no_stray_braces(template, pos, match.start())
        expr = match.group(1)
        if m := _INPUT.match(expr):
            refs.append(Reference("input", m.group(1), match.start(), match.end()))
        elif m := _STEP.match(expr):
            refs.append(Reference("step", m.group(1), match.start(), match.end()))
        else:
            raise TemplateError(
                f"unsupported expression {{{{ {expr} }}}} at offset {match.start()}: "
                "use {{ .pipeline.input.<key> }} or {{ .steps.<step>.output }}"
            )
        pos = match.end()
    _check_no_stray_braces(template, pos, len(template))
    return refs


def _check_no_stray_braces(template: str, start: int, end: int) -> None:
    for token in ("{{", "}}"):
        at = template.find(token, start, end)
        if at != -1:
            raise TemplateError(f"unbalanced {token!r} at offset {at}")


def render(template: str, inputs: Mapping[str, str], step_outputs: Mapping[str, str]) -> str:
    """Substitute every reference; a missing input or step output raises :class:`TemplateError`."""
    parts: list[str] = []
    pos = 0
    for ref in parse(template):
        parts.append(template[pos : ref.start])
        source = inputs if ref.kind == "input" else step_outputs
        if ref.name not in source:
            what = "pipeline input" if ref.kind == "input" else "output of step"
            raise TemplateError(f"{what} {ref.name!r} is not available")
        parts.append(source[ref.name])
        pos = ref.end
    parts.append(template[pos:])
    return "".join(parts)
