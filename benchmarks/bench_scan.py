"""Background scan benchmark: 1,000 agents in 50 namespaces, policy reports after a policy change.

Everything is real: a local control plane (etcd, kube-apiserver, kube-controller-manager), a real
redis-server and the controller as a subprocess (``python -m controller``, cluster-wide,
standalone).  The agents are objects only: ``replicas: 0``, so no pod is ever needed (the
controller still reconciles each one: Deployment, ConfigMap, Service, status).  The local control
plane's Service range is a /24, so each agent's metrics Service is created headless first (no
cluster IP to allocate) and the controller's server-side apply adopts it.

1. **Setup** - N agents created through the API (8 threads) across M namespaces, under one
   ClusterAgentPolicy with a limit ceiling, a replica ceiling, a model allow-list, a prompt size
   and a budget (so every scan also reads each agent's spend from Redis).  Waits until every
   namespace has its report and every agent is in it; the report objects must equal the number of
   namespaces.
2. **Policy change -> last report** - ``rounds`` times, the policy's ``maxTokensPerCall`` ceiling
   is moved below the agents' value, then back above it.  A watch on the reports records when
   each namespace's report first shows the new verdict for all of its agents; the figure is the
   time from the PATCH of the policy to the last such report (p50/p99 over rounds), and the
   end-to-end throughput is agents / that time.
3. **Scan throughput** - from the controller's own log line per namespace scan (objects judged,
   seconds, including the Redis read and the report write): per round, the wall time from the first
   scan's start to the last report written, agents / that time, and the per-namespace scan time
   p50/p99.  Also the engine alone in this process: ``evaluate`` of the same agents.
4. **Size** - report bytes per agent (the stored JSON of every report, as the API server returns
   it, over the number of agents), set beside Kyverno's published 552 MB for 10,010 reports
   (its scaling guide), i.e. for that many objects.
5. **Memory** - controller RSS before the agents, with them, and after the scans, and its peak
   (the kernel's high-water mark, ``VmHWM``).
6. **The invariant** - one Report per namespace: at the end the number of Report objects
   (``report_objects``) must equal the number of namespaces created; otherwise the figures are
   still printed, then a ``FAILED`` line says what differs and the exit status is 1.

Run::

    .venv/bin/python -m benchmarks.bench_scan --agents 1000 --namespaces 50 --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml

import kube
import kube.config
from contracts import reports
from contracts.resources import AgentDeployment, ClusterAgentPolicy
from localstack.controlplane import ControlPlane
from localstack.crds import CRD_DIR
from localstack.redis_server import RedisServer
from policies.results import evaluate
from policies.review import PolicySet

GROUP, VERSION = "agentops.agentops.io", "v1alpha1"
POLICY = "bench-org"
#: Kyverno's scaling guide: 10,010 PolicyReports took 552 MB of etcd.
KYVERNO_BYTES, KYVERNO_REPORTS = 552e6, 10_010
AGENT_TOKENS = 8000
LOOSE, TIGHT = 10_000, 4_000
SCAN_LINE = re.compile(
    r"policy scan of namespace (\S+): (\d+) objects, (\d+) results, report (\d+) bytes \w+, ([\d.]+) s; "
    r"(\d+) agents' violations changed"
)


def agent(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "AgentDeployment",
        "metadata": {"name": name, "namespace": namespace, "labels": {"team": namespace}},
        "spec": {
            "replicas": 0,
            "model": "offline-bench",
            "systemPrompt": "You answer briefly and cite your sources.",
            "limits": {"maxTokensPerCall": AGENT_TOKENS, "maxConcurrentTasks": 2, "timeoutSeconds": 30},
        },
    }


def headless_service(agent_name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": f"{agent_name}-metrics"},
        # A headless Service without a selector defaults to RequireDualStack, which the agent's
        # (selector) Service the controller applies may not keep on a single-stack cluster.
        "spec": {
            "clusterIP": "None",
            "ipFamilyPolicy": "SingleStack",
            "selector": {"agentops.agentops.io/agent": agent_name},
            "ports": [{"name": "metrics", "port": 8080}],
        },
    }


def policy(max_tokens: int) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ClusterAgentPolicy",
        "metadata": {"name": POLICY},
        "spec": {
            "mode": "Enforce",
            "namespaceSelector": {"matchLabels": {"bench": "scan"}},
            "limits": {"maxTokensPerCall": {"max": max_tokens}, "timeoutSeconds": {"max": 600}},
            "replicas": {"max": 10},
            "models": {"allowed": ["claude-*", "offline-*"]},
            "prompts": {"maxBytes": 4096},
            "budget": {"period": "month", "tokens": 1_000_000},
        },
    }


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (``VmRSS``) or at its peak so far (``VmHWM``), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def one_report_per_namespace(listed: list[dict[str, Any]], namespaces: list[str]) -> str:
    """Why the Report objects are not one per namespace created, or "" when they are."""
    if len(listed) == len(namespaces):
        return ""
    per_namespace: dict[str, int] = {}
    for report in listed:
        namespace = report["metadata"].get("namespace", "")
        per_namespace[namespace] = per_namespace.get(namespace, 0) + 1
    missing = [ns for ns in namespaces if ns not in per_namespace]
    extra = sorted(ns for ns, n in per_namespace.items() if n > 1 or ns not in namespaces)
    return (
        f"{len(listed)} Report objects for {len(namespaces)} namespaces created (one per namespace expected)"
        + (f"; without a report: {', '.join(missing[:10])}" if missing else "")
        + (f"; more than one or not ours: {', '.join(extra[:10])}" if extra else "")
    )


def settled(api: kube.Client, ours: str) -> bool:
    listed = api.list_items(kube.path(ours, "agentdeployments"))
    return all(
        (a.get("status") or {}).get("observedGeneration") == a["metadata"]["generation"] for a in listed
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def wait(predicate: Any, what: str, timeout: float, interval: float = 0.5) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


class ReportWatch:
    """Every report's latest (failing agents, agents) as a watch delivers it, with arrival times."""

    def __init__(self, api: kube.Client) -> None:
        self.api = api
        self.lock = threading.Lock()
        self.latest: dict[str, tuple[int, int]] = {}
        self.changed_at: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        path = kube.path(reports.API_VERSION, reports.PLURAL)
        version = ""
        while not self.stop.is_set():
            if not version:
                listing = self.api.request("GET", path)
                for item in listing.get("items") or []:
                    self._see(item)
                version = listing["metadata"]["resourceVersion"]
            try:
                with self.api.watch(path, resource_version=version, timeout_seconds=60) as stream:
                    for event in stream:
                        obj = event.get("object") or {}
                        version = (obj.get("metadata") or {}).get("resourceVersion", version)
                        if event.get("type") in ("ADDED", "MODIFIED"):
                            self._see(obj)
                        if self.stop.is_set():
                            return
            except (kube.ApiError, httpx.HTTPError):
                if self.stop.is_set():
                    return
                version = ""

    def _see(self, report: dict[str, Any]) -> None:
        now = time.monotonic()
        agents: set[str] = set()
        failing: set[str] = set()
        for result in report.get("results") or []:
            name = result["resources"][0]["name"]
            agents.add(name)
            if result.get("rule") == "limits.maxTokensPerCall" and result.get("result") == "fail":
                failing.add(name)
        namespace = report["metadata"]["namespace"]
        with self.lock:
            if self.latest.get(namespace) != (len(failing), len(agents)):
                self.latest[namespace] = (len(failing), len(agents))
                self.changed_at[namespace] = now

    def all_show(self, namespaces: list[str], per_namespace: int, failing: bool) -> float | None:
        """Arrival time of the last report once every namespace shows the verdict, else None."""
        with self.lock:
            want = (per_namespace if failing else 0, per_namespace)
            if any(self.latest.get(ns) != want for ns in namespaces):
                return None
            return max(self.changed_at[ns] for ns in namespaces)


def _without_managed_fields(meta: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in meta.items() if k != "managedFields"}


@dataclass(frozen=True)
class Scan:
    """One namespace scan, from the controller's log line."""

    namespace: str
    objects: int
    start: datetime
    #: When the report was written.
    end: datetime
    seconds: float


def scans_in(log: str) -> list[Scan]:
    found: list[Scan] = []
    for line in log.splitlines():
        if "policy scan of namespace" not in line:
            continue
        record = json.loads(line)
        match = SCAN_LINE.search(record["message"])
        if match is None:
            continue
        end = datetime.fromisoformat(record["time"])
        seconds = float(match[5])
        found.append(Scan(match[1], int(match[2]), end - timedelta(seconds=seconds), end, seconds))
    return found


def engine_throughput(agents: int) -> float:
    """``evaluate`` alone, in this process, on the benchmark's agents and policy."""
    policies = PolicySet(cluster=(ClusterAgentPolicy.from_k8s(policy(TIGHT)),))
    objects = [AgentDeployment.from_k8s(agent(f"a{i}", "ns")).to_k8s() for i in range(agents)]
    for obj in objects:
        obj["metadata"]["uid"] = "u"
    labels = {"bench": "scan"}
    now = datetime.now(UTC)
    started = time.perf_counter()
    for obj in objects:
        evaluate(obj, policies, namespace_labels=labels, now=now)
    return agents / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--namespaces", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=6, help="policy changes (alternately tighter, looser)")
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    args = parser.parse_args()
    if args.agents % args.namespaces:
        parser.error("--agents must be a multiple of --namespaces")
    per_namespace = args.agents // args.namespaces

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-scan-"))
    crds = [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]
    plane = ControlPlane(workdir / "controlplane", die_with_parent=True)
    redis_server = RedisServer(workdir / "redis", die_with_parent=True)
    controller: subprocess.Popen[bytes] | None = None
    watch: ReportWatch | None = None
    out: dict[str, Any] = {"agents": args.agents, "namespaces": args.namespaces}
    log_path = workdir / "controller.log"
    try:
        plane.start(timeout=180, crds=crds)
        redis_server.start()
        api = kube.Client(kube.config.from_kubeconfig(plane.kubeconfig), max_connections=16)
        ours = f"{GROUP}/{VERSION}"
        policy_path = kube.path(ours, "clusteragentpolicies", POLICY)
        api.create(kube.path(ours, "clusteragentpolicies"), policy(LOOSE))
        namespaces = [f"scan-{i:02d}" for i in range(args.namespaces)]
        for ns in namespaces:
            api.create(kube.path("v1", "namespaces"), {"metadata": {"name": ns, "labels": {"bench": "scan"}}})

        with log_path.open("wb") as log:
            controller = subprocess.Popen(
                [sys.executable, "-m", "controller", "--redis-url", redis_server.url, "--offline-fallback",
                 "--standalone", "--scan-interval", "300"],
                env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        time.sleep(5)
        out["controller_rss_mb_idle"] = round(rss_mb(controller.pid), 1)

        watch = ReportWatch(api)
        watch.start()
        started = time.monotonic()

        def create(i: int) -> None:
            name, ns = f"agent-{i:04d}", namespaces[i % args.namespaces]
            # The local control plane's Service range is a /24 (254 addresses): each agent's
            # metrics Service is made headless beforehand, and the controller's apply adopts it.
            api.create(kube.path("v1", "services", namespace=ns), headless_service(name))
            api.create(kube.path(ours, "agentdeployments", namespace=ns), agent(name, ns))

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(create, range(args.agents)))
        out["create_agents_s"] = round(time.monotonic() - started, 1)
        wait(
            lambda: (
                watch is not None and watch.all_show(namespaces, per_namespace, failing=False) is not None
            ),
            "every agent in its namespace's report",
            900,
        )
        out["first_reports_complete_s"] = round(time.monotonic() - started, 1)
        listed = api.list_items(kube.path(reports.API_VERSION, reports.PLURAL))
        out["report_objects_after_setup"] = len(listed)
        problem = one_report_per_namespace(listed, namespaces)
        if problem:
            print(json.dumps(out, indent=2))
            print(f"bench_scan: FAILED after setup: {problem}", file=sys.stderr)
            return 1
        # Scans are measured on a settled controller: every agent reconciled once.
        wait(lambda: settled(api, ours), "every agent reconciled", 900, interval=2)
        out["agents_reconciled_s"] = round(time.monotonic() - started, 1)
        time.sleep(5)
        out["controller_rss_mb_with_agents"] = round(rss_mb(controller.pid), 1)

        change_to_last: list[float] = []
        round_walls: list[float] = []
        scanned: list[Scan] = []
        for round_ in range(args.rounds):
            tighten = round_ % 2 == 0
            patched_at = datetime.now(UTC)
            patched = time.monotonic()
            api.merge_patch(
                policy_path, {"spec": {"limits": {"maxTokensPerCall": {"max": TIGHT if tighten else LOOSE}}}}
            )
            last: list[float] = []

            def done(tighten: bool = tighten, last: list[float] = last) -> bool:
                assert watch is not None
                at = watch.all_show(namespaces, per_namespace, failing=tighten)
                if at is not None:
                    last.append(at)
                return at is not None

            wait(done, f"round {round_}: every report showing the change", 300, interval=0.05)
            change_to_last.append(last[0] - patched)
            time.sleep(1)  # the last log lines
            this_round = [
                s
                for s in scans_in(log_path.read_text(errors="replace"))
                if s.start >= patched_at and s.objects
            ]
            # Scans of different namespaces overlap: the round's wall time, first start to last end.
            round_walls.append(
                (max(s.end for s in this_round) - min(s.start for s in this_round)).total_seconds()
            )
            scanned += this_round
        listed = api.list_items(kube.path(reports.API_VERSION, reports.PLURAL))
        stored_bytes = sum(len(json.dumps(r, separators=(",", ":"))) for r in listed)
        without_managed = sum(
            len(json.dumps({**r, "metadata": _without_managed_fields(r["metadata"])}, separators=(",", ":")))
            for r in listed
        )
        per_agent = stored_bytes / args.agents
        out["policy_change_to_last_report_s"] = {
            "rounds": len(change_to_last),
            "p50": round(statistics.median(change_to_last), 3),
            "p99": round(pct(change_to_last, 0.99), 3),
            "max": round(max(change_to_last), 3),
            "agents_per_s_end_to_end_p50": round(args.agents / statistics.median(change_to_last), 1),
        }
        out["namespace_scan_s"] = {
            "scans": len(scanned),
            "p50": round(pct([s.seconds for s in scanned], 0.5), 4),
            "p99": round(pct([s.seconds for s in scanned], 0.99), 4),
        }
        out["scan_round_wall_s"] = {
            "p50": round(statistics.median(round_walls), 3),
            "p99": round(pct(round_walls, 0.99), 3),
            "agents_per_s_p50": round(args.agents / statistics.median(round_walls), 1),
        }
        out["engine_only_agents_per_s"] = round(engine_throughput(args.agents), 1)
        out["report_bytes_per_agent"] = round(per_agent, 1)
        out["report_bytes_per_agent_without_managedFields"] = round(without_managed / args.agents, 1)
        out["report_bytes_total"] = stored_bytes
        out["report_bytes_for_10010_agents_MB"] = round(per_agent * KYVERNO_REPORTS / 1e6, 1)
        out["kyverno_552MB_for_10010_reports_ratio"] = round(KYVERNO_BYTES / (per_agent * KYVERNO_REPORTS), 1)
        out["controller_rss_mb_after_scans"] = round(rss_mb(controller.pid), 1)
        out["controller_rss_mb_peak"] = round(rss_mb(controller.pid, "VmHWM"), 1)
        out["load_average_1m"] = os.getloadavg()[0]
        # Listed again, last: the invariant must hold after every round, not only after setup.
        listed = api.list_items(kube.path(reports.API_VERSION, reports.PLURAL))
        out["report_objects"] = len(listed)
        print(json.dumps(out, indent=2))
        problem = one_report_per_namespace(listed, namespaces)
        if problem:
            print(f"bench_scan: FAILED: {problem}", file=sys.stderr)
            return 1
        print(
            f"bench_scan: {len(listed)} Report objects for {len(namespaces)} namespaces (one per namespace); "
            f"controller peak RSS {out['controller_rss_mb_peak']} MiB; scan of a namespace p50 "
            f"{out['namespace_scan_s']['p50']} s, p99 {out['namespace_scan_s']['p99']} s; scan of all "
            f"(first start to last report) p50 {out['scan_round_wall_s']['p50']} s, "
            f"p99 {out['scan_round_wall_s']['p99']} s",
            file=sys.stderr,
        )
    finally:
        if watch is not None:
            watch.stop.set()
        if controller is not None:
            controller.terminate()
            try:
                controller.wait(timeout=30)
            except subprocess.TimeoutExpired:
                print("the controller did not stop within 30 s of SIGTERM; killed", file=sys.stderr)
                controller.kill()
                controller.wait(timeout=30)
        redis_server.stop()
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
