"""Pure: a namespace's policy report from the rule results of its agents and pipelines.

:func:`build_report` turns what the background scan found (:mod:`controller.scan`) into the one
OpenReports ``Report`` of the namespace (:mod:`contracts.reports`): one result per (object, policy,
rule), sorted, so the same findings always give the same object.  A result keeps the timestamp of
the report it replaces while it reads the same (``timestamp`` is when a result was *found*), so a
rescan that finds nothing new builds an identical report and the controller writes nothing.

One etcd object holds at most about 1.5 MiB.  A report that would exceed :data:`MAX_REPORT_BYTES`
drops its passes first (``configuration.limits.statusFilter`` then lists what it keeps), then the
results beyond ``configuration.limits.maxResults``; ``summary`` always counts every result.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from contracts import reports
from contracts.reports import ReportSummary
from policies.results import RuleResult

#: The largest report written, in bytes of JSON: etcd's default request limit is 1.5 MiB, and the
#: API server adds managedFields and metadata.
MAX_REPORT_BYTES = 1_000_000
#: Upstream's ``ReportResult.category`` of every result we write.
CATEGORY = "agentops"
#: Kept, in this order, when a report must be cut (the results people act on first).
_PRIORITY = ("fail", "error", "warn", "skip", "pass")


@dataclass(frozen=True, slots=True)
class Subject:
    """A checked object: the AgentDeployment or AgentPipeline a result is about."""

    api_version: str
    kind: str
    name: str
    uid: str = ""

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Subject:
        meta = obj.get("metadata") or {}
        return cls(
            str(obj.get("apiVersion", "")),
            str(obj.get("kind", "")),
            str(meta.get("name", "")),
            str(meta.get("uid") or ""),
        )


Judged = tuple[Subject, Sequence[RuleResult]]


def build_report(
    namespace: str,
    judged: Iterable[Judged],
    *,
    now: datetime,
    previous: Mapping[str, Any] | None = None,
    max_bytes: int = MAX_REPORT_BYTES,
) -> dict[str, Any]:
    """The namespace's Report as JSON (what server-side apply is given; no server fields).

    ``previous``: the report stored now, whose timestamps are kept for results that read the same.
    """
    stamp = {"seconds": int(now.timestamp()), "nanos": now.microsecond * 1000}
    before = _previous(previous)
    results: list[dict[str, Any]] = []
    for subject, rule_results in sorted(judged, key=lambda j: (j[0].kind, j[0].name)):
        reference = {
            "apiVersion": subject.api_version,
            "kind": subject.kind,
            "name": subject.name,
            "namespace": namespace,
            **({"uid": subject.uid} if subject.uid else {}),
        }
        for rule_result in sorted(rule_results, key=lambda r: (r.policy, r.rule, r.field)):
            result = _result(subject, reference, rule_result)
            result["timestamp"] = _stamp(result, before.get(_key(result)), stamp)
            results.append(result)
    summary = reports.summarize(r["result"] for r in results)
    report = _report(namespace, summary, results, None)
    if size(report) > max_bytes:
        report = _cut(namespace, summary, results, max_bytes)
    return report


def _result(subject: Subject, reference: dict[str, Any], r: RuleResult) -> dict[str, Any]:
    properties = {reports.PROPERTY_RESOURCE: f"{subject.kind}/{subject.name}"}
    for key, value in (
        (reports.PROPERTY_FIELD, r.field),
        (reports.PROPERTY_VALUE, r.value),
        (reports.PROPERTY_LIMIT, r.limit),
        (reports.PROPERTY_EXCEPTION, r.exception),
    ):
        if value:
            properties[key] = value
    result: dict[str, Any] = {
        "source": reports.SOURCE,
        "policy": r.policy,
        "rule": r.rule,
        "category": CATEGORY,
        "severity": r.severity,
        "result": r.result,
        "scored": r.result != "warn",
        "resources": [reference],
        "properties": properties,
    }
    if r.message:
        result["message"] = r.message
    return result


def _key(result: Mapping[str, Any]) -> tuple[str, ...]:
    """Which check a result is the outcome of: subject, policy, rule and field."""
    subject = (result.get("resources") or [{}])[0]
    field = (result.get("properties") or {}).get(reports.PROPERTY_FIELD, "")
    return (
        str(subject.get("kind")),
        str(subject.get("name")),
        str(result.get("policy")),
        str(result.get("rule")),
        str(field),
    )


def _previous(previous: Mapping[str, Any] | None) -> dict[tuple[str, ...], Mapping[str, Any]]:
    if not previous:
        return {}
    return {_key(r): r for r in previous.get("results") or () if isinstance(r, Mapping)}


def _stamp(result: dict[str, Any], before: Mapping[str, Any] | None, now: dict[str, int]) -> dict[str, int]:
    """The previous timestamp when the result reads the same as before, else ``now``."""
    if before is None:
        return now
    stamp = before.get("timestamp")
    if not isinstance(stamp, Mapping) or {**result, "timestamp": stamp} != before:
        return now
    return {"seconds": int(stamp["seconds"]), "nanos": int(stamp.get("nanos", 0))}


def _report(
    namespace: str,
    summary: ReportSummary,
    results: list[dict[str, Any]],
    configuration: dict[str, Any] | None,
) -> dict[str, Any]:
    report: dict[str, Any] = {
        "apiVersion": reports.API_VERSION,
        "kind": reports.KIND,
        "metadata": {"name": reports.REPORT_NAME, "namespace": namespace, "labels": dict(reports.LABELS)},
        "source": reports.SOURCE,
        "scope": reports.namespace_scope(namespace).to_k8s(),
        "summary": summary.to_k8s(),
        "results": results,
    }
    if configuration is not None:
        report["configuration"] = configuration
    return report


def size(report: Mapping[str, Any]) -> int:
    return len(json.dumps(report, separators=(",", ":")))


def _cut(
    namespace: str, summary: ReportSummary, results: list[dict[str, Any]], max_bytes: int
) -> dict[str, Any]:
    """The report without its passes, then without its lowest-priority results, to fit ``max_bytes``."""
    kept = [r for r in results if r["result"] != "pass"]
    statuses = [s for s in reports.RESULTS if s != "pass"]
    report = _report(namespace, summary, kept, {"limits": {"statusFilter": statuses}})
    if size(report) <= max_bytes:
        return report
    rank = {status: i for i, status in enumerate(_PRIORITY)}
    limits: dict[str, Any] = {"maxResults": len(kept), "statusFilter": statuses}
    used = size(_report(namespace, summary, [], {"limits": limits}))
    chosen: set[int] = set()
    for result in sorted(kept, key=lambda r: rank[r["result"]]):
        cost = size(result) + 1  # and its comma
        if used + cost > max_bytes:
            break
        used += cost
        chosen.add(id(result))
    limits["maxResults"] = len(chosen)
    return _report(namespace, summary, [r for r in kept if id(r) in chosen], {"limits": limits})


def comparable(stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The parts of a stored report :func:`build_report` writes, to tell whether a write is needed."""
    if stored is None:
        return None
    meta = stored.get("metadata") or {}
    out: dict[str, Any] = {
        "apiVersion": stored.get("apiVersion"),
        "kind": stored.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "labels": {k: v for k, v in (meta.get("labels") or {}).items() if k in reports.LABELS},
        },
    }
    for key in ("source", "scope", "summary", "results", "configuration"):
        if key in stored:
            out[key] = stored[key]
    return out
