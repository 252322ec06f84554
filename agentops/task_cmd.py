"""``agentops task submit``: put one task on an agent's stream and, with ``--wait``, print its result.

Exactly what ``redis-cli`` would do (see docs/runtime.md)::

    XADD agentops:<ns>:<agent>:tasks * task_id <id> prompt <text> reply_to agentops:<ns>:client:<user>:results
    XREAD BLOCK <ms> STREAMS agentops:<ns>:client:<user>:results <last-id>

Exit status with ``--wait``: 0 when the task succeeded, 1 for any other result status, 2 when no
result came within ``--timeout``, 3 when Redis cannot be reached.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import re
import sys
import time
import uuid
from typing import Any, cast

import redis

from contracts.keys import client_results_stream, task_stream
from contracts.streams import MAX_PROMPT_BYTES, Result, Task

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
REDIS_URL_ENV = "AGENTOPS_REDIS_URL"


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add ``task submit``."""
    task = subparsers.add_parser("task", help="submit tasks to agents")
    commands = task.add_subparsers(dest="task_command", metavar="SUBCOMMAND", required=True)
    submit = commands.add_parser(
        "submit",
        help="put a task on an agent's Redis stream (and wait for its result)",
        description="Submit a task to an agent's workers; with --wait, print the result when it arrives.",
    )
    submit.add_argument("agent", help="the AgentDeployment's name")
    submit.add_argument("prompt", help="the task's prompt; '-' reads it from stdin")
    submit.add_argument(
        "-n", "--namespace", default="default", help="the agent's namespace (default: default)"
    )
    submit.add_argument(
        "--redis-url",
        default=os.environ.get(REDIS_URL_ENV, DEFAULT_REDIS_URL),
        help=f"Redis the agents read (default: ${REDIS_URL_ENV} or {DEFAULT_REDIS_URL})",
    )
    submit.add_argument("--wait", action="store_true", help="block until the result arrives and print it")
    submit.add_argument(
        "--timeout", type=float, default=300.0, help="seconds to wait with --wait (default: 300)"
    )
    submit.add_argument("--task-id", help="idempotency key (default: a fresh random id)")
    submit.add_argument("--max-tokens", type=int, help="ask for fewer output tokens than the agent's limit")
    submit.add_argument("--json", action="store_true", help="print the whole result as JSON")
    submit.set_defaults(func=run_submit)


def _client_name() -> str:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "anonymous"
    # Stream key parts stay readable and free of ':' (the separator).
    return re.sub(r"[^A-Za-z0-9_.-]", "_", user) or "anonymous"


def run_submit(args: argparse.Namespace) -> int:
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    if len(prompt.encode()) > MAX_PROMPT_BYTES:
        print(
            f"error: the prompt is larger than the workers accept ({MAX_PROMPT_BYTES} bytes)", file=sys.stderr
        )
        return 1
    reply_to = client_results_stream(args.namespace, _client_name())
    task = Task(
        task_id=args.task_id or uuid.uuid4().hex,
        prompt=prompt,
        reply_to=reply_to,
        max_tokens=args.max_tokens,
        submitted_at=time.time(),
    )
    client = redis.Redis.from_url(args.redis_url, socket_connect_timeout=5)
    try:
        # Remember where the reply stream ends *before* submitting, so a fast result is not missed.
        last = cast(list[tuple[bytes, Any]], client.xrevrange(reply_to, count=1) or [])
        start_id = last[0][0] if last else b"0-0"
        entry_id = client.xadd(task_stream(args.namespace, args.agent), task.to_fields())  # type: ignore[arg-type]
        if not args.wait:
            print(f"submitted task {task.task_id} (entry {_text(entry_id)}); result will be on {reply_to}")
            return 0
        found = _wait_for(client, reply_to, start_id, task.task_id, args.timeout)
    except redis.RedisError as exc:
        print(f"error: Redis at {args.redis_url} failed: {exc}", file=sys.stderr)
        return 3
    finally:
        client.close()
    if found is None:
        print(
            f"error: no result for task {task.task_id} within {args.timeout:g}s; it stays queued "
            f"(is an agent {args.namespace}/{args.agent} running?). Its result will be on {reply_to}.",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(found.model_dump(exclude_none=True), indent=2))
    elif found.status == "succeeded":
        print(found.output)
    else:
        print(f"{found.status}: {found.error}", file=sys.stderr)
    return 0 if found.status == "succeeded" else 1


def _wait_for(
    client: redis.Redis, stream: str, start_id: bytes, task_id: str, timeout: float
) -> Result | None:
    deadline = time.monotonic() + timeout
    cursor = start_id
    while (left := deadline - time.monotonic()) > 0:
        reply = client.xread({stream: cursor}, block=max(1, int(min(left, 5.0) * 1000)))
        for _, entries in cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], reply or []):
            for entry_id, fields in entries:
                cursor = entry_id
                if fields.get(b"task_id", b"").decode(errors="replace") == task_id:
                    # Our copy is read: remove it so a per-user reply stream does not grow forever.
                    client.xdel(stream, entry_id)
                    return Result.from_fields(fields)
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
