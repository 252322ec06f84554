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

Exceptions: a finding whose (policy, rule) an unexpired AgentPolicyException excuses is allowed,
whatever the mode, with a warning: the message followed by the exception's name, expiry and
reason (:meth:`policies.exemptions.Excusal.note`).  The engine judges the object twice when an
exception applies: once with the excused rules left out (what is decided; a looser policy the
excused one hid still applies) and once without exceptions, from which :func:`excused` picks the
findings to name.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import NamedTuple

from contracts.resources import PolicyMode
from policies.exemptions import Excusal, Excusals
from policies.review import Decision

RATCHET_NOTE = " (already so before this change: allowed until this field changes)"


class Finding(NamedTuple):
    """One violation: its message (naming field, value, limit and policy) and the mode it carries.

    ``rule`` and ``policy`` say which policy rule it breaks (what an exception names and a report
    lists); both are empty for errors no policy sets.  ``field``, ``value`` and ``limit`` repeat
    what the message says, for reports.
    """

    message: str
    mode: PolicyMode | None  # None: an error that denies whatever the policy mode
    rule: str = ""  # one of contracts.resources.POLICY_RULES
    policy: str = ""  # "Kind/name", as the message names it
    field: str = ""
    value: str = ""
    limit: str = ""


def audit_messages(findings: Iterable[Finding]) -> list[str]:
    """The Audit-mode findings' messages, in order (what mutate records on the object)."""
    return [f.message for f in findings if f.mode == "Audit"]


def excused(findings: Iterable[Finding], excusals: Excusals) -> list[tuple[Finding, Excusal]]:
    """The ``findings`` (judged without exceptions) an exception excuses, each with it."""
    if not excusals:
        return []
    out: list[tuple[Finding, Excusal]] = []
    for finding in findings:
        excusal = excusals.get((finding.policy, finding.rule)) if finding.rule else None
        if excusal is not None:
            out.append((finding, excusal))
    return out


def excused_message(finding: Finding, excusal: Excusal) -> str:
    """The warning an excused finding becomes."""
    return finding.message + excusal.note()


def decide(
    findings: Iterable[Finding],
    warnings: Iterable[str] = (),
    ratcheted: Collection[str] = (),
    excused_findings: Iterable[tuple[Finding, Excusal]] = (),
) -> Decision:
    """Sort ``findings`` by mode; ``ratcheted``: messages the stored object already drew;
    ``excused_findings``: violations an exception excuses (see :func:`excused`), each a warning.

    ``warnings`` come first in the answer: what the rules warn about whatever the mode.
    """
    denials: list[str] = []
    warned = list(warnings)
    warned += [excused_message(f, e) for f, e in excused_findings]
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
