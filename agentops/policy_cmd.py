"""``agentops policy test``: evaluate manifests offline with the admission engine, for GitOps CI.

Every AgentDeployment, AgentPipeline, ClusterAgentPolicy, AgentPolicy, AgentPromptRevision and
AgentPolicyException in the given files (directories are searched recursively for ``*.yaml``,
``*.yml`` and ``*.json``) is evaluated as a CREATE by the user ``policy-test`` at ``--now``
(default: the real clock), with exactly the engine the webhook runs: ``mutate`` first, then
``validate`` on the mutated object.  Policies and AgentPolicyExceptions come from ``--policies``
and from the objects among the files; an exception counts while ``--now`` is before its
``expiresAt``, as in the cluster.  Namespace objects among the files supply namespace
labels for ``namespaceSelector``; AgentDeployments among the files count as existing for
pipelines.  Objects without a namespace are taken to be in ``default``.

Each problem is printed as ``file: Kind/name: severity: message``; the exit status is 1 when
anything would be denied or a file cannot be read or parsed, 0 otherwise.  Directories holding a
test suite (``agentops-test.yaml``) are skipped: their resources break policies on purpose.

``agentops policy test DIR`` instead runs the test suites in DIR (see :mod:`agentops.policy_suite`):
expected results per resource and rule, a table, exit status 1 on any mismatch, 2 on a bad suite.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError

from agentops import policy_suite
from agentops.offline import (
    POLICY_KINDS,
    Document,
    ManifestError,
    PolicyObject,
    existing_agents,
    labels_of,
    load_documents,
    mutate_create,
    parse_policy,
    policy_set,
)
from policies.engine import PolicySet, validate

CHECKED_KINDS = frozenset(
    {
        "AgentDeployment",
        "AgentPipeline",
        "ClusterAgentPolicy",
        "AgentPolicy",
        "AgentPromptRevision",
        "AgentPolicyException",
    }
)


def rfc3339_time(text: str) -> datetime:
    """``--now``: an RFC 3339 time with a zone offset (``Z`` or ``+02:00``)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not an RFC 3339 time with a zone offset, e.g. 2026-03-01T18:00:00Z"
        )
    return moment


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
        "suites",
        nargs="*",
        metavar="DIR",
        help="test suites: agentops-test.yaml files, or directories searched for them",
    )
    test.add_argument(
        "-f",
        "--filename",
        dest="files",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="manifest files or directories (repeatable)",
    )
    test.add_argument(
        "--policies",
        action="extend",
        nargs="+",
        default=[],
        metavar="PATH",
        help="files or directories with ClusterAgentPolicy/AgentPolicy/AgentPolicyException objects to apply",
    )
    test.add_argument(
        "--now",
        type=rfc3339_time,
        default=None,
        metavar="RFC3339",
        help="judge as if it were this time (e.g. 2026-03-01T18:00:00Z), so verdicts before and after "
        "an exception's expiresAt are reproducible; default: the real clock",
    )
    test.add_argument(
        "--detailed-results",
        action="store_true",
        help="test suites: add each result's message, field, value, limit and exception to the table",
    )
    test.set_defaults(func=run_test)


def run_test(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    if not args.suites and not args.files:
        print(
            "agentops policy test: give test suite directories (DIR) or manifests (-f PATH)", file=sys.stderr
        )
        return 2
    if args.suites:
        if args.files or args.policies:
            print(
                "agentops policy test: give test suite directories (DIR) or manifests (-f PATH), not both",
                file=sys.stderr,
            )
            return 2
        return policy_suite.run_suites(
            args.suites, detailed=args.detailed_results, now=getattr(args, "now", None), out=out
        )
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
        doc.name: labels_of(doc.obj) for doc in documents + policy_documents if doc.kind == "Namespace"
    }
    now = args.now or datetime.now(UTC)
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
    request, mutated, obj = mutate_create(
        f"policy-test:{doc.path}:{doc.kind}/{doc.name}", doc, doc.namespace, doc.obj, policies,
        namespace_labels, now,
    )  # fmt: skip
    if not mutated.allowed:
        return mutated.denials, mutated.warnings, mutated.audit
    decision = validate(dataclasses.replace(request, object=obj), policies)
    return decision.denials, decision.warnings, decision.audit


def build_policy_set(
    policy_documents: Sequence[Document], documents: Sequence[Document], out: TextIO
) -> tuple[PolicySet, int]:
    """The policies among both lists and the agents among them; invalid policies are left out,
    and reported here when they come from ``--policies`` (the others are evaluated anyway)."""
    objects: list[PolicyObject] = []
    seen: set[tuple[str, str | None, str]] = set()
    problems = 0
    for doc in [*policy_documents, *documents]:
        if doc.kind not in POLICY_KINDS:
            continue
        key = (doc.kind, doc.namespace, doc.name)
        if key in seen:  # the same file given as --policies and -f
            continue
        seen.add(key)
        try:
            objects.append(parse_policy(doc))
        except ValidationError as err:
            if any(doc is d for d in policy_documents):
                for e in err.errors(include_url=False):
                    where = ".".join(str(p) for p in e["loc"])
                    print(f"{doc.path}: {doc.kind}/{doc.name}: invalid policy: {where}: {e['msg']}", file=out)
                problems += 1
    return policy_set(objects, existing_agents([*policy_documents, *documents])), problems
