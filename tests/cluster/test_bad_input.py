"""Bad input in a real cluster: each mistake is answered by a condition or message that says what
to do, and nothing waits without saying why.

On a node of this module's own, with the product installed by ``kubectl apply -k`` (these tests
stop its Redis and point its controller at an image that does not exist):

* an agent whose API-key Secret is missing: ``Ready=False/SecretNotFound`` naming the Secret and
  the key to create, an Event saying the same, and the agent runs once the Secret is there;
* a runtime image that does not exist: the kubelet names the image on the pod; the agent is not
  ready; the AgentDeployment does not say why (an expected failure, see the test), and fixing the
  image brings the agent up;
* Redis down: agents turn not ready and say Redis is unreachable, the controller logs that it cannot
  reach Redis, and after Redis returns every part recovers (a task goes through, status is read
  from Redis again);
* a bad ``--set`` value for the chart: ``helm install`` against the live node fails at once with
  the value's path and what is allowed, and installs nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from contracts.resources import API_VERSION
from localstack.cluster import SYSTEM_NAMESPACE, NodeCluster
from localstack.helm import ensure_helm
from tests.cluster.agents import agent, agent_pods, apply, condition, ready_replicas, status, waiting
from tests.cluster.conftest import redis_cli
from tests.cluster.own_node import CHART, CHART_LOCAL_VALUES, helm, own_node
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

pytestmark = pytest.mark.node

CONTROLLER = "deployment/agentops-controller"
CONTROLLER_LABEL = "app.kubernetes.io/name=agentops-controller"
MISSING_IMAGE = "agentops-operator:does-not-exist"
REDIS_ADDRESS = "redis.agentops-system.svc:6379"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeCluster]:
    with own_node(tmp_path_factory.mktemp("bad-input"), install=True) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def nk(node: NodeCluster) -> Kubectl:
    return Kubectl(node.kubeconfig)


def new_namespace(nk: Kubectl, stem: str) -> str:
    name = f"{stem}-{uuid.uuid4().hex[:6]}"
    nk("create", "namespace", name)
    return name


@pytest.fixture
def namespace(nk: Kubectl) -> Iterator[str]:
    name = new_namespace(nk, "bad")
    try:
        yield name
    finally:
        nk("delete", "namespace", name, "--wait=false")


def events_about(kubectl: Kubectl, name: str, reason: str) -> list[str]:
    listed = kubectl.json("get", "events", f"--field-selector=involvedObject.name={name},reason={reason}")
    return [e["message"] for e in listed["items"]]


# --- a missing API-key Secret -------------------------------------------------------------------


def test_a_missing_api_key_secret_says_which_secret_to_create(nk: Kubectl, namespace: str) -> None:
    kubectl = nk.in_namespace(namespace)
    apply(
        kubectl,
        agent(
            "keyless",
            model="claude-sonnet-4-20250514",
            provider="anthropic",
            credentials={"secretRef": {"name": "anthropic-key", "key": "api-key"}},
        ),
    )

    def secret_not_found() -> dict[str, Any]:
        ready = condition(kubectl, "keyless", "Ready") or {}
        return ready if ready.get("reason") == "SecretNotFound" else {}

    ready = eventually("Ready=False/SecretNotFound", secret_not_found)
    assert ready["status"] == "False"
    assert ready["message"] == (
        "Secret 'anthropic-key' named by spec.credentials.secretRef does not exist in this namespace; "
        "create it with key 'api-key' holding the anthropic API key"
    )
    assert eventually(
        "a SecretNotFound event", lambda: events_about(kubectl, "keyless", "SecretNotFound")
    ) == [ready["message"]]
    # The pods are there, held by the kubelet until the Secret exists, and say which one.
    held = eventually(
        "the kubelet holds the pod for its Secret",
        lambda: [
            w
            for p in agent_pods(kubectl, "keyless")
            if (w := waiting(p)).get("reason") == "CreateContainerConfigError"
        ],
    )
    assert held[0]["message"] == 'secret "anthropic-key" not found', held

    # Doing what the message says is enough: nothing else to restart or re-apply.
    kubectl(
        "create", "secret", "generic", "anthropic-key", f"--from-literal=api-key=sk-ant-test-{uuid.uuid4()}"
    )

    def all_ready() -> dict[str, Any]:
        ready = condition(kubectl, "keyless", "Ready") or {}
        return ready if ready.get("reason") == "AllReplicasReady" else {}

    assert eventually("the agent is ready once the Secret exists", all_ready, within=120)["status"] == "True"
    assert status(kubectl, "keyless")["effectiveProvider"] == "anthropic"


# --- a missing image ----------------------------------------------------------------------------


def set_runtime_image(nk: Kubectl, image: str) -> None:
    """Restart the controller with ``--runtime-image=image`` (every agent's pods use it)."""
    deployment = nk.json("get", CONTROLLER, namespace=SYSTEM_NAMESPACE)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    changed = [f"--runtime-image={image}" if a.startswith("--runtime-image=") else a for a in args]
    assert changed != args or f"--runtime-image={image}" in args, args
    patch = [{"op": "replace", "path": "/spec/template/spec/containers/0/args", "value": changed}]
    nk("patch", CONTROLLER, "--type=json", "-p", json.dumps(patch), namespace=SYSTEM_NAMESPACE)
    nk("rollout", "status", CONTROLLER, "--timeout=180s", namespace=SYSTEM_NAMESPACE, timeout=190)

    # A replaced replica may still be shutting down, and lead meanwhile: wait until it is gone.
    def only_new_replicas() -> bool:
        pods = nk.json("get", "pods", "-l", CONTROLLER_LABEL, namespace=SYSTEM_NAMESPACE)["items"]
        return all(f"--runtime-image={image}" in p["spec"]["containers"][0]["args"] for p in pods)

    eventually("only controller replicas with the new image run", only_new_replicas, within=120)


def pulling_failed(pod: dict[str, Any]) -> dict[str, Any]:
    state = waiting(pod)
    return state if state.get("reason") in ("ErrImagePull", "ImagePullBackOff") else {}


@pytest.fixture(scope="class")
def runtime_image(nk: Kubectl) -> str:
    """The image the install gives every agent, before TestMissingImage breaks it."""
    deployment = nk.json("get", CONTROLLER, namespace=SYSTEM_NAMESPACE)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    image: str = next(a.split("=", 1)[1] for a in args if a.startswith("--runtime-image="))
    return image


@pytest.fixture(scope="class")
def imageless(nk: Kubectl, runtime_image: str) -> Iterator[Kubectl]:
    """An agent whose pods cannot start: the controller's runtime image does not exist."""
    name = new_namespace(nk, "imageless")
    kubectl = nk.in_namespace(name)
    try:
        set_runtime_image(nk, MISSING_IMAGE)
        apply(kubectl, agent("imageless"))
        eventually(
            "the agent's pod fails to pull its image",
            lambda: [s for p in agent_pods(kubectl, "imageless") if (s := pulling_failed(p))],
        )
        yield kubectl
    finally:
        set_runtime_image(nk, runtime_image)
        nk("delete", "namespace", name, "--wait=false")


class TestMissingImage:
    def test_the_pod_names_the_missing_image_and_the_agent_is_not_ready(self, imageless: Kubectl) -> None:
        (pod,) = agent_pods(imageless, "imageless")
        assert pod["spec"]["containers"][0]["image"] == MISSING_IMAGE
        state = waiting(pod)
        assert state["reason"] in ("ErrImagePull", "ImagePullBackOff"), state
        assert MISSING_IMAGE in state["message"], state
        failed = events_about(imageless, pod["metadata"]["name"], "Failed")
        assert f'Failed to pull image "{MISSING_IMAGE}"' in "\n".join(failed), failed

        assert ready_replicas(imageless, "imageless") == 0

    def test_the_agent_status_says_the_image_is_missing_and_what_to_do(self, imageless: Kubectl) -> None:
        def said() -> dict[str, Any] | None:
            ready = condition(imageless, "imageless", "Ready") or {}
            return ready if MISSING_IMAGE in ready.get("message", "") else None

        ready = eventually("the agent's Ready condition names the missing image", said, within=30)
        assert (ready["status"], ready["reason"]) == ("False", "ImagePullFailed"), ready
        assert ready["message"].startswith("pod imageless-"), ready
        assert f'image "{MISSING_IMAGE}" cannot be pulled' in ready["message"], ready
        assert "--runtime-image" in ready["message"], ready  # what to do
        eventually(
            "a Warning Event on the agent says so",
            lambda: [
                m for m in events_about(imageless, "imageless", "ImagePullFailed") if MISSING_IMAGE in m
            ],
        )
        progressing = condition(imageless, "imageless", "Progressing")
        assert progressing is not None
        assert progressing["status"] == "True", progressing

    def test_the_agent_runs_once_the_image_exists(
        self, nk: Kubectl, imageless: Kubectl, runtime_image: str
    ) -> None:
        set_runtime_image(nk, runtime_image)
        eventually("the agent is ready", lambda: ready_replicas(imageless, "imageless") == 1, within=120)
        (pod,) = agent_pods(imageless, "imageless")
        assert pod["spec"]["containers"][0]["image"] == runtime_image


# --- Redis down ---------------------------------------------------------------------------------


def logs(nk: Kubectl, namespace: str, selector: str) -> str:
    pods = nk.json("get", "pods", "-l", selector, namespace=namespace)["items"]
    return "\n".join(
        nk("logs", p["metadata"]["name"], "--all-containers", namespace=namespace).stdout for p in pods
    )


def agent_http(kubectl: Kubectl, pod: str, path: str) -> tuple[int, dict[str, Any]]:
    """Status and JSON body of the agent's own endpoint, asked from inside its pod."""
    script = (
        "import json, sys, urllib.error, urllib.request\n"
        "try:\n"
        f"    r = urllib.request.urlopen('http://127.0.0.1:8080{path}', timeout=5); code = r.status\n"
        "except urllib.error.HTTPError as e:\n"
        "    r, code = e, e.code\n"
        "print(json.dumps([code, json.loads(r.read())]))\n"
    )
    code, body = json.loads(kubectl("exec", pod, "--", "python3", "-c", script).stdout)
    return int(code), body


def test_redis_down_is_reported_and_everything_recovers(nk: Kubectl, namespace: str) -> None:
    kubectl = nk.in_namespace(namespace)
    policy = {
        "apiVersion": API_VERSION,
        "kind": "AgentPolicy",
        "metadata": {"name": "budget"},
        # A budget makes the workers settle spend into Redis and the controller read it back.
        "spec": {"budget": {"period": "month", "tokens": 1_000_000, "scope": "Agent"}},
    }
    apply(kubectl, policy, agent("steady"))
    eventually("the agent is ready", lambda: ready_replicas(kubectl, "steady") == 1, within=120)
    (pod,) = agent_pods(kubectl, "steady")
    worker = pod["metadata"]["name"]

    nk("scale", "statefulset/redis", "--replicas=0", namespace=SYSTEM_NAMESPACE)
    try:
        nk("wait", "--for=delete", "pod/redis-0", "--timeout=60s", namespace=SYSTEM_NAMESPACE, timeout=70)

        def not_ready() -> dict[str, Any]:
            ready = condition(kubectl, "steady", "Ready") or {}
            return ready if ready.get("status") == "False" else {}

        ready = eventually("the agent turns not ready", not_ready, within=90)
        assert (ready["reason"], ready["message"]) == ("NoReadyReplicas", "0/1 replicas ready"), ready
        # The pod says why, on its own endpoints and in its log.
        code, body = agent_http(kubectl, worker, "/readyz")
        assert (code, body["ready"], body["redis"]) == (503, False, False), body
        code, body = agent_http(kubectl, worker, "/healthz")
        assert code == 503, body
        assert body["redis"].startswith("unreachable:"), body
        assert REDIS_ADDRESS in body["redis"], body
        assert "Redis unavailable; retrying with backoff" in kubectl("logs", worker).stdout
        # The controller says it cannot reach Redis for this agent.
        said = f"cannot read budget usage of {namespace}/steady: Error 111 connecting to {REDIS_ADDRESS}"
        eventually(
            "the controller logs that Redis is unreachable",
            lambda: said in logs(nk, SYSTEM_NAMESPACE, CONTROLLER_LABEL),
            within=60,
        )
    finally:
        nk("scale", "statefulset/redis", "--replicas=1", namespace=SYSTEM_NAMESPACE)
    nk("rollout", "status", "statefulset/redis", "--timeout=120s", namespace=SYSTEM_NAMESPACE, timeout=130)

    # Recovery, with no restart of anything: the same pod turns ready again and says so.
    eventually("the agent is ready again", lambda: ready_replicas(kubectl, "steady") == 1, within=120)
    assert [p["metadata"]["name"] for p in agent_pods(kubectl, "steady")] == [worker]
    assert "Redis reachable again" in kubectl("logs", worker).stdout
    # A task goes through the new (empty) Redis: the worker recreated its consumer group.
    task = f"t-{uuid.uuid4().hex[:8]}"
    reply = f"reply-{task}"
    stream = f"agentops:{namespace}:steady:tasks"
    prompt = "Reply with exactly one word: Paris"
    redis_cli(nk, "XADD", stream, "*", "task_id", task, "prompt", prompt, "reply_to", reply)
    fields = redis_cli(nk, "XREAD", "BLOCK", "30000", "STREAMS", reply, "0", timeout=45).split("\n")
    assert fields[fields.index("status") + 1] == "succeeded", fields
    # And the controller reads Redis again: the spend the worker settled shows in status.
    eventually(
        "status.usage shows the task's tokens",
        lambda: int((status(kubectl, "steady").get("usage") or {}).get("tokens") or 0) > 0,
        within=60,
    )


# --- a bad chart value --------------------------------------------------------------------------


def cluster_objects(nk: Kubectl) -> set[str]:
    kinds = (
        "namespaces,customresourcedefinitions,clusterroles,clusterrolebindings,"
        "mutatingwebhookconfigurations,validatingwebhookconfigurations"
    )
    return set(nk("get", kinds, "-o", "name").stdout.split())


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("webhook.failurePolicy=Sometimes", ["at '/webhook/failurePolicy'", "'Fail', 'Ignore'"]),
        ("webhook.timeoutSeconds=60", ["at '/webhook/timeoutSeconds'", "maximum: got 60, want 30"]),
        ("webhook.replicaz=3", ["at '/webhook'", "'replicaz' not allowed"]),
    ],
)
def test_helm_install_with_a_bad_value_fails_cleanly(
    node: NodeCluster, nk: Kubectl, value: str, says: list[str]
) -> None:
    binary = ensure_helm()
    release = "agentops-bad"
    namespace = f"agentops-bad-{uuid.uuid4().hex[:6]}"
    before = cluster_objects(nk)
    result = helm(
        binary, node, "install", release, str(CHART), "--namespace", namespace, "--create-namespace",
        *CHART_LOCAL_VALUES, "--set", value, check=False, timeout=60,
    )  # fmt: skip
    assert result.returncode != 0, result.stdout
    assert "INSTALLATION FAILED" in result.stderr, result.stderr
    for words in says:
        assert words in result.stderr, result.stderr

    listed = helm(binary, node, "list", "--all-namespaces", "-q", "--deployed", "--failed", "--pending")
    assert release not in listed.stdout.split()
    assert nk("get", "namespace", namespace, check=False).returncode != 0
    assert cluster_objects(nk) == before
    release_records = nk(
        "get", "secrets", "--all-namespaces", "-l", f"owner=helm,name={release}", "-o", "name"
    )
    assert release_records.stdout.split() == []
