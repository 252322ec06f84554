"""AgentPipelines end to end: real control plane, real Redis, real runtime processes (offline provider).

Covers the seed article's pipeline, concurrency of independent steps, a controller crash in the
middle (no step submitted twice), failures with retries, waiting for a missing agent, withdrawal of
queued tasks on deletion, and an empty rendered template.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from datetime import datetime
from pathlib import Path
from typing import Any

import redis

import kube
from contracts.keys import pipeline_results_stream, task_stream
from localstack.agents import run_local_agents
from tests.controller.conftest import ControllerProcess
from tests.support.kubectl import Kubectl
from tests.support.seed import SEED_AGENT, SEED_PIPELINE
from tests.support.waiting import eventually

SUMMARIZER = Path(__file__).resolve().parents[2] / "deploy" / "samples" / "summarizer-agent.yaml"

AGENT = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentDeployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  model: offline-test
  systemPrompt: "You answer briefly."
  limits: {{maxTokensPerCall: 200, maxConcurrentTasks: 4, timeoutSeconds: 30}}
"""


def pipeline(kubectl: Kubectl, name: str) -> Any:
    return kubectl.json("get", "agpipe", name)


def phase(kubectl: Kubectl, name: str) -> str | None:
    return (pipeline(kubectl, name).get("status") or {}).get("phase")


def finished(kubectl: Kubectl, name: str, timeout: float = 60) -> Any:
    eventually(
        f"pipeline {name} to finish", lambda: phase(kubectl, name) in ("Succeeded", "Failed"), within=timeout
    )
    return pipeline(kubectl, name)


def steps_of(obj: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in obj["status"]["steps"]}


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def ready(kubectl: Kubectl, agent: str, replicas: int = 1) -> None:
    eventually(
        f"{agent} to have {replicas} ready replica(s)",
        lambda: (kubectl.json("get", "agdep", agent).get("status") or {}).get("readyReplicas", 0) >= replicas,
        within=60,
    )


def ready_under_budget(kubectl: Kubectl, agent: str, tokens: int, timeout: float) -> None:
    """A ready one-replica ``agent`` under a namespace policy: a daily Agent budget of ``tokens``."""
    kubectl(
        "apply", "-f", "-",
        input=f"""\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPolicy
metadata: {{name: {agent}-budget}}
spec: {{budget: {{tokens: {tokens}, period: day, scope: Agent}}}}
""",
    )  # fmt: skip
    kubectl("apply", "-f", "-", input=AGENT.format(name=agent, replicas=1))
    ready(kubectl, agent)
    eventually(
        f"{agent}'s budget to reach its status",
        lambda: (
            kubectl.json("get", "agdep", agent)["status"].get("usage", {}).get("remainingTokens") == tokens
        ),
        within=timeout,
    )


def task_ids(r: Any, namespace: str, agent: str) -> list[str]:
    return [f[b"task_id"].decode() for _, f in r.xrange(task_stream(namespace, agent))]


def test_seed_article_pipeline_succeeds_with_output(
    kubectl: Kubectl, namespace: str, redis_url: str, controller: ControllerProcess, local_agents: None,
    control_plane: Any,
) -> None:  # fmt: skip
    kubectl("apply", "-f", "-", input=SEED_AGENT)
    kubectl("apply", "-f", str(SUMMARIZER))
    ready(kubectl, "research-agent", 3)
    ready(kubectl, "summarizer-agent", 1)
    kubectl("apply", "-f", "-", input=SEED_PIPELINE)
    obj = finished(kubectl, "research-then-summarize")
    status = obj["status"]
    assert status["phase"] == "Succeeded", status
    assert status["progress"] == "2/2"
    assert status["output"].strip()
    steps = steps_of(obj)
    assert "AI in healthcare" in steps["research"]["output"]
    assert ts(steps["summarize"]["startTime"]) >= ts(steps["research"]["completionTime"])
    uid = obj["metadata"]["uid"]
    assert steps["research"]["taskId"] == f"{uid}:research:1"
    r: Any = redis.Redis.from_url(redis_url)
    assert task_ids(r, namespace, "research-agent") == [f"{uid}:research:1"]
    assert task_ids(r, namespace, "summarizer-agent") == [f"{uid}:summarize:1"]
    printed = kubectl("get", "agpipe").stdout
    assert "Succeeded" in printed
    assert "2/2" in printed
    out = subprocess.run(
        [sys.executable, "-m", "agentops", "pipeline", "output", "research-then-summarize", "-n", namespace,
         "--redis-url", redis_url, "--kubeconfig", str(control_plane.kubeconfig)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert out.stdout.strip() == status["output"].strip()
    watched = subprocess.run(
        [sys.executable, "-m", "agentops", "pipeline", "watch", "research-then-summarize", "--plain",
         "-n", namespace, "--kubeconfig", str(control_plane.kubeconfig)],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    assert "Succeeded" in watched.stdout
    assert "✔ research" in watched.stdout
    assert "✔ summarize" in watched.stdout


def test_independent_steps_run_concurrently(
    kubectl: Kubectl, namespace: str, redis_url: str, controller: ControllerProcess, local_agents: None
) -> None:
    kubectl("apply", "-f", "-", input=AGENT.format(name="left", replicas=1))
    kubectl("apply", "-f", "-", input=AGENT.format(name="right", replicas=1))
    ready(kubectl, "left")
    ready(kubectl, "right")
    kubectl(
        "apply", "-f", "-",
        input="""\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPipeline
metadata: {name: fan-in}
spec:
  input: {topic: tides}
  steps:
    - {name: a, agentDeployment: left, inputs: {prompt: "facts about {{ .pipeline.input.topic }}"}}
    - {name: b, agentDeployment: right, inputs: {prompt: "history of {{ .pipeline.input.topic }}"}}
    - name: c
      agentDeployment: left
      dependsOn: [a, b]
      inputs: {prompt: "combine {{ .steps.a.output }} with {{ .steps.b.output }}"}
""",
    )  # fmt: skip
    obj = finished(kubectl, "fan-in")
    assert obj["status"]["phase"] == "Succeeded"
    steps = steps_of(obj)
    # Both independent steps were submitted before either finished ...
    assert max(ts(steps["a"]["startTime"]), ts(steps["b"]["startTime"])) < min(
        ts(steps["a"]["completionTime"]), ts(steps["b"]["completionTime"])
    )
    # ... and the join only after both.
    assert ts(steps["c"]["startTime"]) >= max(
        ts(steps["a"]["completionTime"]), ts(steps["b"]["completionTime"])
    )
    # Redis says the same with its own clock: both tasks entered their streams before the first result.
    r: Any = redis.Redis.from_url(redis_url)
    first_result = r.xrange(pipeline_results_stream(namespace, "fan-in"), count=1)[0][0]
    entry_a = r.xrange(task_stream(namespace, "left"), count=1)[0][0]
    entry_b = r.xrange(task_stream(namespace, "right"), count=1)[0][0]

    def stamp(entry: bytes) -> tuple[int, int]:
        ms, seq = entry.decode().split("-")
        return int(ms), int(seq)

    assert max(stamp(entry_a), stamp(entry_b)) < stamp(first_result)


CHAIN_LENGTH = 30


def chain_manifest(name: str, agent: str, length: int) -> str:
    first = "{{ .pipeline.input.topic }}"
    steps = [f'    - {{name: s0, agentDeployment: {agent}, inputs: {{prompt: "start {first}"}}}}']
    for i in range(1, length):
        steps.append(
            f"    - {{name: s{i}, agentDeployment: {agent}, dependsOn: [s{i - 1}], "
            f'inputs: {{prompt: "step {i} after {{{{ .steps.s{i - 1}.output }}}}"}}}}'
        )
    return (
        "apiVersion: agentops.agentops.io/v1alpha1\nkind: AgentPipeline\n"
        f"metadata: {{name: {name}}}\nspec:\n  input: {{topic: crash}}\n  steps:\n" + "\n".join(steps) + "\n"
    )


def test_controller_killed_mid_pipeline_resumes_without_submitting_any_step_twice(
    kubectl: Kubectl, namespace: str, redis_url: str, controller: ControllerProcess, local_agents: None
) -> None:
    kubectl("apply", "-f", "-", input=AGENT.format(name="chain", replicas=1))
    ready(kubectl, "chain")
    kubectl("apply", "-f", "-", input=chain_manifest("long-chain", "chain", CHAIN_LENGTH))

    r: Any = redis.Redis.from_url(redis_url)
    # Kill while the controller is busy: as soon as the third task is in the agent's stream.
    eventually("three submitted steps", lambda: r.xlen(task_stream(namespace, "chain")) >= 3, interval=0.002)
    controller.kill()
    killed_at = r.xlen(task_stream(namespace, "chain"))
    assert killed_at < CHAIN_LENGTH, f"the pipeline must still be running when killed ({killed_at} submitted)"
    # Results keep arriving while the controller is down: the restarted one must take them up.
    eventually(
        "the results of every step submitted before the kill",
        lambda: r.xlen(pipeline_results_stream(namespace, "long-chain")) >= killed_at,
        within=30,
    )
    controller.start()

    obj = finished(kubectl, "long-chain", timeout=120)
    assert obj["status"]["phase"] == "Succeeded", obj["status"]
    submitted = task_ids(r, namespace, "chain")
    uid = obj["metadata"]["uid"]
    assert sorted(submitted) == sorted(f"{uid}:s{i}:1" for i in range(CHAIN_LENGTH)), submitted
    assert len(submitted) == len(set(submitted)) == CHAIN_LENGTH
    assert all(s["attempts"] == 1 for s in obj["status"]["steps"])
    assert controller.starts == 2


def test_failing_step_fails_the_pipeline_with_its_message_and_counts_retries(
    kubectl: Kubectl, namespace: str, redis_url: str, controller: ControllerProcess, local_agents: None
) -> None:
    # A namespace budget of one token: every call is refused by the runtime itself (budget_exceeded).
    ready_under_budget(kubectl, "broke", tokens=1, timeout=30)
    kubectl(
        "apply", "-f", "-",
        input="""\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPipeline
metadata: {name: doomed}
spec:
  steps:
    - {name: first, agentDeployment: broke, retries: 2, inputs: {prompt: "say something"}}
    - name: second
      agentDeployment: broke
      dependsOn: [first]
      inputs: {prompt: "{{ .steps.first.output }}"}
""",
    )  # fmt: skip
    obj = finished(kubectl, "doomed")
    status = obj["status"]
    assert status["phase"] == "Failed"
    steps = steps_of(obj)
    assert steps["first"]["phase"] == "Failed"
    assert steps["first"]["attempts"] == 3
    assert "budget_exceeded" in steps["first"]["message"]
    assert "attempt 3 of 3" in steps["first"]["message"]
    assert steps["second"]["phase"] == "Skipped"
    failed = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    assert failed["status"] == "False"
    assert "first" in failed["message"]
    assert "budget_exceeded" in failed["message"]
    r: Any = redis.Redis.from_url(redis_url)
    uid = obj["metadata"]["uid"]
    assert task_ids(r, namespace, "broke") == [f"{uid}:first:{n}" for n in (1, 2, 3)]


def test_steps_for_missing_or_unready_agents_wait_with_a_message_then_fail_at_their_timeout(
    kubectl: Kubectl, controller: ControllerProcess
) -> None:
    # "idle" exists but has no replica; "ghost" does not exist.  failFast off: both run their course.
    kubectl("apply", "-f", "-", input=AGENT.format(name="idle", replicas=0))
    kubectl(
        "apply", "-f", "-",
        input="""\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPipeline
metadata: {name: lonely}
spec:
  failFast: false
  steps:
    - {name: ask, agentDeployment: ghost, timeoutSeconds: 4, inputs: {prompt: "anyone?"}}
    - {name: nudge, agentDeployment: idle, timeoutSeconds: 5, inputs: {prompt: "awake?"}}
""",
    )  # fmt: skip

    def waiting() -> dict[str, Any] | None:
        steps = (pipeline(kubectl, "lonely").get("status") or {}).get("steps") or []
        both = len(steps) == 2 and all(s["phase"] == "Waiting" for s in steps)
        return {s["name"]: s for s in steps} if both else None

    steps = eventually("both steps to wait", waiting)
    assert "agent 'ghost' does not exist" in steps["ask"]["message"]
    assert "agent 'idle' has no ready replica" in steps["nudge"]["message"]
    obj = finished(kubectl, "lonely", timeout=30)
    assert obj["status"]["phase"] == "Failed"
    final = steps_of(obj)
    assert final["ask"]["phase"] == "Failed"
    assert "timed out after 4s" in final["ask"]["message"]
    assert "ghost" in final["ask"]["message"]
    assert final["nudge"]["phase"] == "Failed"
    assert "timed out after 5s" in final["nudge"]["message"]
    assert "no ready replica" in final["nudge"]["message"]
    assert final["ask"].get("attempts", 0) == final["nudge"].get("attempts", 0) == 0  # nothing was submitted


def test_empty_rendered_template_is_reported_on_the_step(
    kubectl: Kubectl, controller: ControllerProcess, local_agents: None
) -> None:
    kubectl("apply", "-f", "-", input=AGENT.format(name="echo", replicas=1))
    ready(kubectl, "echo")
    kubectl(
        "apply", "-f", "-",
        input="""\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPipeline
metadata: {name: blank}
spec:
  input: {topic: ""}
  steps:
    - {name: ask, agentDeployment: echo, inputs: {prompt: "{{ .pipeline.input.topic }}"}}
""",
    )  # fmt: skip
    obj = finished(kubectl, "blank")
    step = obj["status"]["steps"][0]
    assert step["phase"] == "Failed"
    assert "input 'prompt' rendered an empty value" in step["message"]
    assert step.get("attempts", 0) == 0


def test_deleting_a_running_pipeline_withdraws_its_queued_tasks(
    kubectl: Kubectl,
    namespace: str,
    redis_url: str,
    controller: ControllerProcess,
    control_plane: Any,
    tmp_path: Path,
) -> None:
    # Workers start (creating the consumer group) and report ready, then stop consuming: the pod
    # still reads Ready, so the controller submits, but no worker takes the task.
    stop = threading.Event()
    launcher = threading.Thread(
        target=run_local_agents, args=(control_plane.kubeconfig, namespace, tmp_path / "agents", stop)
    )
    launcher.start()
    try:
        kubectl("apply", "-f", "-", input=AGENT.format(name="stalled", replicas=1))
        ready(kubectl, "stalled")
    finally:
        stop.set()
        launcher.join(timeout=30)
    r: Any = redis.Redis.from_url(redis_url)
    eventually("worker group", lambda: r.exists(task_stream(namespace, "stalled")) or r.keys("*stalled*"))
    kubectl(
        "apply", "-f", "-",
        input="""\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPipeline
metadata: {name: abandoned}
spec:
  steps:
    - {name: one, agentDeployment: stalled, inputs: {prompt: "first"}}
    - {name: two, agentDeployment: stalled, inputs: {prompt: "second"}}
""",
    )  # fmt: skip
    eventually("two queued tasks", lambda: r.xlen(task_stream(namespace, "stalled")) == 2)
    assert phase(kubectl, "abandoned") == "Running"
    kubectl("delete", "agpipe", "abandoned", "--wait=true", timeout=60)
    assert r.xlen(task_stream(namespace, "stalled")) == 0
    assert not r.exists(pipeline_results_stream(namespace, "abandoned"))


def test_budget_spent_flips_the_condition_and_posts_an_event(
    kubectl: Kubectl, namespace: str, redis_url: str, controller: ControllerProcess, local_agents: None,
    k8s_api: kube.Client,
) -> None:  # fmt: skip
    ready_under_budget(kubectl, "spender", tokens=120, timeout=15)
    r: Any = redis.Redis.from_url(redis_url)
    reply = f"agentops:{namespace}:client:test:results"
    statuses: list[str] = []
    # Each task reserves the smallest possible call and settles a few tokens, until one no longer fits.
    for i in range(30):
        r.xadd(task_stream(namespace, "spender"), {"task_id": f"t{i}", "prompt": "x",
                                                     "reply_to": reply, "max_tokens": "1"})  # fmt: skip
        entry = eventually(f"result {i}", lambda: r.xrange(reply)[len(statuses) : len(statuses) + 1])
        statuses.append(entry[0][1][b"status"].decode())
        if statuses[-1] == "budget_exceeded":
            break
    assert "succeeded" in statuses
    obj = eventually(
        "BudgetExceeded=True",
        lambda: (
            (o := kubectl.json("get", "agdep", "spender"))
            and any(
                c["type"] == "BudgetExceeded" and c["status"] == "True" for c in o["status"]["conditions"]
            )
            and o
        ),
    )
    usage = obj["status"]["usage"]
    assert usage["tokens"] > 0
    assert usage["remainingTokens"] == max(0, 120 - usage["tokens"])
    assert statuses[-1] == "budget_exceeded"
    events = kubectl.json("get", "events", "--field-selector", "involvedObject.name=spender")["items"]
    assert "BudgetExceeded" in {e["reason"] for e in events}
