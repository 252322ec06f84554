"""The policy report the controller writes: an OpenReports ``Report`` (``openreports.io/v1alpha1``).

OpenReports is the successor of the Kubernetes Policy WG's PolicyReport, the format Policy Reporter
and similar dashboards read, so our background-scan results show up there without an adapter.
This module is the model of exactly what we write, field for field the upstream API (the CRD we
ship, ``deploy/crds/openreports.yaml``, is a hand-written structural copy of upstream's schema; a
test checks that every field here is in it with the same type).

Layout (see ``docs/controller.md``): **one Report per namespace**, named :data:`REPORT_NAME`,
scoped to the Namespace, with one result per (object, policy, rule) for every AgentDeployment and
AgentPipeline of the namespace.  One object per namespace, not one per agent, so etcd holds as
many reports as namespaces whatever the number of agents.  Each result names the policy, the rule,
pass/fail/warn/error/skip and the severity; ``properties`` carry the ``field``, ``value``,
``limit``, the ``exception`` that excused a violation, and the ``resource`` (``Kind/name``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from contracts.resources import LabelSelector, ObjectMeta

GROUP = "openreports.io"
VERSION = "v1alpha1"
API_VERSION: Literal["openreports.io/v1alpha1"] = "openreports.io/v1alpha1"
KIND: Literal["Report"] = "Report"
PLURAL = "reports"
#: The CRD's name: ``kubectl get crd reports.openreports.io``.
CRD_NAME = f"{PLURAL}.{GROUP}"
#: The one report of each namespace.
REPORT_NAME = "agentops-policy"
#: ``source`` of the report and of every result: which engine produced them.
SOURCE = "agentops"
#: Labels on the report, so ``kubectl get reports -A -l app.kubernetes.io/managed-by=agentops-controller``
#: finds ours among other engines' reports.
LABELS = {"app.kubernetes.io/managed-by": "agentops-controller", "app.kubernetes.io/part-of": "agentops"}

Result = Literal["pass", "fail", "warn", "error", "skip"]
Severity = Literal["critical", "high", "medium", "low", "info"]
#: Every result value, in the order the summary lists them.
RESULTS: tuple[Result, ...] = ("pass", "fail", "warn", "error", "skip")

#: Keys of ``ReportResult.properties`` (all strings, as upstream's ``map[string]string`` wants).
PROPERTY_FIELD = "field"
PROPERTY_VALUE = "value"
PROPERTY_LIMIT = "limit"
PROPERTY_EXCEPTION = "exception"
PROPERTY_RESOURCE = "resource"


class _Model(BaseModel):
    """camelCase on the wire, unknown fields refused (what we write is exactly this)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    def to_k8s(self) -> dict[str, Any]:
        return self.model_dump(by_alias=True, exclude_none=True, mode="json")


class ObjectReference(_Model):
    """core/v1 ObjectReference: the subject of a result, or the scope of the report."""

    api_version: str | None = None
    kind: str | None = None
    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    resource_version: str | None = None
    field_path: str | None = None


class Timestamp(_Model):
    """meta/v1 Timestamp: when the result was first found as it is now."""

    seconds: int
    nanos: Annotated[int, Field(ge=0, le=999_999_999)] = 0


class ReportResult(_Model):
    source: str = SOURCE
    #: ``ClusterAgentPolicy/<name>`` or ``AgentPolicy/<namespace>/<name>``.
    policy: Annotated[str, Field(min_length=1)]
    #: One of the engine's rule names (``limits.maxTokensPerCall``, ``budget``...).
    rule: str | None = None
    category: str | None = None
    severity: Severity | None = None
    timestamp: Timestamp
    result: Result
    #: Upstream: a ``warn`` is a result that is not scored; every other one is.
    scored: bool | None = None
    resources: list[ObjectReference] = Field(default_factory=list)
    resource_selector: LabelSelector | None = None
    #: Word for word the admission message for a violation; empty for a pass.
    message: str | None = None
    properties: dict[str, str] = Field(default_factory=dict)


class ReportSummary(_Model):
    pass_: int = Field(default=0, alias="pass")
    fail: int = 0
    warn: int = 0
    error: int = 0
    skip: int = 0


class ReportLimits(_Model):
    #: How many results the report holds when it had to be cut to fit one etcd object.
    max_results: int | None = None
    #: The only result values the report holds (passes are the first left out when it is cut).
    status_filter: list[Result] | None = None


class ReportConfiguration(_Model):
    limits: ReportLimits


class Report(_Model):
    api_version: Literal["openreports.io/v1alpha1"] = API_VERSION
    kind: Literal["Report"] = KIND
    metadata: ObjectMeta
    source: str = SOURCE
    scope: ObjectReference | None = None
    scope_selector: LabelSelector | None = None
    configuration: ReportConfiguration | None = None
    summary: ReportSummary = Field(default_factory=ReportSummary)
    results: list[ReportResult] = Field(default_factory=list)


def summarize(results: Iterable[str]) -> ReportSummary:
    """Counts per result value (``results``: each result's ``result``)."""
    counts: dict[str, int] = dict.fromkeys(RESULTS, 0)
    for result in results:
        counts[result] = counts.get(result, 0) + 1
    return ReportSummary.model_validate(counts)


def namespace_scope(namespace: str) -> ObjectReference:
    """The scope of a namespace's report: the Namespace itself."""
    return ObjectReference(api_version="v1", kind="Namespace", name=namespace)
