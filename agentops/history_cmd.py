"""``agentops history`` and ``agentops rollback``: an agent's prompt revisions, and going back to one.

``history <agent>`` lists the AgentPromptRevisions the controller recorded (number, time, who with
their groups, why) each followed by a unified diff against the revision before it.
``rollback <agent> --to <revision>`` writes that revision's prompt back into the agent with a
``change-reason`` annotation; it is an ordinary update, so the admission webhook stamps it (who,
when, previous hash) and the controller records it as a new revision: a rollback is audited like
any other change.  ``--to`` takes a revision number (``3`` or ``r3``) or a revision's name.
"""

from __future__ import annotations

import argparse
import difflib
import sys
from typing import Any

import kube
from agentops.cluster import add_cluster_options, api_and_namespace
from contracts.resources import CHANGE_REASON, GROUP, LABEL_AGENT, VERSION

OURS = f"{GROUP}/{VERSION}"


def list_revisions(api: kube.Client, namespace: str, agent: str) -> list[dict[str, Any]]:
    items = api.list_items(
        kube.path(OURS, "agentpromptrevisions", namespace=namespace), label_selector=f"{LABEL_AGENT}={agent}"
    )
    return sorted((i for i in items if i["spec"]["agent"] == agent), key=lambda i: int(i["spec"]["revision"]))


def format_history(revisions: list[dict[str, Any]], diffs: bool = True) -> str:
    lines: list[str] = []
    previous = ""
    for item in revisions:
        spec = item["spec"]
        author = spec.get("author", {})
        groups = ",".join(g for g in author.get("groups", []) if not g.startswith("system:"))
        who = author.get("username", "unknown") + (f" ({groups})" if groups else "")
        lines.append(
            f"r{spec['revision']}  {spec.get('time', '?')}  {who}  sha256:{spec['sha256'][:12]}  "
            f"{item['metadata']['name']}"
        )
        lines.append(f"    reason: {spec.get('reason') or '(none given)'}")
        if diffs:
            diff = difflib.unified_diff(
                previous.splitlines(keepends=True),
                spec["prompt"].splitlines(keepends=True),
                fromfile=f"r{int(spec['revision']) - 1}" if previous else "/dev/null",
                tofile=f"r{spec['revision']}",
            )
            lines.extend("    " + line.rstrip("\n") for line in diff)
        lines.append("")
        previous = spec["prompt"]
    return "\n".join(lines)


def find_revision(revisions: list[dict[str, Any]], wanted: str) -> dict[str, Any] | None:
    number = wanted[1:] if wanted.lower().startswith("r") and wanted[1:].isdigit() else wanted
    for item in revisions:
        if item["metadata"]["name"] == wanted or (
            number.isdigit() and int(item["spec"]["revision"]) == int(number)
        ):
            return item
    return None


def _history(args: argparse.Namespace) -> int:
    api, namespace = api_and_namespace(args)
    revisions = list_revisions(api, namespace, args.agent)
    if not revisions:
        print(
            f"no prompt revisions recorded for agent {args.agent!r} in namespace {namespace}", file=sys.stderr
        )
        return 1
    print(format_history(revisions, diffs=not args.no_diff))
    return 0


def _rollback(args: argparse.Namespace) -> int:
    api, namespace = api_and_namespace(args)
    revisions = list_revisions(api, namespace, args.agent)
    target = find_revision(revisions, args.to)
    if target is None:
        known = ", ".join(f"r{r['spec']['revision']}" for r in revisions) or "none"
        print(f"agent {args.agent!r} has no revision {args.to!r} (known: {known})", file=sys.stderr)
        return 1
    number = target["spec"]["revision"]
    reason = args.reason or f"rollback to r{number}"
    patch = {
        "metadata": {"annotations": {CHANGE_REASON: reason}},
        "spec": {"systemPrompt": target["spec"]["prompt"]},
    }
    try:
        api.merge_patch(kube.path(OURS, "agentdeployments", args.agent, namespace=namespace), patch)
    except kube.ApiError as exc:
        # A webhook denial carries the policy's own message.
        print(f"rollback of {args.agent!r} refused: {exc.explanation}", file=sys.stderr)
        return 1
    print(f"agent {args.agent!r} now runs the prompt of r{number} (sha256:{target['spec']['sha256'][:12]})")
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``history`` and ``rollback``."""
    history = subparsers.add_parser("history", help="an agent's prompt revisions: who, when, why, diff")
    history.add_argument("agent")
    history.add_argument("--no-diff", action="store_true", help="list revisions without diffs")
    add_cluster_options(history)
    history.set_defaults(func=_history)

    rollback = subparsers.add_parser(
        "rollback", help="apply an earlier prompt revision (audited as a change)"
    )
    rollback.add_argument("agent")
    rollback.add_argument("--to", required=True, metavar="REVISION", help="revision number (3, r3) or name")
    rollback.add_argument("--reason", help="change reason recorded with the rollback")
    add_cluster_options(rollback)
    rollback.set_defaults(func=_rollback)
