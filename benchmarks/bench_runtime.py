"""Throughput of one agent worker (offline provider) against a raw redis-py consumer loop, and idle RSS.

Both consumers run as separate processes against the same real ``redis-server`` in the same run:

- **worker**: ``python -m agent_runtime`` exactly as a pod runs it (offline provider, JSON logs at
  INFO to /dev/null, ``maxConcurrentTasks`` 32);
- **raw**: a synchronous redis-py loop doing the minimum the same contract needs: XREADGROUP 32
  entries, then per entry one MULTI/EXEC with the result XADD and the XACK.

For each run the benchmark submits N tasks in one pipeline and times until N results are on the
reply stream.  It prints the median tasks/s of each, their ratio, and the RSS of an idle worker
(offline, and anthropic, which imports the SDK).  Targets: >= 1,000 tasks/s, >= 0.5 of raw, < 80 MB.

    .venv/bin/python benchmarks/bench_runtime.py [--tasks 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, cast

import redis

from contracts.keys import client_results_stream, task_stream
from contracts.runtime_env import RuntimeConfig
from contracts.streams import CONSUMER_GROUP, Result, Task
from localstack.redis_server import RedisServer

REPO = Path(__file__).resolve().parent.parent
CONCURRENCY = 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def raw_consumer(url: str, namespace: str, agent: str) -> None:
    """The baseline: the same contract with nothing else (no validation, budgets, metrics, logs)."""
    client = redis.Redis.from_url(url)
    stream = task_stream(namespace, agent)
    with contextlib.suppress(redis.ResponseError):
        client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    while True:
        reply = client.xreadgroup(CONSUMER_GROUP, "raw", {stream: ">"}, count=CONCURRENCY, block=1000)
        batches = cast(list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]], reply or [])
        for _, entries in batches:
            for entry_id, fields in entries:
                prompt = fields[b"prompt"].decode()
                result = Result(
                    task_id=fields[b"task_id"].decode(),
                    status="succeeded",
                    output="offline: " + prompt,
                    worker="raw",
                )
                pipe = client.pipeline(transaction=True)
                pipe.xadd(fields[b"reply_to"].decode(), cast(dict[Any, Any], result.to_fields()))
                pipe.xack(stream, CONSUMER_GROUP, entry_id)
                pipe.execute()


def start_worker(
    url: str, namespace: str, agent: str, provider: str, workdir: Path
) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    prompt_file = workdir / f"{namespace}.prompt"
    prompt_file.write_text("You summarise text in one sentence.")
    config = RuntimeConfig(
        namespace=namespace,
        agent=agent,
        model="offline" if provider == "offline" else "claude-haiku-4-5",
        provider=provider,
        max_tokens_per_call=256,
        max_concurrent_tasks=CONCURRENCY,
        timeout_seconds=30,
        redis_url=url,
        prompt_file=str(prompt_file),
        http_port=port,
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTOPS_")}
    env.update(config.to_env())
    env.update({"AGENTOPS_HTTP_HOST": "127.0.0.1", "AGENTOPS_API_KEY": "bench-key", "PYTHONPATH": str(REPO)})
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent_runtime"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"worker exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
                if response.status == 200:
                    return proc, port
        except OSError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError("worker not ready within 60 s")


def start_raw(url: str, namespace: str, agent: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, __file__, "--raw-consumer", url, namespace, agent],
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    client = redis.Redis.from_url(url)
    # Ready once its consumer group exists.
    while True:
        try:
            if client.xinfo_groups(task_stream(namespace, agent)):
                break
        except redis.ResponseError:
            pass
        time.sleep(0.02)
    client.close()
    return proc


def timed_batch(url: str, namespace: str, agent: str, tasks: int) -> float:
    """Submit ``tasks`` tasks at once; seconds until every result is on the reply stream."""
    client = redis.Redis.from_url(url)
    reply_to = client_results_stream(namespace, "bench")
    pipe = client.pipeline(transaction=False)
    for i in range(tasks):
        task = Task(task_id=f"{i}", prompt=f"Summarise document number {i} in one line", reply_to=reply_to)
        pipe.xadd(task_stream(namespace, agent), task.to_fields())  # type: ignore[arg-type]
    started = time.perf_counter()
    pipe.execute()
    while client.xlen(reply_to) < tasks:
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--raw-consumer", nargs=3, metavar=("URL", "NAMESPACE", "AGENT"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.raw_consumer:
        raw_consumer(*args.raw_consumer)
        return 0

    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        workdir = Path(tmp)
        server = RedisServer(workdir / "redis", die_with_parent=True)
        server.start()
        rates: dict[str, list[float]] = {"worker": [], "raw": []}
        try:
            for run in range(args.runs):
                for kind in ("raw", "worker"):  # interleaved, so load changes hit both alike
                    namespace = f"bench{run}{kind}{uuid.uuid4().hex[:6]}"
                    if kind == "worker":
                        proc, _ = start_worker(server.url, namespace, "agent", "offline", workdir)
                    else:
                        proc = start_raw(server.url, namespace, "agent")
                    try:
                        elapsed = timed_batch(server.url, namespace, "agent", args.tasks)
                    finally:
                        stop(proc)
                    rates[kind].append(args.tasks / elapsed)
                    print(f"run {run + 1} {kind:6s} {args.tasks / elapsed:8.0f} tasks/s", flush=True)
                redis.Redis.from_url(server.url).flushall()
            idle = {}
            for provider in ("offline", "anthropic"):
                proc, _ = start_worker(server.url, f"idle{provider}", "agent", provider, workdir)
                time.sleep(2.0)
                idle[provider] = rss_mb(proc.pid)
                stop(proc)
        finally:
            server.stop()

    worker, raw = statistics.median(rates["worker"]), statistics.median(rates["raw"])
    print()
    print(f"tasks per run: {args.tasks}, runs: {args.runs}, maxConcurrentTasks: {CONCURRENCY}")
    print(f"worker (offline provider): median {worker:8.0f} tasks/s   (target >= 1000)")
    print(f"raw redis-py loop:         median {raw:8.0f} tasks/s")
    print(f"ratio worker / raw:        {worker / raw:.2f}            (target >= 0.5)")
    print(f"idle worker RSS, offline provider:   {idle['offline']:.1f} MB   (target < 80 MB)")
    print(
        f"idle worker RSS, anthropic provider: {idle['anthropic']:.1f} MB   (the SDK import alone is ~75 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
