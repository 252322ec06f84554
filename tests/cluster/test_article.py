"""The article's flow, in real pods: its manifests unchanged, readiness from the kubelet, its
pipeline to Succeeded, a task through ``redis-cli`` in the Redis pod, and a scale to 10."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from tests.cluster.conftest import redis_cli
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"


def ready_pods(kubectl: Kubectl, agent: str) -> list[dict[str, Any]]:
    pods = kubectl.json("get", "pods", "-l", f"agentops.agentops.io/agent={agent}")["items"]
    return [
        p
        for p in pods
        if p["metadata"].get("deletionTimestamp") is None
        and any(c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions", []))
    ]


def printed_ready(kubectl: Kubectl, agent: str) -> str:
    """The READY column of ``kubectl get agdep``, as a user reads it."""
    header, row = kubectl("get", "agdep", agent).stdout.splitlines()[:2]
    return row.split()[header.split().index("READY")]


def test_the_article_runs_in_pods(pk: Kubectl, app_namespace: str) -> None:
    kubectl = pk.in_namespace(app_namespace)
    applied = kubectl("apply", "-f", str(SAMPLES)).stdout
    assert "agentdeployment.agentops.agentops.io/research-agent created" in applied

    # READY 3 comes from the kubelet: three pods whose readiness probe passed.
    eventually(
        "research-agent shows READY 3", lambda: printed_ready(kubectl, "research-agent") == "3", within=180
    )
    assert len(ready_pods(kubectl, "research-agent")) == 3
    eventually("summarizer-agent shows READY 1", lambda: printed_ready(kubectl, "summarizer-agent") == "1")

    pipeline = eventually(
        "the pipeline finishes",
        lambda: (
            p
            if (p := kubectl.json("get", "agpipe", "research-then-summarize"))["status"].get("phase")
            in ("Succeeded", "Failed")
            else None
        ),
        within=180,
    )
    assert pipeline["status"]["phase"] == "Succeeded", pipeline["status"]
    assert pipeline["status"]["progress"] == "2/2"

    # A task the article's way: XADD on the agent's stream, the result read back the same way.
    task_id = f"t-{uuid.uuid4().hex[:8]}"
    reply = f"my-results-{task_id}"
    stream = f"agentops:{app_namespace}:research-agent:tasks"
    prompt = "What is the capital of France? Reply with exactly one word: Paris"
    redis_cli(kubectl, "XADD", stream, "*", "task_id", task_id, "prompt", prompt, "reply_to", reply)
    raw = redis_cli(kubectl, "XREAD", "BLOCK", "30000", "STREAMS", reply, "0", timeout=45)
    fields = raw.split("\n")
    assert task_id in fields, raw
    assert fields[fields.index("status") + 1] == "succeeded", raw
    assert fields[fields.index("output") + 1] == "Paris", raw

    # The article's scale-up: 10 replicas, each pod made ready by the kubelet.
    kubectl("patch", "agdep", "research-agent", "--type=merge", "-p", '{"spec":{"replicas":10}}')
    eventually(
        "research-agent shows READY 10", lambda: printed_ready(kubectl, "research-agent") == "10", within=240
    )
    assert len(ready_pods(kubectl, "research-agent")) == 10
