"""``agentops pipeline watch`` and ``agentops pipeline output``.

``watch <name>`` follows the AgentPipeline with a watch (no polling) and redraws a progress
display on every change: a progress bar, then one line per step with its phase, attempts,
duration and message; it exits when the pipeline finishes (status 0 if Succeeded, 1 if Failed).

``output <name> [--step STEP]`` prints the whole output of the pipeline (or of one step).  Status
keeps only the first 2 KiB of each output; the controller keeps the whole text in Redis under
``agentops:<ns>:pipeline:<name>[:step:<step>]:output``, which this command reads (``--redis-url``
or ``$AGENTOPS_REDIS_URL``).  Without Redis it falls back to status and says it may be truncated.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import datetime
from typing import Any, TextIO

import redis

import kube
from agentops.cluster import add_cluster_options, api_and_namespace
from contracts.keys import pipeline_output_key, pipeline_step_output_key
from contracts.resources import GROUP, VERSION

PIPELINES = "agentpipelines"

_SYMBOL = {"Pending": "·", "Waiting": "…", "Running": "▶", "Succeeded": "✔", "Failed": "✘", "Skipped": "-"}


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def render_progress(pipeline: dict[str, Any], width: int = 30) -> str:
    """The progress display of one pipeline state (pure, for tests and for redraws)."""
    status = pipeline.get("status") or {}
    steps = status.get("steps") or [{"name": s["name"]} for s in pipeline["spec"]["steps"]]
    total = len(steps)
    done = sum(1 for s in steps if s.get("phase") == "Succeeded")
    filled = int(width * done / total) if total else width
    phase = status.get("phase", "Pending")
    lines = [
        f"{pipeline['metadata']['name']}  {phase}  [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
    ]
    for step in steps:
        step_phase = step.get("phase", "Pending")
        start, end = _parse_time(step.get("startTime")), _parse_time(step.get("completionTime"))
        took = f"{(end - start).total_seconds():.2f}s" if start and end else ""
        attempts = f"x{step['attempts']}" if step.get("attempts", 0) > 1 else ""
        message = f"  {step['message']}" if step.get("message") else ""
        symbol = _SYMBOL.get(step_phase, "?")
        lines.append(f"  {symbol} {step['name']:<24} {step_phase:<10} {attempts:<4} {took:>8}{message}")
    if phase in ("Succeeded", "Failed") and status.get("output"):
        first = status["output"].splitlines()[0] if status["output"] else ""
        lines.append(f"  output: {first[:100]}")
    return "\n".join(lines)


def watch_pipeline(api: kube.Client, namespace: str, name: str, out: TextIO, redraw: bool) -> int:
    """Redraw on every change until the pipeline finishes (1 if the hour-long watch ends first)."""
    previous = ""
    collection = kube.path(f"{GROUP}/{VERSION}", PIPELINES, namespace=namespace)
    with api.watch(collection, field_selector=f"metadata.name={name}", timeout_seconds=3600) as stream:
        for event in stream:
            obj = event["object"]
            if event["type"] == "BOOKMARK":
                continue
            if event["type"] == "DELETED":
                out.write(f"pipeline {name!r} was deleted\n")
                return 1
            text = render_progress(obj)
            if text != previous:
                if redraw:
                    out.write("\x1b[2J\x1b[H")
                out.write(text + "\n\n")
                out.flush()
                previous = text
            phase = (obj.get("status") or {}).get("phase")
            if phase in ("Succeeded", "Failed"):
                return 0 if phase == "Succeeded" else 1
    return 1


def _watch(args: argparse.Namespace) -> int:
    api, namespace = api_and_namespace(args)
    if api.get(kube.path(f"{GROUP}/{VERSION}", PIPELINES, args.name, namespace=namespace)) is None:
        print(f"no pipeline {args.name!r} in namespace {namespace}", file=sys.stderr)
        return 1
    return watch_pipeline(
        api, namespace, args.name, sys.stdout, redraw=sys.stdout.isatty() and not args.plain
    )


def _output(args: argparse.Namespace) -> int:
    api, namespace = api_and_namespace(args)
    key = (
        pipeline_step_output_key(namespace, args.name, args.step)
        if args.step
        else pipeline_output_key(namespace, args.name)
    )
    url = args.redis_url or os.environ.get("AGENTOPS_REDIS_URL")
    if url:
        conn = redis.Redis.from_url(url)
        try:
            value = conn.get(key)
        except redis.RedisError as exc:
            print(f"cannot read {key} from Redis: {exc}; falling back to status", file=sys.stderr)
            value = None
        finally:
            conn.close()
        if value is not None:
            sys.stdout.write(value.decode() if isinstance(value, bytes) else str(value))
            sys.stdout.write("\n")
            return 0
    try:
        pipeline = api.request(
            "GET", kube.path(f"{GROUP}/{VERSION}", PIPELINES, args.name, namespace=namespace)
        )
    except kube.ApiError as exc:
        print(
            f"cannot read pipeline {args.name!r} in {namespace}: {exc.status} {exc.reason}", file=sys.stderr
        )
        return 1
    status = pipeline.get("status") or {}
    if args.step:
        step = next((s for s in status.get("steps", []) if s.get("name") == args.step), None)
        if step is None:
            print(f"pipeline {args.name!r} has no step {args.step!r}", file=sys.stderr)
            return 1
        text, truncated = step.get("output"), bool(step.get("outputTruncated"))
    else:
        text, truncated = status.get("output"), "[truncated" in (status.get("output") or "")
    if text is None:
        print("no output yet", file=sys.stderr)
        return 1
    if truncated:
        print("note: output truncated in status; pass --redis-url for the whole text", file=sys.stderr)
    print(text)
    return 0


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``pipeline watch`` and ``pipeline output``."""
    pipeline = subparsers.add_parser("pipeline", help="follow pipelines and read their outputs")
    sub = pipeline.add_subparsers(dest="pipeline_command", metavar="SUBCOMMAND", required=True)

    watch_parser = sub.add_parser("watch", help="show a pipeline's steps live until it finishes")
    watch_parser.add_argument("name")
    watch_parser.add_argument("--plain", action="store_true", help="append updates instead of redrawing")
    add_cluster_options(watch_parser)
    watch_parser.set_defaults(func=_watch)

    output = sub.add_parser("output", help="the whole output of a pipeline or one of its steps")
    output.add_argument("name")
    output.add_argument("--step", help="one step's output instead of the pipeline's")
    output.add_argument("--redis-url", help="Redis holding whole outputs (default: $AGENTOPS_REDIS_URL)")
    add_cluster_options(output)
    output.set_defaults(func=_output)
