"""Scale (``kubectl scale`` on an AgentDeployment): ``spec.replicas`` against ``replicas.max``.

The request's object is an ``autoscaling/v1`` Scale, not our model, so it is read by hand; the
selectors apply to the AgentDeployment's labels, which the webhook passes as
``AdmissionRequest.target_labels``.  An unchanged replica count is ratcheted like any other
object finding: the stored Scale drew the very same message.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from policies.review import AdmissionRequest, PolicySet
from policies.rules.base import Checked, Parsed, Rules, bound_findings, effective_for
from policies.stamps import is_mapping
from policies.verdict import Finding


def parse(obj: Mapping[str, Any] | None) -> Parsed[int]:
    spec = obj.get("spec") if obj else None
    # autoscaling/v1 omits zero values: `kubectl scale --replicas=0` sends no spec.replicas at all
    # (and may send no spec).
    replicas = spec.get("replicas", 0) if is_mapping(spec) else 0 if obj and spec is None else None
    if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas >= 0:
        return replicas, []
    return None, ["spec.replicas: a Scale request must carry a non-negative integer spec.replicas"]


def stored(request: AdmissionRequest, replicas: int, policies: PolicySet) -> list[Finding]:
    eff = effective_for(request, request.target_labels or {}, policies)
    return bound_findings("replicas.max", "spec.replicas", replicas, eff.ceilings.get("replicas.max", ()))


def check(request: AdmissionRequest, replicas: int, policies: PolicySet) -> Checked:
    return (stored(request, replicas, policies), [])


RULES: Rules[int] = Rules(parse=parse, check=check, stored=stored)
