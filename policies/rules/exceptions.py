"""AgentPolicyException: who may excuse what, and for how long.

An exception is itself admitted, so policy decides who may create one:

* ``spec.reason`` must say something (a ticket id, say): every message that used the exception
  repeats it;
* ``spec.expiresAt`` must be in the future at admission;
* a policy the exception names that applies in its namespace (a ClusterAgentPolicy whose
  ``namespaceSelector`` selects it, or an AgentPolicy of that namespace) may forbid exceptions
  (``spec.exceptions.allowed: false``) or cap their duration (``spec.exceptions.maxDurationHours``;
  the strictest cap among the named policies counts, measured from the request's time).

These deny whatever the policies' modes.  Naming a policy that does not exist or does not apply
in the namespace, or a rule the policy does not set, only warns: GitOps tools apply objects in no
guaranteed order, and such an exception simply excuses nothing until it matches.  An UPDATE that
leaves the spec as it was (labels, annotations) is not judged again, so an expired exception can
still be relabelled or cleaned up; any change to the spec is judged whole.
"""

from __future__ import annotations

from datetime import timedelta

from contracts.resources import AgentPolicyException
from policies.effective import PolicyEntry, entry_rules
from policies.exemptions import rfc3339
from policies.review import AdmissionRequest, PolicySet
from policies.rules.base import Checked, Rules, model_parser
from policies.verdict import Finding


def check(request: AdmissionRequest, exception: AgentPolicyException, policies: PolicySet) -> Checked:
    old, new = request.old_object, request.object
    if (
        request.operation == "UPDATE"
        and old is not None
        and new is not None
        and old.get("spec") == new.get("spec")
    ):
        return ([], [])
    spec = exception.spec
    found: list[Finding] = []
    warnings: list[str] = []
    if not spec.reason.strip():
        found.append(
            Finding(
                "spec.reason: is blank; say why this exception is needed (a ticket id, for example): "
                "every decision and report that uses the exception repeats it",
                None,
                field="spec.reason",
            )
        )
    expires = rfc3339(spec.expires_at)
    now = request.now
    if spec.expires_at <= now:
        found.append(
            Finding(
                f"spec.expiresAt: {expires} is not in the future (now {rfc3339(now)}); "
                "an exception must expire after it is created: set a later time",
                None,
                field="spec.expiresAt",
                value=expires,
            )
        )
    namespace = request.namespace
    index = policies.index
    applying = {e.source: e for e in index.cluster_policies_for_namespace(request.namespace_labels)}
    applying.update((e.source, e) for e in index.namespaced.get(namespace, ()))
    known = {e.source for e in index.cluster} | {e.source for e in index.namespaced.get(namespace, ())}
    cap: tuple[int, PolicyEntry] | None = None
    for i, named in enumerate(spec.policies):
        where = f"spec.policies[{i}]"
        entry = applying.get(named.source)
        if entry is None:
            why = (
                f'does not apply in namespace "{namespace}"'
                if named.source in known
                else "does not exist"
                if named.kind == "ClusterAgentPolicy"
                else f'does not exist in namespace "{namespace}"'
            )
            warnings.append(
                f"{where}: {named.source} {why}; this exception excuses nothing of it until it does"
            )
            continue
        rules = entry.spec.exceptions
        if rules is not None and not rules.allowed:
            found.append(
                Finding(
                    f"{where}: {named.source} forbids exceptions (spec.exceptions.allowed: false); "
                    "change the object to keep its rules, or ask the policy's owners to allow exceptions",
                    None,
                    field=where,
                    value=named.source,
                    limit="exceptions.allowed: false",
                )
            )
        elif (
            rules is not None
            and rules.max_duration_hours is not None
            and (cap is None or rules.max_duration_hours < cap[0])
        ):
            cap = (rules.max_duration_hours, entry)
        unset = [rule for rule in named.rules if rule not in entry_rules(entry)]
        if unset:
            warnings.append(
                f"{where}.rules: {named.source} sets no {', '.join(unset)}; nothing to excuse there"
            )
    if cap is not None and spec.expires_at > now:
        hours, entry = cap
        duration = spec.expires_at - now
        if duration > timedelta(hours=hours):
            found.append(
                Finding(
                    f"spec.expiresAt: {expires} is {duration.total_seconds() / 3600:.1f} hours from now, "
                    f"over the {hours} hours {entry.source} allows (spec.exceptions.maxDurationHours); "
                    f"set expiresAt no later than {rfc3339(now + timedelta(hours=hours))}",
                    None,
                    field="spec.expiresAt",
                    value=expires,
                    limit=f"{hours} hours",
                )
            )
    return (found, warnings)


RULES: Rules[AgentPolicyException] = Rules(parse=model_parser(AgentPolicyException), check=check)
