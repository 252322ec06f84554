"""``agentops policy test``: evaluate manifests offline with the admission engine, for GitOps CI.

Every AgentDeployment, AgentPipeline, ClusterAgentPolicy, AgentPolicy and AgentPromptRevision in
the given files (directories are searched recursively for ``*.yaml``, ``*.yml`` and ``*.json``)
is evaluated as a CREATE by the user ``policy-test``, with exactly the engine the webhook runs:
``mutate`` first, then ``validate`` on the mutated object.  Policies come from ``--policies``
and from the policy objects among the files; Namespace objects among the files supply namespace
labels for ``namespaceSelector``; AgentDeployments among the files count as existing for
pipelines.  Objects without a namespace are taken to be in ``default``.

Each problem is printed as ``file: Kind/name: severity: message``; the exit status is 1 when
anything would be denied or a file cannot be read or parsed, 0 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

import jsonpatch
import yaml
from pydantic import ValidationError

from contracts.resources import AgentPolicy, ClusterAgentPolicy
from policies.engine import AdmissionRequest, PolicySet, UserInfo, mutate, validate

TEST_USER = UserInfo(username="policy-test", uid="", groups=("system:authenticated",))
CHECKED_KINDS = frozenset(
    {"AgentDeployment", "AgentPipeline", "ClusterAgentPolicy", "AgentPolicy", "AgentPromptRevision"}
)
DEFAULT_NAMESPACE = "default"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    path: str
    obj: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        meta = self.obj.get("metadata")
        name = meta.get("name") if isinstance(meta, dict) else None
        return str(name or "<unnamed>")

    @property
    def namespace(self) -> str | None:
        if self.kind == "ClusterAgentPolicy":
            return None
        meta = self.obj.get("metadata")
        namespace = meta.get("namespace") if isinstance(meta, dict) else None
        return str(namespace) if namespace else DEFAULT_NAMESPACE


class ManifestError(Exception):
    """A file that cannot be read or parsed; the message starts with the file name."""


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``policy test``; each subcommand sets ``func(args) -> int``."""
    policy = subparsers.add_parser("policy", help="work with agent policies")
    commands = policy.add_subparsers(dest="policy_command", metavar="SUBCOMMAND", required=True)
    test = commands.add_parser(
        "test",
        help="evaluate manifests against policies offline (exit 1 if anything would be denied)",
        description=__doc__.split("\n\n", 1)[1] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    test.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="extend",
        nargs="+",
        required=True,
        metavar="PATH",
        help="manifest files or directories (repeatable)",
    )
    test.add_argument(
        "--policies",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files or directories with ClusterAgentPolicy/AgentPolicy objects to apply",
    )
    test.set_defaults(func=run_test)


def run_test(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    problems = 0
    documents: list[Document] = []
    policy_documents: list[Document] = []
    for paths, into in ((args.files, documents), (args.policies, policy_documents)):
        for path in paths:
            try:
                into.extend(load_documents(Path(path)))
            except ManifestError as err:
                print(err, file=out)
                problems += 1

    policy_set = build_policy_set(policy_documents, documents, out)
    problems += policy_set[1]
    namespace_labels = {
        doc.name: _labels(doc.obj) for doc in documents + policy_documents if doc.kind == "Namespace"
    }
    now = datetime.now(UTC)
    checked = denied = warned = 0
    for doc in documents:
        if doc.kind not in CHECKED_KINDS:
            continue
        checked += 1
        denials, warnings, audit = evaluate(
            doc, policy_set[0], namespace_labels.get(doc.namespace or "", {}), now
        )
        for severity, messages in (("denied", denials), ("warning", warnings), ("audit", audit)):
            for message in messages:
                print(f"{doc.path}: {doc.kind}/{doc.name}: {severity}: {message}", file=out)
        denied += bool(denials)
        warned += bool(warnings)
    print(
        f"{checked} object(s) checked against {len(policy_set[0].cluster) + len(policy_set[0].namespaced)} "
        f"policy(ies): {denied} denied, {warned} with warnings, {problems} unreadable",
        file=out,
    )
    return 1 if denied or problems else 0


def evaluate(
    doc: Document, policies: PolicySet, namespace_labels: dict[str, str], now: datetime
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """``(denials, warnings, audit)`` of creating ``doc``: mutate, apply the patch, validate."""
    request = AdmissionRequest(
        uid=f"policy-test:{doc.path}:{doc.kind}/{doc.name}",
        kind=doc.kind,
        operation="CREATE",
        namespace=doc.namespace,
        name=doc.name,
        object=doc.obj,
        old_object=None,
        user=TEST_USER,
        dry_run=True,
        now=now,
        namespace_labels=namespace_labels,
    )
    mutated = mutate(request, policies)
    if not mutated.allowed:
        return mutated.denials, mutated.warnings, mutated.audit
    obj = jsonpatch.apply_patch(doc.obj, list(mutated.patch)) if mutated.patch else doc.obj
    decision = validate(dataclasses.replace(request, object=obj), policies)
    return decision.denials, decision.warnings, decision.audit


def build_policy_set(
    policy_documents: Sequence[Document], documents: Sequence[Document], out: TextIO
) -> tuple[PolicySet, int]:
    """The policies among both lists and the agents among ``documents``; invalid policies are left
    out, and reported here when they come from ``--policies`` (the others are evaluated anyway)."""
    cluster: list[ClusterAgentPolicy] = []
    namespaced: list[AgentPolicy] = []
    agents: set[tuple[str, str]] = set()
    seen: set[tuple[str, str | None, str]] = set()
    problems = 0
    for doc in [*policy_documents, *documents]:
        if doc.kind == "AgentDeployment":
            agents.add((doc.namespace or DEFAULT_NAMESPACE, doc.name))
        if doc.kind not in ("ClusterAgentPolicy", "AgentPolicy"):
            continue
        key = (doc.kind, doc.namespace, doc.name)
        if key in seen:  # the same file given as --policies and -f
            continue
        seen.add(key)
        obj = dict(doc.obj)
        if doc.kind == "AgentPolicy":
            obj["metadata"] = {**(obj.get("metadata") or {}), "namespace": doc.namespace}
        try:
            if doc.kind == "ClusterAgentPolicy":
                cluster.append(ClusterAgentPolicy.model_validate(obj))
            else:
                namespaced.append(AgentPolicy.model_validate(obj))
        except ValidationError as err:
            if any(doc is d for d in policy_documents):
                for e in err.errors(include_url=False):
                    where = ".".join(str(p) for p in e["loc"])
                    print(f"{doc.path}: {doc.kind}/{doc.name}: invalid policy: {where}: {e['msg']}", file=out)
                problems += 1
    return PolicySet(tuple(cluster), tuple(namespaced), frozenset(agents)), problems


def load_documents(path: Path) -> Iterator[Document]:
    """Every object in a file, or in the manifest files under a directory (sorted, recursive)."""
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in MANIFEST_SUFFIXES)
    elif path.exists():
        files = [path]
    else:
        raise ManifestError(f"{path}: no such file or directory")
    for file in files:
        yield from _load_file(file)


def _load_file(file: Path) -> list[Document]:
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{file}: cannot read: {err}") from err
    try:
        raw = [doc for doc in yaml.safe_load_all(text) if doc is not None]
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err)
        raise ManifestError(f"{file}: invalid YAML{where}: {problem}") from err
    out: list[Document] = []
    for i, doc in enumerate(raw):
        items = (
            doc.get("items") if isinstance(doc, dict) and str(doc.get("kind", "")).endswith("List") else None
        )
        for obj in items if isinstance(items, list) else [doc]:
            if not isinstance(obj, dict) or not isinstance(obj.get("kind"), str):
                raise ManifestError(f"{file}: document {i + 1} is not a Kubernetes object (no kind)")
            out.append(Document(str(file), obj))
    return out


def _labels(obj: dict[str, Any]) -> dict[str, str]:
    meta = obj.get("metadata")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}
