"""The admission webhook over HTTPS, one uvicorn worker, at fixed open-loop request rates.

Server: a separate process running the real app (:func:`webhook.app.create_app`) on uvicorn with
the real hot-reloading TLS layer and one worker.  Its policy cache is a static snapshot of the
sample org-defaults policy plus ``--policies`` more matching ClusterAgentPolicies (the watch cache
is never on the request path, so a cluster adds nothing per request).

Client: this process, asyncio, raw HTTP/1.1 on a pool of keep-alive TLS connections (as the API
server keeps connections to a webhook).  Open loop: request *i* is dispatched at ``t0 + i/rate``
whether or not earlier ones have finished, and its latency runs from dispatch, including any wait
for a free connection, so a server that falls behind shows it in p99 (no coordinated omission).
The dispatcher's own lateness (event-loop timers have millisecond granularity) is printed
separately, as it is the client's, not the server's.  First, a closed-loop run on one connection
gives the capacity.

Each rate runs two phases: the baseline, ``GET /healthz`` at that rate over the same connections,
TLS and server; then AdmissionReviews at that rate in total, alternating ``/mutate`` and
``/validate`` (an AgentDeployment CREATE, ~1.2 kB, as the API server sends one of each per
create).  Reported per phase and endpoint: achieved throughput, p50/p99/max, errors, and the
ratio to the baseline measured in the same run.

Target (docs/architecture.md): p99 < 5 ms at 500 AdmissionReviews/s.

Run: ``.venv/bin/python -m benchmarks.bench_webhook [--rates 100,250,500] [--seconds 10]``
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SAMPLE_POLICY = Path(__file__).resolve().parents[1] / "deploy" / "samples" / "org-defaults.yaml"


# --- server ---------------------------------------------------------------------------------------


def serve(port: int, cert_dir: Path, extra_policies: int) -> None:
    """The server process: real app, real TLS layer, static policy snapshot, one worker."""
    import uvicorn
    import yaml

    from contracts.resources import ClusterAgentPolicy
    from policies.engine import PolicySet
    from webhook.app import create_app
    from webhook.cache import Snapshot, StaticPolicySource
    from webhook.tls import ReloadingTLS

    cluster = [ClusterAgentPolicy.from_k8s(yaml.safe_load(SAMPLE_POLICY.read_text()))]
    for i in range(extra_policies):
        cluster.append(
            ClusterAgentPolicy.from_k8s(
                {
                    "apiVersion": "agentops.agentops.io/v1alpha1",
                    "kind": "ClusterAgentPolicy",
                    "metadata": {"name": f"extra-{i}"},
                    "spec": {"limits": {"maxTokensPerCall": {"max": 16000 + i}}, "replicas": {"max": 10 + i}},
                }
            )
        )
    snapshot = Snapshot(
        PolicySet(cluster=tuple(cluster)),
        namespace_labels={"bench": {"kubernetes.io/metadata.name": "bench"}},
    )
    tls = ReloadingTLS(cert_dir / "tls.crt", cert_dir / "tls.key")
    tls.start()
    config = uvicorn.Config(
        create_app(StaticPolicySource(snapshot)),
        host="127.0.0.1",
        port=port,
        ssl_context_factory=lambda _c, _d: tls.context,
        log_level="warning",
        access_log=False,
        workers=1,
    )
    gc.collect()
    gc.freeze()  # as python -m webhook does before serving
    uvicorn.Server(config).run()


# --- client ---------------------------------------------------------------------------------------


def review_body(endpoint: str) -> bytes:
    obj = {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentDeployment",
        "metadata": {"name": "research-agent", "namespace": "bench", "labels": {"team": "research"}},
        "spec": {
            "replicas": 3,
            "model": "claude-sonnet-4-20250514",
            "systemPrompt": "You are a research agent. Gather and summarise information accurately. " * 4,
            "limits": {"maxTokensPerCall": 8000, "maxConcurrentTasks": 5, "timeoutSeconds": 120},
        },
    }
    if endpoint == "/validate":
        # What the API server sends to validation: the object after our mutation (stamps present).
        from policies.admission import parse_admission_review
        from policies.engine import PolicySet, mutate

        pre = _review(obj)
        decision = mutate(parse_admission_review(pre), PolicySet())
        import jsonpatch

        obj = jsonpatch.apply_patch(obj, list(decision.patch))
    return json.dumps(_review(obj)).encode()


def _review(obj: dict[str, Any]) -> dict[str, Any]:
    gv = {"group": "agentops.agentops.io", "version": "v1alpha1"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {**gv, "kind": "AgentDeployment"},
            "resource": {**gv, "resource": "agentdeployments"},
            "name": obj["metadata"]["name"],
            "namespace": "bench",
            "operation": "CREATE",
            "userInfo": {"username": "alice", "uid": "u-1", "groups": ["system:authenticated"]},
            "object": obj,
            "oldObject": None,
            "dryRun": False,
        },
    }


class Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def request(self, method: str, path: str, body: bytes = b"") -> int:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: application/json\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionError("server closed the connection")
        status = int(status_line.split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status


class Pool:
    """A fixed set of keep-alive TLS connections; a request waits for a free one.

    Fixed, like the API server's connection reuse: opening a connection per request under load
    would measure TLS handshakes (and spiral when the server falls behind), not admissions.
    """

    def __init__(self, port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.ctx = port, ctx
        self.free: asyncio.Queue[Connection] = asyncio.Queue()
        self.size = 0

    async def warm(self, count: int) -> None:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.ctx)
            self.free.put_nowait(Connection(reader, writer))
            self.size += 1

    async def call(self, method: str, path: str, body: bytes) -> int:
        conn = await self.free.get()
        try:
            status = await conn.request(method, path, body)
        except Exception:
            conn.writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port, ssl=self.ctx)
            self.free.put_nowait(Connection(reader, writer))
            raise
        self.free.put_nowait(conn)
        return status


@dataclass
class Stream:
    name: str
    method: str
    path: str
    body: bytes
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


async def run_rate(
    pool: Pool, streams: Sequence[Stream], rate: float, seconds: float
) -> tuple[float, list[float]]:
    """Send ``rate`` requests/s in total, round-robin over ``streams``.

    Returns the wall time taken and the dispatcher's lag behind schedule per request.  Latency
    runs from dispatch (so waiting for a free connection while the server is slow counts) but
    not from the ideal due time: the event loop's timers have millisecond granularity, and that
    client-side lateness, reported separately as the lag, is not the server's.  Times come from
    ``time.perf_counter`` (uvloop's ``loop.time()`` has millisecond resolution).
    """
    total = int(rate * seconds)
    interval = 1.0 / rate
    tasks: list[asyncio.Task[None]] = []
    lags: list[float] = []

    async def one(stream: Stream, due: float) -> None:
        try:
            status = await pool.call(stream.method, stream.path, stream.body)
        except Exception:
            stream.errors += 1
            return
        if status != 200:
            stream.errors += 1
            return
        stream.latencies.append(time.perf_counter() - due)

    start = time.perf_counter() + 0.05
    for i in range(total):
        due = start + i * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        dispatched = time.perf_counter()
        lags.append(dispatched - due)
        tasks.append(asyncio.create_task(one(streams[i % len(streams)], dispatched)))
    await asyncio.gather(*tasks)
    return time.perf_counter() - start, lags


def pct(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def client(port: int, ca_file: Path, rates: Sequence[float], seconds: float, connections: int) -> int:
    ctx = ssl.create_default_context(cafile=ca_file)
    pool = Pool(port, ctx)
    await pool.warm(connections)
    bodies = {"/mutate": review_body("/mutate"), "/validate": review_body("/validate")}
    # Warm-up: first requests pay for lazy imports and the effective-policy cache.
    for _ in range(200):
        for path, body in bodies.items():
            await pool.call("POST", path, body)
    # Capacity, closed loop: one connection, one request at a time, as fast as the server answers.
    for name, method, path, body in (
        ("healthz", "GET", "/healthz", b""),
        ("admission", "POST", "/mutate", bodies["/mutate"]),
    ):
        times: list[float] = []
        began = time.perf_counter()
        for i in range(2000):
            if name == "admission":
                path, body = (
                    ("/mutate", bodies["/mutate"]) if i % 2 == 0 else ("/validate", bodies["/validate"])
                )
            sent = time.perf_counter()
            await pool.call(method, path, body)
            times.append(time.perf_counter() - sent)
        span = time.perf_counter() - began
        print(
            f"closed loop, 1 connection, {name:>9}: {len(times) / span:6.0f} req/s,"
            f" p50 {pct(times, 0.5):.2f} ms, p99 {pct(times, 0.99):.2f} ms"
        )
    print()
    met = True
    print(f"{'rate/s':>7} {'stream':>9} {'done/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'err':>4}"
          f" {'p50/base':>8} {'p99/base':>8}")  # fmt: skip
    for rate in rates:
        # Phase 1, the baseline: GET /healthz at the same rate over the same connections.
        base = Stream("healthz", "GET", "/healthz", b"")
        base_wall, base_lags = await run_rate(pool, [base], rate, seconds)
        # Phase 2: AdmissionReviews at ``rate`` in total, alternating /mutate and /validate as the
        # API server does for each create.
        streams = [
            Stream("mutate", "POST", "/mutate", bodies["/mutate"]),
            Stream("validate", "POST", "/validate", bodies["/validate"]),
        ]
        wall, lags = await run_rate(pool, streams, rate, seconds)
        admissions = [x for s in streams for x in s.latencies]
        rows = [(base, base.latencies, base_wall), *((s, s.latencies, wall) for s in streams)]
        for stream, values, span in rows:
            if not values or not base.latencies:
                print(f"{rate:>7.0f} {stream.name:>9} no successful requests ({stream.errors} errors)")
                met = False
                continue
            p50, p99 = pct(values, 0.5), pct(values, 0.99)
            r50, r99 = p50 / pct(base.latencies, 0.5), p99 / pct(base.latencies, 0.99)
            print(
                f"{rate:>7.0f} {stream.name:>9} {len(values) / span:>7.0f} {p50:>7.2f} {p99:>7.2f}"
                f" {max(values) * 1000:>7.2f} {stream.errors:>4} {r50:>8.2f} {r99:>8.2f}"
            )
        if admissions:
            p50, p99 = pct(admissions, 0.5), pct(admissions, 0.99)
            errors = sum(s.errors for s in streams)
            print(
                f"{rate:>7.0f} {'admission':>9} {len(admissions) / wall:>7.0f} {p50:>7.2f} {p99:>7.2f}"
                f" {max(admissions) * 1000:>7.2f} {errors:>4} {p50 / pct(base.latencies, 0.5):>8.2f}"
                f" {p99 / pct(base.latencies, 0.99):>8.2f}"
            )
            if rate >= 500 and (p99 >= 5.0 or errors):
                met = False
        print(
            f"{'':>7} {'(client)':>9} dispatch lag behind schedule p99:"
            f" baseline {pct(base_lags, 0.99):.2f} ms, admission {pct(lags, 0.99):.2f} ms\n"
        )
    print(f"target p99 < 5 ms at 500 AdmissionReviews/s: {'met' if met else 'NOT met'}")
    print(
        f"(machine: {os.cpu_count()} CPUs, shared with whatever else runs; client and server are two"
        f" processes; {pool.size} keep-alive TLS connections; load average now"
        f" {' '.join(f'{x:.1f}' for x in os.getloadavg())})"
    )
    return 0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc), to show how busy the server was."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="100,250,500", help="comma-separated AdmissionReviews/s")
    parser.add_argument("--seconds", type=float, default=10.0, help="duration of each rate")
    parser.add_argument("--policies", type=int, default=0, help="extra matching ClusterAgentPolicies")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive TLS connections")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)  # internal: server process
    parser.add_argument("--cert-dir", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve, args.cert_dir, args.policies)
        return 0

    from certs.authority import Hosts, plan
    from certs.store import write_dir

    with tempfile.TemporaryDirectory() as tmp:
        cert_dir = Path(tmp)
        bundle, _ = plan(None, Hosts.local(), dt.datetime.now(dt.UTC))
        write_dir(bundle, cert_dir)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.bench_webhook", "--serve", str(port),
             "--cert-dir", str(cert_dir), "--policies", str(args.policies)],
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if server.poll() is not None or time.monotonic() > deadline:
                        print("error: benchmark server did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.1)
            rates = [float(r) for r in args.rates.split(",")]
            print(f"webhook over HTTPS, 1 uvicorn worker, {1 + args.policies} ClusterAgentPolicies, "
                  f"{args.seconds:.0f} s per rate, open loop\n")  # fmt: skip
            import uvloop

            server_cpu, client_cpu, wall = _cpu_seconds(server.pid), time.process_time(), time.monotonic()
            status = uvloop.run(client(port, cert_dir / "ca.crt", rates, args.seconds, args.connections))
            wall = time.monotonic() - wall
            server_cpu = _cpu_seconds(server.pid) - server_cpu
            client_cpu = time.process_time() - client_cpu
            print(
                f"CPU used: server {server_cpu:.1f} s ({server_cpu / wall:.0%} of one core),"
                f" client {client_cpu:.1f} s ({client_cpu / wall:.0%}), over {wall:.0f} s"
            )
            return status
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


if __name__ == "__main__":
    sys.exit(main())
