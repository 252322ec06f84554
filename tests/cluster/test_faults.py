"""Faults in real pods: a webhook replica, the controller's leader and agent workers deleted under
load, and an agent whose semantic probe fails.

Every fault is ``kubectl delete pod --grace-period=0 --force`` on the session's installed node
(the API object goes at once; the kubelet gives the container a second before SIGKILL), landed
while work is visibly in flight, and every test then waits for a positive end state and checks
that nothing was lost or done twice.  The offline provider answers instantly, so agents that must
be slow or wrong run on the OpenAI provider against :mod:`tests.cluster.fake_model`, a
chat-completions endpoint in a pod whose answers take ``[delay=S]`` seconds or, for listed pod
IPs, fail the semantic probe.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from contracts.resources import API_VERSION, LABEL_AGENT
from localstack.cluster import SYSTEM_NAMESPACE
from tests.cluster import fake_model
from tests.cluster.streams import (
    entries,
    idle_by_entry,
    pending_by_consumer,
    redis_batch,
    redis_json,
    xadd_all,
    xpending_of,
)
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

WEBHOOK_SELECTOR = "app.kubernetes.io/name=agentops-webhook"
CONTROLLER_SELECTOR = "app.kubernetes.io/name=agentops-controller"
PEERING = "agentops-controller"


# --- shared helpers ---------------------------------------------------------------------------


def agent(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "AgentDeployment", "metadata": {"name": name}, "spec": spec}


def offline_spec(replicas: int = 1) -> dict[str, Any]:
    return {
        "replicas": replicas,
        "model": "offline-test",
        "systemPrompt": "You answer test prompts.",
        "limits": {"maxTokensPerCall": 200, "maxConcurrentTasks": 2, "timeoutSeconds": 30},
    }


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions", [])
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def live_pods(kubectl: Kubectl, selector: str) -> list[dict[str, Any]]:
    """Pods of a selector that are not being deleted."""
    pods = kubectl.json("get", "pods", "-l", selector)["items"]
    return [p for p in pods if p["metadata"].get("deletionTimestamp") is None]


def ready_pod_names(kubectl: Kubectl, selector: str) -> set[str]:
    return {p["metadata"]["name"] for p in live_pods(kubectl, selector) if is_ready(p)}


def force_delete(kubectl: Kubectl, *pods: str) -> None:
    kubectl("delete", "pod", *pods, "--grace-period=0", "--force")


def back_to(kubectl: Kubectl, selector: str, replicas: int, gone: set[str]) -> set[str]:
    """Wait until ``replicas`` pods are ready again and none of them is a deleted one."""

    def replaced() -> set[str] | None:
        ready = ready_pod_names(kubectl, selector)
        return ready if len(ready) == replicas and not ready & gone else None

    return eventually(f"{replicas} ready pods of {selector}, none of {sorted(gone)}", replaced, within=120)


# --- 1. a webhook replica deleted during a stream of admissions --------------------------------


@dataclass(frozen=True)
class Admission:
    worker: str
    index: int
    started: float
    ended: float
    returncode: int
    output: str


def test_deleting_a_webhook_replica_loses_no_admission(pk: Kubectl, app_namespace: str) -> None:
    kubectl = pk.in_namespace(app_namespace)
    system = pk.in_namespace(SYSTEM_NAMESPACE)
    eventually("both webhook replicas ready", lambda: len(ready_pod_names(system, WEBHOOK_SELECTOR)) == 2)
    # A stored agent to update (0 replicas: admission is what is under test, not pods).
    kubectl("apply", "-f", "-", input=yaml.safe_dump(agent("target", offline_spec(replicas=0))))

    def create_dry_run(i: int) -> tuple[list[str], str | None]:
        return ["create", "--dry-run=server", "-f", "-"], json.dumps(agent(f"dry-{i}", offline_spec()))

    def apply_label(i: int) -> tuple[list[str], str | None]:
        doc = agent("target", offline_spec(replicas=0))
        doc["metadata"]["labels"] = {"round": str(i)}
        return ["apply", "-f", "-"], json.dumps(doc)

    def patch_label(i: int) -> tuple[list[str], str | None]:
        labels = json.dumps({"metadata": {"labels": {"patched": str(i)}}})
        return ["patch", "agentdeployment", "target", "--type=merge", "-p", labels], None

    # Every call passes both webhooks (CREATE or UPDATE of an AgentDeployment); both fail closed,
    # so an admission lost to the dying replica is a non-zero exit here, not a silent allow.
    workers: dict[str, Callable[[int], tuple[list[str], str | None]]] = {
        "dry-run create": create_dry_run,
        "apply": apply_label,
        "patch": patch_label,
    }
    minimum, cap = 30, 150
    replaced = threading.Event()
    admissions: list[Admission] = []
    lock = threading.Lock()

    def run(name: str, command: Callable[[int], tuple[list[str], str | None]]) -> None:
        # At least `minimum` calls each, and on until the replacement replica is ready.
        i = 0
        while i < cap and (i < minimum or not replaced.is_set()):
            args, document = command(i)
            started = time.monotonic()
            result = kubectl(*args, input=document, check=False)
            output = result.stdout + result.stderr
            with lock:
                admissions.append(Admission(name, i, started, time.monotonic(), result.returncode, output))
            i += 1

    threads = [threading.Thread(target=run, args=item, daemon=True) for item in workers.items()]
    for thread in threads:
        thread.start()
    try:
        eventually("15 admissions answered before the fault", lambda: len(admissions) >= 15, within=60)
        victim = sorted(ready_pod_names(system, WEBHOOK_SELECTOR))[0]
        killed_at = time.monotonic()
        force_delete(system, victim)
        back_to(system, WEBHOOK_SELECTOR, 2, gone={victim})
        restored_at = time.monotonic()
    finally:
        replaced.set()
        for thread in threads:
            thread.join(timeout=300)
    assert not any(t.is_alive() for t in threads)

    failed = [a for a in admissions if a.returncode != 0]
    assert not failed, "admissions failed:\n" + "\n".join(
        f"{a.worker} #{a.index} at +{a.started - killed_at:.2f}s: {a.output.strip()}" for a in failed
    )
    # The surviving replica alone answered every call made between the fault and the replacement.
    alone = [a for a in admissions if killed_at <= a.started and a.ended <= restored_at]
    assert alone, f"no admission ran while one replica was down ({len(admissions)} in all)"
    print(
        f"{len(admissions)} admissions, {len(alone)} of them in the {restored_at - killed_at:.1f} s "
        "between the fault and the replacement's readiness"
    )
    assert len(admissions) >= minimum * len(workers)
    stored = kubectl.json("get", "agentdeployment", "target")
    assert stored["metadata"]["labels"]["round"] == str(
        max(a.index for a in admissions if a.worker == "apply")
    )


# --- 2. the controller's leader deleted mid-pipeline -------------------------------------------


def controller_leader(system: Kubectl) -> str:
    """The replica kopf's peering lets act: the live peer of highest priority."""
    records = system.json("get", "clusterkopfpeering", PEERING)["status"]
    running = {p["metadata"]["name"] for p in live_pods(system, CONTROLLER_SELECTOR)}
    # kopf names a peer "<user>@<host>/<started>/<random>"; in a pod the host is the pod's name.
    priorities: dict[str, int] = {
        host: int(record["priority"])
        for ident, record in records.items()
        if isinstance(record, dict) and (host := ident.split("@", 1)[-1].split("/", 1)[0]) in running
    }
    assert len(priorities) == 2, f"expected both controller replicas in the peering: {records}"
    return max(priorities, key=lambda host: priorities[host])


def steps_of(pipeline: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in pipeline.get("status", {}).get("steps", [])}


def test_deleting_the_controller_leader_mid_pipeline_submits_no_step_twice(
    pk: Kubectl, app_namespace: str
) -> None:
    kubectl = pk.in_namespace(app_namespace)
    system = pk.in_namespace(SYSTEM_NAMESPACE)
    base_url = fake_model.deploy_fake_model(kubectl)
    thinker = fake_model.agent_spec(replicas=0, max_concurrent=2, timeout=60)
    kubectl(
        "apply",
        "-f",
        "-",
        input=yaml.safe_dump_all([agent("gatherer", offline_spec()), agent("thinker", thinker)]),
    )
    fake_model.agent_on_fake_model(kubectl, "thinker", base_url, replicas=1)
    kubectl(
        "wait",
        "--for=jsonpath={.status.readyReplicas}=1",
        "agentdeployment/gatherer",
        "--timeout=120s",
        timeout=130,
    )

    # gather (instant) -> think (10 s on the fake model) -> conclude (an agent created only after
    # the fault): the leader dies while "think" is in a worker's hands and "conclude" is not started.
    steps = [
        ("gather", "gatherer", "Gather facts about {{ .pipeline.input.topic }}", []),
        ("think", "thinker", "[delay=10] Think about: {{ .steps.gather.output }}", ["gather"]),
        ("conclude", "latecomer", "Conclude: {{ .steps.think.output }}", ["think"]),
    ]
    pipeline = {
        "apiVersion": API_VERSION,
        "kind": "AgentPipeline",
        "metadata": {"name": "failover"},
        "spec": {
            "input": {"topic": "leader election"},
            "steps": [
                {
                    "name": n,
                    "agentDeployment": a,
                    "inputs": {"prompt": p},
                    "dependsOn": d,
                    "timeoutSeconds": 300,
                }
                for n, a, p, d in steps
            ],
        },
    }
    kubectl("apply", "-f", "-", input=yaml.safe_dump(pipeline))
    thinker_stream = f"agentops:{app_namespace}:thinker:tasks"

    def thinking() -> dict[str, Any] | None:
        current = kubectl.json("get", "agentpipeline", "failover")
        phases = {name: s.get("phase") for name, s in steps_of(current).items()}
        taken = sum(pending_by_consumer(pk, thinker_stream).values())
        return (
            current
            if phases.get("think") == "Running" and phases.get("conclude") == "Pending" and taken == 1
            else None
        )

    mid_flight = eventually("step think is in a worker's hands", thinking, within=120)
    uid = mid_flight["metadata"]["uid"]
    leader = controller_leader(system)
    killed_wall = time.time()
    force_delete(system, leader)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(agent("latecomer", offline_spec())))

    def finished() -> dict[str, Any] | None:
        current = kubectl.json("get", "agentpipeline", "failover")
        return current if current.get("status", {}).get("phase") in ("Succeeded", "Failed") else None

    done = eventually("the pipeline finishes after the failover", finished, within=240)
    assert done["status"]["phase"] == "Succeeded", json.dumps(done["status"], indent=1)
    expected = {name: f"{uid}:{name}:1" for name, *_ in steps}
    for name, status in steps_of(done).items():
        assert (status["phase"], status["attempts"], status["taskId"]) == ("Succeeded", 1, expected[name]), (
            status
        )

    # Each step went to its agent's stream exactly once, under its first attempt's task id ...
    for name, agent_name, *_ in steps:
        submitted = [f["task_id"] for _, f in entries(pk, f"agentops:{app_namespace}:{agent_name}:tasks")]
        assert submitted == [expected[name]], f"{agent_name}: {submitted}"
    members = redis_json(pk, "SMEMBERS", f"agentops:{app_namespace}:pipeline:failover:submitted")
    assert sorted(members) == sorted(expected.values())
    # ... was worked on once, and the result the dead leader never saw was applied by its successor.
    results = {f["task_id"]: f for _, f in entries(pk, f"agentops:{app_namespace}:pipeline:failover:results")}
    assert sorted(results) == sorted(expected.values())
    assert all(r["status"] == "succeeded" and r["attempts"] == "1" for r in results.values()), results
    assert float(results[expected["think"]]["finished_at"]) > killed_wall, "think finished before the fault"

    # Both replicas are back, one leading and one standing by, for whatever runs next.
    back_to(system, CONTROLLER_SELECTOR, 2, gone={leader})
    eventually("both controller replicas in the peering", lambda: controller_leader(system), within=60)


# --- 3. agent workers deleted under a load of tasks --------------------------------------------


def test_deleting_agent_pods_under_load_loses_no_task_and_duplicates_none(
    pk: Kubectl, app_namespace: str
) -> None:
    kubectl = pk.in_namespace(app_namespace)
    base_url = fake_model.deploy_fake_model(kubectl)
    # 3 workers x 20 slots, 5-9 s a task (staggered, so workers keep taking new ones): 200 tasks
    # take about 25 s.  A force-deleted pod gets the kubelet's minimum grace (2 s) between SIGTERM
    # and SIGKILL, so a task it took just before the fault dies in the worker's hands.
    spec = fake_model.agent_spec(replicas=0, max_concurrent=20, timeout=12)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(agent("research-agent", spec)))
    fake_model.agent_on_fake_model(kubectl, "research-agent", base_url, replicas=3)
    selector = f"{LABEL_AGENT}=research-agent"
    workers = sorted(ready_pod_names(kubectl, selector))
    assert len(workers) == 3

    total = 200
    stream = f"agentops:{app_namespace}:research-agent:tasks"
    reply_to = f"agentops:{app_namespace}:client:load:results"
    tasks = [
        {"task_id": f"load-{i:03d}", "prompt": f"[delay={5 + i % 5}] task {i}", "reply_to": reply_to}
        for i in range(total)
    ]
    entry_ids = xadd_all(pk, stream, tasks)
    task_of_entry = dict(zip(entry_ids, (t["task_id"] for t in tasks), strict=True))
    victims = workers[:2]

    def in_flight() -> tuple[int, dict[str, dict[str, int]]] | None:
        """Results arriving, and each victim holding a task it took within the last second."""
        done, *pending = redis_batch(pk, [["XLEN", reply_to], *(xpending_of(stream, v) for v in victims)])
        held = {v: idle_by_entry(p) for v, p in zip(victims, pending, strict=True)}
        fresh = all(any(idle < 1000 for idle in held[v].values()) for v in victims)
        return (int(done), held) if 0 < int(done) < total and fresh else None

    done_at_kill, held = eventually(
        "the victims taking new tasks while results arrive", in_flight, within=120
    )
    force_delete(kubectl, *victims)

    eventually(
        f"{total} results", lambda: int(redis_json(pk, "XLEN", reply_to)) >= total, within=180, interval=1
    )
    results = [f for _, f in entries(pk, reply_to)]
    counts = Counter(r["task_id"] for r in results)
    assert len(results) == total
    assert set(counts) == {t["task_id"] for t in tasks}, (
        f"{len(results)} results; duplicated: {[t for t, n in counts.items() if n > 1]}; "
        f"missing: {sorted({t['task_id'] for t in tasks} - set(counts))}"
    )
    assert {r["status"] for r in results} == {"succeeded"}, Counter(r["status"] for r in results)
    assert pending_by_consumer(pk, stream) == {}, "entries left unacknowledged"

    # What the victims held when they died was either finished by them in their grace period, or
    # redelivered to another worker once idle past the timeout: one result either way, and some
    # (those taken just before the fault) cannot have been finished by the victims.
    by_task = {r["task_id"]: r for r in results}
    redelivered = []
    for victim, pending in held.items():
        for entry_id in pending:
            result = by_task[task_of_entry[entry_id]]
            taken_over = result["worker"] not in victims and int(result["attempts"]) >= 2
            assert result["worker"] == victim or taken_over, (victim, result)
            if taken_over:
                redelivered.append(result["task_id"])
    assert redelivered, "every task the victims held finished in their grace period: no crash was tested"
    print(
        f"killed with {done_at_kill} results in, holding { {v: len(p) for v, p in held.items()} }; "
        f"{len(redelivered)} of those redelivered"
    )
    back_to(kubectl, selector, 3, gone=set(victims))


# --- 4. a failing semantic probe takes the pod out of service ----------------------------------


def probe_interval(pk: Kubectl) -> int:
    """The shortest probe interval the cluster's policies allow (a probe more often is refused)."""
    policies = pk.json("get", "clusteragentpolicies")["items"]
    floors = [int(p["spec"].get("probes", {}).get("minIntervalSeconds", 0)) for p in policies]
    return max([2, *floors])


def readyz(kubectl: Kubectl, pod: str) -> dict[str, Any]:
    """The runtime's own ``/readyz`` answer, from inside the pod (503 bodies included)."""
    script = (
        "import urllib.request, urllib.error\n"
        "try:\n    print(urllib.request.urlopen('http://127.0.0.1:8080/readyz', timeout=5).read().decode())\n"
        "except urllib.error.HTTPError as e:\n    print(e.read().decode())\n"
    )
    answer: dict[str, Any] = json.loads(kubectl("exec", pod, "--", "python", "-c", script).stdout)
    return answer


def endpoint_readiness(kubectl: Kubectl, service: str) -> dict[str, bool]:
    """Pod IP -> ``ready`` in the Service's EndpointSlices (what kube-proxy routes to)."""
    slices = kubectl.json("get", "endpointslices", "-l", f"kubernetes.io/service-name={service}")["items"]
    return {
        address: bool(endpoint.get("conditions", {}).get("ready"))
        for piece in slices
        for endpoint in piece.get("endpoints") or []
        for address in endpoint["addresses"]
    }


def pod_ready_condition(kubectl: Kubectl, pod: str) -> str:
    conditions = kubectl.json("get", "pod", pod)["status"].get("conditions", [])
    return next((c["status"] for c in conditions if c["type"] == "Ready"), "Unknown")


def submit_and_collect(
    pk: Kubectl, stream: str, reply_to: str, prefix: str, count: int, delay: float
) -> list[dict[str, str]]:
    tasks = [
        {"task_id": f"{prefix}-{i}", "prompt": f"[delay={delay}] {prefix} task {i}", "reply_to": reply_to}
        for i in range(count)
    ]
    xadd_all(pk, stream, tasks)
    eventually(
        f"{count} results of {prefix}", lambda: int(redis_json(pk, "XLEN", reply_to)) >= count, within=120
    )
    results = [f for _, f in entries(pk, reply_to)]
    assert sorted(r["task_id"] for r in results) == sorted(t["task_id"] for t in tasks)
    assert {r["status"] for r in results} == {"succeeded"}, results
    return results


def test_a_failing_semantic_probe_takes_the_pod_out_until_it_recovers(
    pk: Kubectl, app_namespace: str
) -> None:
    kubectl = pk.in_namespace(app_namespace)
    base_url = fake_model.deploy_fake_model(kubectl)
    interval = probe_interval(pk)
    probe = {
        "type": "semantic",
        "intervalSeconds": interval,
        "validatorPrompt": "Reply with exactly one word: HEALTHY",
    }
    spec = fake_model.agent_spec(replicas=0, max_concurrent=2, timeout=10, probe=probe)
    kubectl("apply", "-f", "-", input=yaml.safe_dump(agent("prober", spec)))
    fake_model.agent_on_fake_model(kubectl, "prober", base_url, replicas=2)
    pods = {p["metadata"]["name"]: p["status"]["podIP"] for p in live_pods(kubectl, f"{LABEL_AGENT}=prober")}
    sick, healthy = sorted(pods)
    service = "prober-metrics"
    stream = f"agentops:{app_namespace}:prober:tasks"
    # The EndpointSlice controller follows pod readiness a moment after the Deployment does.
    eventually(
        "the Service's EndpointSlice routes to both pods",
        lambda: endpoint_readiness(kubectl, service) == {pods[sick]: True, pods[healthy]: True},
        within=60,
    )

    # The model starts answering one pod's probe wrongly ("UNHEALTHY" instead of "HEALTHY") ...
    fake_model.make_sick(kubectl, pods[sick])
    # One probe interval for the runtime to ask, two readiness periods for the kubelet to agree.
    within = 3 * interval + 60
    eventually(
        "the kubelet marks the sick pod not Ready",
        lambda: pod_ready_condition(kubectl, sick) == "False",
        within=within,
    )
    eventually(
        "the Service's EndpointSlice routes to the healthy pod only",
        lambda: endpoint_readiness(kubectl, service) == {pods[sick]: False, pods[healthy]: True},
        within=60,
    )
    verdict = readyz(kubectl, sick)
    assert verdict["ready"] is False, verdict
    assert verdict["probe"]["ok"] is False, verdict
    assert verdict["probe"]["reply"] == "UNHEALTHY", verdict
    assert pod_ready_condition(kubectl, healthy) == "True"

    # ... so tasks submitted now are all taken by the healthy pod: more tasks than its slots, so a
    # sick pod that still read its stream would have taken some of them.
    while_sick = submit_and_collect(
        pk, stream, f"agentops:{app_namespace}:client:sick:results", "sick", 6, 0.3
    )
    assert {r["worker"] for r in while_sick} == {healthy}, [(r["task_id"], r["worker"]) for r in while_sick]
    assert pending_by_consumer(pk, stream).get(sick, 0) == 0
    consumers = {c["name"]: c for c in redis_json(pk, "XINFO", "CONSUMERS", stream, "workers")}
    assert consumers[sick]["pending"] == 0, consumers

    # The model recovers: the pod is Ready, routed to, and takes tasks again.
    fake_model.make_sick(kubectl)
    eventually(
        "the kubelet marks the pod Ready again",
        lambda: pod_ready_condition(kubectl, sick) == "True",
        within=within,
    )
    eventually(
        "the Service's EndpointSlice routes to both pods",
        lambda: endpoint_readiness(kubectl, service) == {pods[sick]: True, pods[healthy]: True},
        within=60,
    )
    assert readyz(kubectl, sick)["probe"]["reply"] == "HEALTHY"
    # Eight one-second tasks against the healthy pod's two slots: the recovered pod must share them.
    recovered = submit_and_collect(pk, stream, f"agentops:{app_namespace}:client:back:results", "back", 8, 1)
    assert sick in {r["worker"] for r in recovered}, [(r["task_id"], r["worker"]) for r in recovered]
