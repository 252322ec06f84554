"""Controller benchmark: pipeline step handoff latency, 200-agent convergence, controller memory.

Everything is real: a local control plane (etcd, kube-apiserver, kube-controller-manager), a
real redis-server, the controller as a subprocess (``python -m controller``) and the agents as
``python -m agent_runtime`` processes started by :mod:`localstack.agents` (offline provider).

1. **Step handoff** - for each two-step pipeline ``first -> second``: the time between the
   first step's result entering the pipeline's result stream and the second step's task entering
   its agent's stream.  Both instants are Redis stream entry ids, i.e. the same (Redis) clock at
   millisecond resolution.  Baseline: the seed polled every 5 s, so a handoff waited 2.5 s on
   average (uniform in 0..5 s); the ratio printed is 2500 ms / our p50.
2. **Convergence** - ``kubectl apply`` of N AgentDeployments (replicas 1, no launcher for
   them): time until all N Deployments exist, and until all N agents have ``status.replicas``.
3. **Memory** - controller RSS when idle with the pipelines' agents, and after N more agents.

Run::

    .venv/bin/python benchmarks/bench_controller.py --pipelines 100 --concurrency 5 --agents 200
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import redis
import yaml

import kube
import kube.config
from contracts.keys import pipeline_results_stream, task_stream
from localstack.agents import run_local_agents
from localstack.controlplane import ControlPlane
from localstack.crds import CRD_DIR
from localstack.redis_server import RedisServer

GROUP, VERSION = "agentops.agentops.io", "v1alpha1"
SEED_POLL_MEAN_MS = 2500.0

AGENT = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentDeployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: {replicas}
  model: offline-bench
  systemPrompt: "You answer briefly."
  limits: {{maxTokensPerCall: 200, maxConcurrentTasks: 8, timeoutSeconds: 30}}
"""

PIPELINE = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPipeline
metadata: {{name: {name}, namespace: {ns}}}
spec:
  input: {{topic: "handoff {name}"}}
  steps:
    - name: first
      agentDeployment: bench-first
      inputs: {{prompt: "research {{{{ .pipeline.input.topic }}}}"}}
    - name: second
      agentDeployment: bench-second
      dependsOn: [first]
      inputs: {{prompt: "summarize {{{{ .steps.first.output }}}}"}}
"""


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def entry_ms(entry_id: Any) -> int:
    text = entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)
    return int(text.split("-")[0])


def kubectl_apply(kubeconfig: Path, text: str) -> None:
    subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", "apply", "-f", "-"],
        input=text,
        text=True,
        check=True,
        capture_output=True,
    )


def wait(predicate: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ours(plural: str, ns: str, name: str | None = None) -> str:
    return kube.path(f"{GROUP}/{VERSION}", plural, name, namespace=ns)


def bench_handoff(
    kubeconfig: Path, api: kube.Client, r: redis.Redis, ns: str, pipelines: int, concurrency: int
) -> dict[str, Any]:
    latencies: list[float] = []
    names = [f"handoff-{i:04d}" for i in range(pipelines)]
    for start in range(0, pipelines, concurrency):
        batch = names[start : start + concurrency]
        kubectl_apply(kubeconfig, "---\n".join(PIPELINE.format(name=n, ns=ns) for n in batch))

        def batch_done(batch: list[str] = batch) -> bool:
            for name in batch:
                obj = api.request("GET", ours("agentpipelines", ns, name))
                if (obj.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
                    return False
            return True

        wait(batch_done, f"pipelines {batch[0]}..", 120)
    submitted: Any = r.xrange(task_stream(ns, "bench-second"))
    second_entries: dict[str, int] = {f[b"pipeline"].decode(): entry_ms(eid) for eid, f in submitted}
    for name in names:
        results: Any = r.xrange(pipeline_results_stream(ns, name))
        first = next(eid for eid, f in results if f[b"task_id"].decode().split(":")[-2] == "first")
        latencies.append(second_entries[name] - entry_ms(first))
    return {
        "pipelines": pipelines,
        "concurrency": concurrency,
        "handoff_ms_p50": percentile(latencies, 50),
        "handoff_ms_p99": percentile(latencies, 99),
        "handoff_ms_mean": round(statistics.fmean(latencies), 2),
        "handoff_ms_max": max(latencies),
        "seed_polling_mean_ms": SEED_POLL_MEAN_MS,
        "speedup_vs_seed_p50": round(SEED_POLL_MEAN_MS / max(percentile(latencies, 50), 1.0), 1),
        "note": "Redis entry-id clock, 1 ms resolution; a 0 ms handoff is counted as 1 ms in the ratio",
    }


def bench_convergence(kubeconfig: Path, api: kube.Client, ns: str, agents: int) -> dict[str, Any]:
    deployments_path = kube.path("apps/v1", "deployments", namespace=ns)
    text = "---\n".join(AGENT.format(name=f"fleet-{i:04d}", ns=ns, replicas=1) for i in range(agents))
    started = time.monotonic()
    kubectl_apply(kubeconfig, text)
    applied = time.monotonic() - started

    def deployments() -> int:
        listed = api.list_items(
            deployments_path, label_selector="app.kubernetes.io/managed-by", metadata_only=True
        )
        return sum(1 for d in listed if str(d["metadata"]["name"]).startswith("fleet-"))

    wait(lambda: deployments() >= agents, f"{agents} Deployments", 600)
    all_deployments = time.monotonic() - started

    def statuses() -> int:
        listed = api.list_items(ours("agentdeployments", ns))
        return sum(
            1
            for a in listed
            if a["metadata"]["name"].startswith("fleet-") and (a.get("status") or {}).get("replicas") == 1
        )

    # Per agent: Deployment creation - agent creation (API server timestamps, 1 s resolution).
    listed_agents = api.list_items(ours("agentdeployments", ns), metadata_only=True)
    created = {a["metadata"]["name"]: _time(a["metadata"]["creationTimestamp"]) for a in listed_agents}
    listed_deps = api.list_items(deployments_path, metadata_only=True)
    lags = sorted(
        (_time(d["metadata"]["creationTimestamp"]) - created[d["metadata"]["name"]]).total_seconds()
        for d in listed_deps
        if d["metadata"]["name"].startswith("fleet-")
    )
    wait(lambda: statuses() >= agents, f"{agents} agent statuses", 600)
    return {
        "agents": agents,
        "deployment_lag_s_p50": percentile(lags, 50),
        "deployment_lag_s_max": max(lags),
        "kubectl_apply_s": round(applied, 2),
        "all_deployments_s": round(all_deployments, 2),
        "all_status_replicas_s": round(time.monotonic() - started, 2),
        "note": "status.replicas waits for kube-controller-manager (ReplicaSets, Pods; its API QPS limit)",
    }


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipelines", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=5)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--workdir", type=Path, help="default: a temporary directory")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-controller-"))
    crds = [yaml.safe_load(p.read_text()) for p in sorted(CRD_DIR.glob("*.yaml"))]
    plane = ControlPlane(workdir / "controlplane", die_with_parent=True)
    redis_server = RedisServer(workdir / "redis", die_with_parent=True)
    stop = threading.Event()
    controller: subprocess.Popen[bytes] | None = None
    launcher: threading.Thread | None = None
    report: dict[str, Any] = {}
    try:
        plane.start(timeout=180, crds=crds)
        redis_server.start()
        api = kube.Client(kube.config.from_kubeconfig(plane.kubeconfig))
        ns = "bench"
        api.create(kube.path("v1", "namespaces"), {"metadata": {"name": ns}})
        log = (workdir / "controller.log").open("wb")
        controller = subprocess.Popen(
            [sys.executable, "-m", "controller", "--namespace", ns, "--redis-url", redis_server.url,
             "--offline-fallback", "--standalone"],
            env={**os.environ, "KUBECONFIG": str(plane.kubeconfig)},
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        # Only the two pipeline agents get processes; the fleet's pods stay Pending (no kubelet).
        launcher = threading.Thread(
            target=run_local_agents,
            args=(plane.kubeconfig, ns, workdir / "agents", stop),
            kwargs={"poll_seconds": 0.5},
            daemon=True,
        )
        launcher.start()
        kubectl_apply(plane.kubeconfig, AGENT.format(name="bench-first", ns=ns, replicas=1))
        kubectl_apply(plane.kubeconfig, AGENT.format(name="bench-second", ns=ns, replicas=1))

        def ready(name: str) -> bool:
            obj = api.request("GET", ours("agentdeployments", ns, name))
            return bool((obj.get("status") or {}).get("readyReplicas"))

        wait(lambda: ready("bench-first") and ready("bench-second"), "the pipeline agents", 120)
        time.sleep(3)
        report["controller_rss_mb_idle"] = round(rss_mb(controller.pid), 1)
        r = redis.Redis.from_url(redis_server.url)
        report["handoff"] = bench_handoff(plane.kubeconfig, api, r, ns, args.pipelines, args.concurrency)
        report["controller_rss_mb_after_pipelines"] = round(rss_mb(controller.pid), 1)
        # The fleet's pods must not be started by the launcher: stop it first.
        stop.set()
        launcher.join(timeout=60)
        report["convergence"] = bench_convergence(plane.kubeconfig, api, ns, args.agents)
        time.sleep(5)
        report[f"controller_rss_mb_with_{args.agents}_agents"] = round(rss_mb(controller.pid), 1)
        print(json.dumps(report, indent=2))
    finally:
        stop.set()
        if launcher is not None:
            launcher.join(timeout=60)
        if controller is not None:
            controller.terminate()
            controller.wait(timeout=30)
        redis_server.stop()
        plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
