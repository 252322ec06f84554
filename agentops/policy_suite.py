"""``agentops policy test DIR``: policy test suites for GitOps CI, in the spirit of ``kyverno test``.

A suite is a file named ``agentops-test.yaml`` (or ``.yml``) that lists the policies, exceptions
and resources to load and, per resource and rule, the result expected from the engine (and the
patched object expected where mutation fills a default).  ``DIR`` is a suite file or a directory
searched recursively for suites.  The format is documented in docs/policies.md ("Policy test
suites"); :class:`Suite` is its schema.

Each resource is judged as the webhook would on CREATE: mutate (defaults, stamps), then every
(policy, rule) is evaluated on the patched object by :func:`policies.results.evaluate`, with the
suite's ``now`` as the clock (an exception that expired before it excuses nothing).

Exit status: 0 when every expectation holds, 1 when any does not (each mismatch names the
resource, the rule and the policy), 2 when a suite cannot be used (a malformed file: the message
names the file and the field).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TextIO

import yaml
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from agentops.offline import (
    DEFAULT_NAMESPACE,
    SUITE_FILES,
    Document,
    ManifestError,
    PolicyObject,
    existing_agents,
    labels_of,
    load_documents,
    mutate_create,
    parse_policy,
    policy_set,
    yaml_problem,
)
from contracts.resources import PolicyRule
from policies.engine import PolicySet
from policies.results import BUILTIN_POLICY, BUILTIN_RULE, RuleResult, evaluate

#: The kinds whose rules a suite can expect results of (what the engine evaluates per rule).
JUDGED_KINDS = ("AgentDeployment", "AgentPipeline")

Expected = Literal["pass", "fail", "warn", "skip", "error"]
NonEmpty = Annotated[str, Field(min_length=1)]


class ExpectedResult(BaseModel):
    """One line of ``results``: what ``rule`` of ``policy`` yields for each named resource."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    policy: NonEmpty
    #: A policy's rule, or ``valid`` with policy ``agentops``: the engine's own checks.
    rule: Literal[PolicyRule, "valid"]
    resources: list[NonEmpty] = Field(default_factory=list)
    resource: NonEmpty | None = None
    kind: Literal["AgentDeployment", "AgentPipeline"] | None = None
    result: Expected
    patched_resource: NonEmpty | None = Field(default=None, alias="patchedResource")

    @model_validator(mode="after")
    def _names_resources(self) -> Self:
        if (self.rule == BUILTIN_RULE) != (self.policy == BUILTIN_POLICY):
            raise ValueError(
                f"rule {BUILTIN_RULE!r} (the engine's own checks) goes with policy {BUILTIN_POLICY!r}, "
                "and only it"
            )
        if bool(self.resources) == (self.resource is not None):
            raise ValueError("give exactly one of resource (a name) or resources (a list of names)")
        if self.patched_resource is not None and len(self.names) != 1:
            raise ValueError("patchedResource needs exactly one resource to compare with")
        return self

    @property
    def names(self) -> list[str]:
        return [self.resource] if self.resource is not None else self.resources


class Suite(BaseModel):
    """The schema of ``agentops-test.yaml``; paths are relative to the suite file."""

    model_config = ConfigDict(extra="forbid")

    name: NonEmpty
    policies: Annotated[list[NonEmpty], Field(min_length=1)]
    exceptions: list[NonEmpty] = Field(default_factory=list)
    resources: Annotated[list[NonEmpty], Field(min_length=1)]
    #: Namespace name -> its labels (for ClusterAgentPolicy ``namespaceSelector``).
    namespaces: dict[NonEmpty, dict[str, str]] = Field(default_factory=dict)
    #: The clock the suite is judged at (exceptions expire relative to it); default: the CLI's.
    now: AwareDatetime | None = None
    results: Annotated[list[ExpectedResult], Field(min_length=1)]


class SuiteError(Exception):
    """A suite that cannot be run; the message names the file and, where there is one, the field."""


@dataclasses.dataclass(frozen=True, slots=True)
class Row:
    """One expectation checked: a (policy, rule, resource) and what the engine said."""

    id: int
    policy: str
    rule: str
    resource: str
    expected: str
    got: str
    problem: str  # "" when the expectation holds
    result: RuleResult | None
    note: str = ""  # why there is no result (the rule does not apply, the object cannot be read)

    @property
    def passed(self) -> bool:
        return not self.problem


@dataclasses.dataclass(frozen=True, slots=True)
class Judged:
    """A resource after admission: its patched object and its results by (policy, rule)."""

    document: Document
    patched: Mapping[str, Any]
    results: Mapping[tuple[str, str], RuleResult]
    denial: str  # why mutate refused it (an object that cannot be parsed), else ""


def find_suites(path: Path) -> list[Path]:
    """The suite file itself, or every suite file under a directory (sorted)."""
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise SuiteError(f"{path}: no such file or directory")
    found = sorted(p for p in path.rglob("*") if p.name in SUITE_FILES and p.is_file())
    if not found:
        raise SuiteError(f"{path}: no test suite found (a file named {' or '.join(SUITE_FILES)})")
    return found


def run_suites(paths: Sequence[str], *, detailed: bool, now: datetime | None, out: TextIO) -> int:
    """Run every suite under ``paths``; the exit status (0 all hold, 1 a mismatch, 2 a bad suite)."""
    status = 0
    suites: list[Path] = []
    for path in paths:
        try:
            suites += find_suites(Path(path))
        except SuiteError as err:
            print(f"error: {err}", file=out)
            status = 2
    for i, file in enumerate(suites):
        if i:
            print(file=out)
        try:
            rows = run_suite(file, now=now)
        except SuiteError as err:
            for line in str(err).splitlines():
                print(f"error: {line}", file=out)
            status = 2
            continue
        print_rows(file, rows, detailed=detailed, out=out)
        if not all(row.passed for row in rows):
            status = max(status, 1)
    return status


def load_suite(file: Path) -> Suite:
    try:
        raw = yaml.safe_load(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as err:
        raise SuiteError(f"{file}: cannot read: {err}") from err
    except yaml.YAMLError as err:
        raise SuiteError(f"{file}: {yaml_problem(err)}") from err
    if not isinstance(raw, dict):
        raise SuiteError(f"{file}: a test suite is a mapping with name, policies, resources and results")
    try:
        return Suite.model_validate(raw)
    except ValidationError as err:
        problems = [f"{file}: {_loc(e['loc'])}: {e['msg']}" for e in err.errors(include_url=False)]
        raise SuiteError("\n".join(problems)) from err


def run_suite(file: Path, *, now: datetime | None = None) -> list[Row]:
    """Load and judge one suite; :class:`SuiteError` when it cannot be used."""
    suite = load_suite(file)
    base = file.parent
    clock = suite.now or now or datetime.now(UTC)
    policy_docs = _load(file, base, "policies", suite.policies)
    exception_docs = _load(file, base, "exceptions", suite.exceptions)
    resource_docs = _load(file, base, "resources", suite.resources)

    policies = _policy_set(file, policy_docs, exception_docs, resource_docs)
    namespace_labels = {ns: dict(labels) for ns, labels in suite.namespaces.items()}
    for doc in resource_docs:
        if doc.kind == "Namespace":
            namespace_labels.setdefault(doc.name, labels_of(doc.obj))
    judged: dict[tuple[str, str, str], Judged] = {}
    for doc in resource_docs:
        if doc.kind == "Namespace":
            continue
        key = (doc.kind, doc.namespace or DEFAULT_NAMESPACE, doc.name)
        if doc.kind not in JUDGED_KINDS:
            raise SuiteError(
                f"{file}: resources: {doc.path}: {doc.kind}/{doc.name} is not one of "
                f"{', '.join(JUDGED_KINDS)} or Namespace (policies and exceptions have fields of their own)"
            )
        if key in judged:
            raise SuiteError(f"{file}: resources: {doc.path}: {'/'.join(key)} is loaded twice")
        judged[key] = _judge(doc, policies, namespace_labels, clock)
    sources = {f"ClusterAgentPolicy/{p.metadata.name}" for p in policies.cluster} | {
        f"AgentPolicy/{p.metadata.namespace}/{p.metadata.name}" for p in policies.namespaced
    }
    sources.add(BUILTIN_POLICY)

    rows: list[Row] = []
    for i, expected in enumerate(suite.results):
        policy = _resolve_policy(file, i, expected.policy, sources)
        patched = _load_patched(file, base, i, expected.patched_resource)
        for j, name in enumerate(expected.names):
            where = (
                f"results[{i}].resource" if expected.resource is not None else f"results[{i}].resources[{j}]"
            )
            target = _resolve_resource(file, where, name, expected.kind, judged)
            rows.append(_check(len(rows) + 1, policy, expected, target, patched))
    return rows


# --- loading -------------------------------------------------------------------------------------


def _load(file: Path, base: Path, field: str, paths: Iterable[str]) -> list[Document]:
    docs: list[Document] = []
    for i, path in enumerate(paths):
        try:
            docs += load_documents(base / path)
        except ManifestError as err:
            raise SuiteError(f"{file}: {field}[{i}]: {err}") from err
    return docs


def _policy_set(
    file: Path, policy_docs: list[Document], exception_docs: list[Document], resource_docs: list[Document]
) -> PolicySet:
    objects: list[PolicyObject] = []
    wanted = {"policies": ("ClusterAgentPolicy", "AgentPolicy"), "exceptions": ("AgentPolicyException",)}
    for field, docs in (("policies", policy_docs), ("exceptions", exception_docs)):
        for doc in docs:
            if doc.kind not in wanted[field]:
                raise SuiteError(
                    f"{file}: {field}: {doc.path}: {doc.kind}/{doc.name} is not a "
                    f"{' or '.join(wanted[field])}"
                )
            try:
                objects.append(parse_policy(doc))
            except ValidationError as err:
                problems = [
                    f"{doc.path}: {doc.kind}/{doc.name}: {_loc(e['loc'])}: {e['msg']}"
                    for e in err.errors(include_url=False)
                ]
                raise SuiteError("\n".join(problems)) from err
    return policy_set(objects, existing_agents(resource_docs))


def _load_patched(file: Path, base: Path, i: int, path: str | None) -> Mapping[str, Any] | None:
    if path is None:
        return None
    try:
        docs = list(load_documents(base / path))
    except ManifestError as err:
        raise SuiteError(f"{file}: results[{i}].patchedResource: {err}") from err
    if len(docs) != 1:
        raise SuiteError(
            f"{file}: results[{i}].patchedResource: {path} holds {len(docs)} objects; "
            "it must hold exactly one"
        )
    return docs[0].obj


# --- judging -------------------------------------------------------------------------------------


def _judge(
    doc: Document, policies: PolicySet, namespace_labels: Mapping[str, Mapping[str, str]], now: datetime
) -> Judged:
    namespace = doc.namespace or DEFAULT_NAMESPACE
    obj = {**doc.obj, "metadata": {**(doc.obj.get("metadata") or {}), "namespace": namespace}}
    labels = dict(namespace_labels.get(namespace) or {"kubernetes.io/metadata.name": namespace})
    _, mutated, patched = mutate_create(
        f"policy-test:{doc.path}:{doc.kind}/{namespace}/{doc.name}",
        doc,
        namespace,
        obj,
        policies,
        labels,
        now,
    )
    if not mutated.allowed:
        return Judged(doc, obj, {}, mutated.message())
    results = evaluate(patched, policies, namespace_labels=labels, now=now)
    return Judged(doc, patched, {(r.policy, r.rule): r for r in results}, "")


def _check(
    row_id: int, policy: str, expected: ExpectedResult, target: Judged, patched: Mapping[str, Any] | None
) -> Row:
    doc = target.document
    resource = f"{doc.kind}/{doc.namespace or DEFAULT_NAMESPACE}/{doc.name}"
    result = target.results.get((policy, expected.rule))
    if target.denial:
        got, note = "error", target.denial
    elif result is None:
        # The rule does not apply: no policy of that name sets it for this resource.
        got, note = "skip", "no result: the policy does not match this resource or does not set this rule"
    else:
        got, note = result.result, result.message
    problems: list[str] = []
    if got != expected.result:
        problems.append(f"expected {expected.result}, got {got}" + (f": {note}" if note else ""))
    if patched is not None:
        diffs = _differences(patched, target.patched)
        if diffs:
            problems.append(f"patched output differs from {expected.patched_resource}: " + "; ".join(diffs))
    return Row(
        row_id, policy, expected.rule, resource, expected.result, got, "; ".join(problems), result, note
    )


def _differences(expected: Any, got: Any, path: str = "") -> list[str]:
    """Where ``got`` differs from ``expected``; mappings need only hold the expected keys."""
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            return [f"{path or '(object)'}: expected a mapping, got {_show(got)}"]
        out: list[str] = []
        for key, value in expected.items():
            where = (
                f"{path}[{key}]" if "." in str(key) or "/" in str(key) else (f"{path}.{key}" if path else key)
            )
            if key not in got:
                out.append(f"{where}: expected {_show(value)}, absent")
            else:
                out += _differences(value, got[key], where)
        return out
    return [] if expected == got else [f"{path or '(object)'}: expected {_show(expected)}, got {_show(got)}"]


def _show(value: Any) -> str:
    return json.dumps(value, default=str, ensure_ascii=False)


# --- resolving names -----------------------------------------------------------------------------


def _resolve_policy(file: Path, i: int, wanted: str, sources: set[str]) -> str:
    """``wanted`` as RuleResult names it: ``name``, ``ns/name``, or the full ``Kind/...`` form."""
    if wanted in sources:
        return wanted
    candidates = sorted(
        s
        for s in sources
        if s in (f"ClusterAgentPolicy/{wanted}", f"AgentPolicy/{wanted}")
        or (s.startswith("AgentPolicy/") and "/" not in wanted and s.rsplit("/", 1)[1] == wanted)
    )
    if len(candidates) == 1:
        return candidates[0]
    known = ", ".join(sorted(sources)) or "none"
    if candidates:
        raise SuiteError(
            f"{file}: results[{i}].policy: {wanted!r} is ambiguous ({', '.join(candidates)}); "
            "write it as ClusterAgentPolicy/NAME or AgentPolicy/NAMESPACE/NAME"
        )
    raise SuiteError(
        f"{file}: results[{i}].policy: {wanted!r} is not among the suite's policies (loaded: {known})"
    )


def _resolve_resource(
    file: Path, where: str, wanted: str, kind: str | None, judged: Mapping[tuple[str, str, str], Judged]
) -> Judged:
    """``wanted`` is ``name`` or ``namespace/name``; ``kind`` narrows it when given."""
    namespace, _, name = wanted.rpartition("/")
    matches = [
        j
        for (k, ns, n), j in judged.items()
        if n == name and (not namespace or ns == namespace) and (kind is None or k == kind)
    ]
    if len(matches) == 1:
        return matches[0]
    what = f"{kind} {wanted!r}" if kind else repr(wanted)
    if matches:
        raise SuiteError(
            f"{file}: {where}: {what} matches {len(matches)} resources; "
            "write it as NAMESPACE/NAME or give the result's kind"
        )
    known = ", ".join(sorted(f"{k}/{ns}/{n}" for k, ns, n in judged)) or "none"
    raise SuiteError(f"{file}: {where}: {what} is not among the suite's resources (loaded: {known})")


# --- output --------------------------------------------------------------------------------------


def print_rows(file: Path, rows: Sequence[Row], *, detailed: bool, out: TextIO) -> None:
    header = ["ID", "POLICY", "RULE", "RESOURCE", "EXPECTED", "GOT", "RESULT"]
    if detailed:
        # The message last: it is the long one, and nothing is padded after it.
        header += ["FIELD", "VALUE", "LIMIT", "EXCEPTION", "MESSAGE"]
    table = [header]
    for row in rows:
        cells = [str(row.id), row.policy, row.rule, row.resource, row.expected, row.got]
        cells.append("Pass" if row.passed else "Fail")
        if detailed:
            r = row.result
            cells += [r.field, r.value, r.limit, r.exception, r.message] if r else ["", "", "", "", row.note]
        table.append(cells)
    print(f"Test suite {file}", file=out)
    widths = [max(len(line[c]) for line in table) for c in range(len(header))]
    for line in table:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip(), file=out
        )
    failed = [row for row in rows if not row.passed]
    print(f"Test summary: {len(rows) - len(failed)} passed, {len(failed)} failed", file=out)
    for row in failed:
        print(f"FAIL {row.id}: {row.resource}: rule {row.rule} of {row.policy}: {row.problem}", file=out)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"
