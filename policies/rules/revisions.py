"""AgentPromptRevision: the controller's record of one prompt, immutable once written.

Its ``sha256`` must be the prompt's, and on UPDATE its spec must not change (only metadata such
as labels may).  A revision is never ratcheted: it cannot have drifted under a policy change,
and a stored revision whose hash is wrong must not become editable.
"""

from __future__ import annotations

from contracts.resources import AgentPromptRevision, prompt_sha256
from policies.review import AdmissionRequest, PolicySet
from policies.rules.base import Checked, Rules, model_parser
from policies.verdict import Finding


def check(request: AdmissionRequest, revision: AgentPromptRevision, policies: PolicySet) -> Checked:
    found: list[Finding] = []
    if prompt_sha256(revision.spec.prompt) != revision.spec.sha256:
        found.append(Finding("spec.sha256: is not the sha256 of spec.prompt's UTF-8 bytes", None))
    old_spec = request.old_object.get("spec") if request.old_object is not None else None
    new_spec = request.object.get("spec") if request.object is not None else None
    if request.operation == "UPDATE" and old_spec != new_spec:
        found.append(
            Finding(
                f"spec: AgentPromptRevision is immutable; revision {revision.spec.revision} of agent "
                f'"{revision.spec.agent}" cannot be changed (only metadata such as labels may be)',
                None,
            )
        )
    return (found, [])


RULES: Rules[AgentPromptRevision] = Rules(parse=model_parser(AgentPromptRevision), check=check)
