"""Real-node benchmark: builds, install time, agent readiness against the process mode, pod memory.

Everything is real: the node of :mod:`localstack.cluster` (kubelet, containerd, runc, CNI,
kube-proxy, CoreDNS), the product installed with ``kubectl apply -k``, and, as the baseline
measured in the same run, the fast process mode of ``make up`` (:mod:`localstack.stack`).

1. **Builds** - ``ensure`` of every cached artefact (kcp, CoreDNS, pause, helm, the four images)
   when its cache is current; with ``--rebuild``, also into an empty artefact cache (Go's own
   module and build caches stay warm: a relink, and every image built from scratch).
2. **Install** - per run, a fresh node: start to ready, then ``kubectl apply -k`` to every
   component available (webhook x2, controller x2, Redis).
3. **Agent readiness** - ``kubectl apply`` of one AgentDeployment (replicas 1) to READY 1, for
   ``--agents`` agents one after another, on the real node and in the process mode.  Prints
   p50/p99 of each and the ratio node/process.
4. **Memory** - each pod's working set from the kubelet's summary API.

Run::

    .venv/bin/python benchmarks/bench_node.py --agents 20 --installs 3 [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from localstack import images
from localstack.cluster import NodeCluster
from localstack.controlplane import KCP
from localstack.helm import helm_tool
from localstack.node import NODE_NAME
from localstack.stack import LocalStack

AGENT = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentDeployment
metadata: {{name: {name}, namespace: {ns}}}
spec:
  replicas: 1
  model: claude-sonnet-4-20250514
  systemPrompt: "You answer briefly."
  limits: {{maxTokensPerCall: 200, maxConcurrentTasks: 4, timeoutSeconds: 30}}
"""


def quiet(_: str) -> None:
    return None


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(values: list[float]) -> str:
    return f"p50 {statistics.median(values):.2f} s, p99 {pct(values, 0.99):.2f} s (n={len(values)})"


def timed(fn: Callable[[], object]) -> float:
    started = time.monotonic()
    fn()
    return time.monotonic() - started


def kubectl(kubeconfig: Path, *args: str, stdin: str | None = None) -> str:
    result = subprocess.run(
        ["kubectl", f"--kubeconfig={kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    return result.stdout


def builds(rebuild: bool) -> None:
    tools = {"kcp": KCP, "coredns": images.coredns_tool(), "pause": images.pause_tool(), "helm": helm_tool()}
    for name, tool in tools.items():
        print(f"  {name}: cached ensure {timed(partial(tool.ensure, quiet)) * 1000:.0f} ms")
    print(f"  images: cached ensure {timed(lambda: images.ensure_images(quiet)) * 1000:.0f} ms")
    if not rebuild:
        return
    with tempfile.TemporaryDirectory(prefix="bench-cache-") as empty:
        os.environ["AGENTOPS_CACHE_DIR"] = empty
        try:
            for name, tool in tools.items():
                print(f"  {name}: relink into an empty cache {timed(partial(tool.ensure, quiet)):.0f} s")
            print(f"  images: every image from scratch {timed(lambda: images.ensure_images(quiet)):.0f} s")
        finally:
            del os.environ["AGENTOPS_CACHE_DIR"]


def wait_ready(kubeconfig: Path, namespace: str, name: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        out = kubectl(
            kubeconfig, "-n", namespace, "get", "agdep", name, "-o", "jsonpath={.status.readyReplicas}"
        )
        if out.strip() == "1":
            return
        time.sleep(0.05)
    raise TimeoutError(f"{namespace}/{name} not ready")


def agent_readiness(kubeconfig: Path, count: int, label: str) -> list[float]:
    namespace = f"bench-{label}-{os.getpid()}"
    kubectl(kubeconfig, "create", "namespace", namespace)
    times = []
    for i in range(count):
        manifest = AGENT.format(name=f"agent-{i}", ns=namespace)
        started = time.monotonic()
        kubectl(kubeconfig, "apply", "-f", "-", stdin=manifest)
        wait_ready(kubeconfig, namespace, f"agent-{i}", started + 180)
        times.append(time.monotonic() - started)
    return times


def pod_memory(kubeconfig: Path) -> dict[str, float]:
    raw = kubectl(kubeconfig, "get", "--raw", f"/api/v1/nodes/{NODE_NAME}/proxy/stats/summary")
    stats: dict[str, Any] = json.loads(raw)
    return {
        f"{p['podRef']['namespace']}/{p['podRef']['name']}": p["memory"]["workingSetBytes"] / 2**20
        for p in stats["pods"]
        if p.get("memory", {}).get("workingSetBytes")
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--installs", type=int, default=3)
    parser.add_argument("--rebuild", action="store_true", help="also build into an empty artefact cache")
    args = parser.parse_args()

    print("== builds")
    builds(args.rebuild)

    print("== install (fresh node each run)")
    starts, installs = [], []
    with tempfile.TemporaryDirectory(prefix="bench-node-") as tmp:
        for run in range(args.installs):
            cluster = NodeCluster(Path(tmp) / f"node-{run}", die_with_parent=True, progress=quiet)
            try:
                starts.append(timed(cluster.start))
                installs.append(timed(cluster.install))
                if run == args.installs - 1:
                    print(f"  node start to ready: {summary(starts)}")
                    print(f"  kubectl apply -k to every component available: {summary(installs)}")
                    print(f"== agent readiness, {args.agents} agents, one at a time")
                    node = agent_readiness(cluster.kubeconfig, args.agents, "node")
                    memory = pod_memory(cluster.kubeconfig)
            finally:
                cluster.stop()

        stack = LocalStack(state_dir=Path(tmp) / "process")
        try:
            info = stack.up(samples=False)
            process = agent_readiness(info.kubeconfig, args.agents, "process")
        finally:
            stack.down()

    print(f"  real node (pods on kubelet + containerd): {summary(node)}")
    print(f"  process mode (baseline, same run):       {summary(process)}")
    print(
        f"  ratio node/process: p50 {statistics.median(node) / statistics.median(process):.2f}, "
        f"p99 {pct(node, 0.99) / pct(process, 0.99):.2f}"
    )
    print("== memory (working set, MiB)")
    for pod, mib in sorted(memory.items()):
        print(f"  {pod}: {mib:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
