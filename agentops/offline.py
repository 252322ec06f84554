"""Judging manifests offline with the engine: the test user, the offline CREATE, loading files.

What ``agentops policy test`` shares between its two modes, checking manifests
(:mod:`agentops.policy_cmd`) and running test suites (:mod:`agentops.policy_suite`): reading
Kubernetes objects from YAML/JSON files and directories (:func:`load_documents`), turning the
policies and exceptions among them into the engine's :class:`~policies.engine.PolicySet`, and
creating an object as the mutating webhook would, as the user ``policy-test`` at a given clock
(:func:`mutate_create`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import jsonpatch
import yaml

from contracts.resources import AgentPolicy, AgentPolicyException, ClusterAgentPolicy
from policies.engine import AdmissionRequest, Decision, PolicySet, UserInfo, mutate

TEST_USER = UserInfo(username="policy-test", uid="", groups=("system:authenticated",))
#: What makes up the policy set: the policies and the exceptions to them.
POLICY_KINDS = ("ClusterAgentPolicy", "AgentPolicy", "AgentPolicyException")
DEFAULT_NAMESPACE = "default"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")
#: The names of a test suite file (:mod:`agentops.policy_suite`).
SUITE_FILES = ("agentops-test.yaml", "agentops-test.yml")

PolicyObject = ClusterAgentPolicy | AgentPolicy | AgentPolicyException
_POLICY_MODELS: dict[str, type[PolicyObject]] = {
    "ClusterAgentPolicy": ClusterAgentPolicy,
    "AgentPolicy": AgentPolicy,
    "AgentPolicyException": AgentPolicyException,
}


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    """One object read from ``path``, as it stands in the file."""

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
        """``None`` for the cluster-scoped ClusterAgentPolicy; objects without one are in ``default``."""
        if self.kind == "ClusterAgentPolicy":
            return None
        meta = self.obj.get("metadata")
        namespace = meta.get("namespace") if isinstance(meta, dict) else None
        return str(namespace) if namespace else DEFAULT_NAMESPACE


class ManifestError(Exception):
    """A file that cannot be read or parsed; the message starts with the file name."""


def load_documents(path: Path) -> Iterator[Document]:
    """Every object in a file, or in the manifest files under a directory (sorted, recursive)."""
    if path.is_dir():
        # A test suite's files (the suite itself and any directory below ``path`` holding one)
        # are the suite's business: its resources break policies on purpose.
        suites = {p.parent for p in path.rglob("*") if p.name in SUITE_FILES} - {path}
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file()
            and p.suffix in MANIFEST_SUFFIXES
            and p.name not in SUITE_FILES
            and not suites.intersection(p.parents)
        )
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
        raise ManifestError(f"{file}: {yaml_problem(err)}") from err
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


def yaml_problem(err: yaml.YAMLError) -> str:
    """``invalid YAML at line L, column C: problem``, where the parser says where."""
    mark = getattr(err, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
    return f"invalid YAML{where}: {getattr(err, 'problem', None) or err}"


def labels_of(obj: Mapping[str, Any]) -> dict[str, str]:
    """An object's ``metadata.labels`` (a Namespace's feed ``namespaceSelector``)."""
    meta = obj.get("metadata")
    found = meta.get("labels") if isinstance(meta, dict) else None
    return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}


def parse_policy(doc: Document) -> PolicyObject:
    """A document of one of :data:`POLICY_KINDS` as its model, in the namespace it is taken to be
    in; raises :class:`pydantic.ValidationError` when it is not a valid one."""
    obj = dict(doc.obj)
    if doc.namespace is not None:
        obj["metadata"] = {**(obj.get("metadata") or {}), "namespace": doc.namespace}
    return _POLICY_MODELS[doc.kind].model_validate(obj)


def existing_agents(documents: Iterable[Document]) -> frozenset[tuple[str, str]]:
    """The ``(namespace, name)`` of the AgentDeployments among ``documents``: what pipelines may name."""
    return frozenset(
        (doc.namespace or DEFAULT_NAMESPACE, doc.name) for doc in documents if doc.kind == "AgentDeployment"
    )


def policy_set(objects: Iterable[PolicyObject], agents: frozenset[tuple[str, str]]) -> PolicySet:
    """The engine's view of the policies and exceptions loaded, with the agents that exist."""
    cluster: list[ClusterAgentPolicy] = []
    namespaced: list[AgentPolicy] = []
    exceptions: list[AgentPolicyException] = []
    for obj in objects:
        if isinstance(obj, ClusterAgentPolicy):
            cluster.append(obj)
        elif isinstance(obj, AgentPolicy):
            namespaced.append(obj)
        else:
            exceptions.append(obj)
    return PolicySet(tuple(cluster), tuple(namespaced), agents, exceptions=tuple(exceptions))


def mutate_create(
    uid: str,
    doc: Document,
    namespace: str | None,
    obj: Mapping[str, Any],
    policies: PolicySet,
    namespace_labels: Mapping[str, str],
    now: datetime,
) -> tuple[AdmissionRequest, Decision, Mapping[str, Any]]:
    """Create ``obj`` offline as the mutating webhook would: the request, its decision, and the
    object with the patch applied (``obj`` itself when denied or unpatched)."""
    request = AdmissionRequest(
        uid=uid,
        kind=doc.kind,
        operation="CREATE",
        namespace=namespace,
        name=doc.name,
        object=obj,
        old_object=None,
        user=TEST_USER,
        dry_run=True,
        now=now,
        namespace_labels=namespace_labels,
    )
    mutated = mutate(request, policies)
    patched = jsonpatch.apply_patch(obj, list(mutated.patch)) if mutated.allowed and mutated.patch else obj
    return request, mutated, patched
