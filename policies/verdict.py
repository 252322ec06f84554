"""From findings to a decision: the one place where a policy's mode and the ratchet are applied.

A violation of an Enforce policy denies, of a Warn policy becomes an admission warning, of an
Audit policy is returned in ``Decision.audit`` (and recorded on the object by mutate).  Errors
(``mode=None``: unparseable objects, missing limits without a default, broken pipelines,
loosening AgentPolicies, forged stamps) deny whatever the mode.

Ratchet: on UPDATE, a denial the stored object already drew (the policy was tightened after it
was admitted) is downgraded to a warning ending in :data:`RATCHET_NOTE`, so finalizer removal,
label edits and the controller's own writes keep working until the offending field itself is
changed.  Which findings may be ratcheted is the rules' business (see :mod:`policies.rules`);
this module only compares messages.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import NamedTuple

from contracts.resources import PolicyMode
from policies.review import Decision

RATCHET_NOTE = " (already so before this change: allowed until this field changes)"


class Finding(NamedTuple):
    """One violation: its message (naming field, value, limit and policy) and the mode it carries."""

    message: str
    mode: PolicyMode | None  # None: an error that denies whatever the policy mode


def audit_messages(findings: Iterable[Finding]) -> list[str]:
    """The Audit-mode findings' messages, in order (what mutate records on the object)."""
    return [f.message for f in findings if f.mode == "Audit"]


def decide(
    findings: Iterable[Finding], warnings: Iterable[str] = (), ratcheted: Collection[str] = ()
) -> Decision:
    """Sort ``findings`` by mode; ``ratcheted``: messages the stored object already drew.

    ``warnings`` come first in the answer: what the rules warn about whatever the mode.
    """
    denials: list[str] = []
    warned = list(warnings)
    audit: list[str] = []
    for finding in findings:
        if finding.mode == "Audit":
            audit.append(finding.message)
        elif finding.mode == "Warn":
            warned.append(finding.message)
        elif finding.message in ratcheted:
            warned.append(finding.message + RATCHET_NOTE)
        else:
            denials.append(finding.message)
    return Decision(allowed=not denials, denials=tuple(denials), warnings=tuple(warned), audit=tuple(audit))
