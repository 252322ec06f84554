"""Security by default, checked on the running product rather than on its manifests.

* Every pod of agentops-system and every agent pod runs as a non-root user on a read-only root
  filesystem: the pod spec asks for it, and the kernel shows it from inside the container (uids of
  the container's main process, the root mount's options, a write to ``/`` refused with EROFS).
  The kubelet enforces ``runAsNonRoot``: a root user under it never starts.
* No ServiceAccount of ours holds a wildcard, as ``kubectl auth can-i --list`` reports it, beyond
  what Kubernetes grants every authenticated user (measured on a fresh ServiceAccount with no
  binding, and subtracted).  The components run with exactly those rights: the article's flow
  passes in pods with them and nothing of ours is refused by the API server.
* An agent's API key comes only from its Secret (``secretKeyRef``), reaches the provider (an
  in-cluster fake of the Anthropic Messages API that accepts only that key), and appears in no
  object, in no pod's log and in none of the node's component logs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from contracts.runtime_env import API_KEY_ENV
from localstack.cluster import SYSTEM_NAMESPACE, NodeCluster
from localstack.images import PRODUCT_IMAGE
from tests.cluster.agents import (
    agent,
    agent_pods,
    apply,
    logs_of_every_pod,
    ready_replicas,
    run_the_article,
    waiting,
)
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually

SERVICE_ACCOUNTS = ("agentops-webhook", "agentops-controller")

# --- the article's agents, shared by the checks below ------------------------------------------


@pytest.fixture(scope="module")
def article(pk: Kubectl) -> Iterator[str]:
    """A namespace running the article's samples: agents READY, the pipeline Succeeded."""
    namespace = f"sec-{uuid.uuid4().hex[:8]}"
    pk("create", "namespace", namespace)
    try:
        run_the_article(pk.in_namespace(namespace))
        yield namespace
    finally:
        pk("delete", "namespace", namespace, "--wait=false")


# --- non-root, read-only root ------------------------------------------------------------------

#: Run inside each container: who the container's main process (pid 1) is, how ``/`` is mounted,
#: and what a write to ``/`` gets.
INSIDE = r"""
import json, os
status = dict(line.split(":", 1) for line in open("/proc/1/status") if ":" in line)
root = [line.split() for line in open("/proc/1/mountinfo") if line.split()[4] == "/"]
try:
    open("/agentops-write-test", "w").close()
    refused = None
except OSError as exc:
    refused = exc.errno
print(json.dumps({
    "exec_uid": os.getuid(),
    "uids": status["Uid"].split(),
    "gids": status["Gid"].split(),
    "no_new_privs": status["NoNewPrivs"].strip(),
    "cap_eff": status["CapEff"].strip(),
    "root_mount_options": root[-1][5].split(","),
    "write_refused": refused,
}))
"""


def effective(pod: dict[str, Any], container: dict[str, Any], key: str) -> Any:
    """A security setting as the kubelet resolves it: the container's, else the pod's."""
    own = (container.get("securityContext") or {}).get(key)
    return own if own is not None else (pod["spec"].get("securityContext") or {}).get(key)


def is_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))


def pod_problems(kubectl: Kubectl, pod: dict[str, Any]) -> list[str]:
    name, namespace = pod["metadata"]["name"], pod["metadata"]["namespace"]
    problems = []
    for container in pod["spec"]["containers"]:
        where = f"{namespace}/{name}[{container['name']}]"
        context = container.get("securityContext") or {}
        if effective(pod, container, "runAsNonRoot") is not True:
            problems.append(f"{where}: runAsNonRoot is not true")
        if effective(pod, container, "runAsUser") in (None, 0):
            problems.append(f"{where}: no non-zero runAsUser")
        if context.get("readOnlyRootFilesystem") is not True:
            problems.append(f"{where}: readOnlyRootFilesystem is not true")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation is not false")
        if "ALL" not in (context.get("capabilities") or {}).get("drop", []):
            problems.append(f"{where}: capabilities are not all dropped")
        # python3 is in every image of ours (the Redis image is built on the same Debian base).
        result = kubectl(
            "exec", name, "-c", container["name"], "--", "python3", "-c", INSIDE, namespace=namespace
        )
        seen = json.loads(result.stdout)
        if "0" in seen["uids"] or seen["exec_uid"] == 0:
            problems.append(f"{where}: runs as uid 0: {seen}")
        if "0" in seen["gids"]:
            problems.append(f"{where}: runs with gid 0: {seen}")
        if seen["no_new_privs"] != "1" or int(seen["cap_eff"], 16) != 0:
            problems.append(f"{where}: may gain privileges: {seen}")
        if "ro" not in seen["root_mount_options"]:
            problems.append(f"{where}: / is mounted {seen['root_mount_options']}")
        if seen["write_refused"] != errno.EROFS:
            problems.append(f"{where}: a write to / was not refused as read-only: {seen}")
    return problems


def test_every_product_and_agent_pod_runs_non_root_on_a_read_only_root(pk: Kubectl, article: str) -> None:
    def running() -> list[dict[str, Any]]:
        """Every system pod, once all are ready and none is being replaced (other tests restart some)."""
        pods: list[dict[str, Any]] = pk.json("get", "pods", namespace=SYSTEM_NAMESPACE)["items"]
        names = [p["metadata"]["name"] for p in pods]
        settled = (
            all(p["metadata"].get("deletionTimestamp") is None and is_ready(p) for p in pods)
            and sum(n.startswith("agentops-webhook-") for n in names) == 2
            and sum(n.startswith("agentops-controller-") for n in names) == 2
            and "redis-0" in names
        )
        return pods if settled else []

    system = eventually("2 webhook, 2 controller and 1 Redis pods, all ready", running, within=120)
    agents = agent_pods(pk.in_namespace(article))
    assert len(agents) == 4, [p["metadata"]["name"] for p in agents]

    problems = [problem for pod in system + agents for problem in pod_problems(pk, pod)]
    assert problems == []


def test_the_kubelet_refuses_a_root_user_under_run_as_non_root(pk: Kubectl, app_namespace: str) -> None:
    kubectl = pk.in_namespace(app_namespace)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "as-root"},
        "spec": {
            "automountServiceAccountToken": False,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 0},
            "containers": [
                {
                    "name": "main",
                    "image": PRODUCT_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": ["python3", "-c", "import time; time.sleep(600)"],
                }
            ],
        },
    }
    apply(kubectl, pod)

    def refusal() -> dict[str, Any]:
        state = waiting(kubectl.json("get", "pod", "as-root"))
        return state if state.get("reason") == "CreateContainerConfigError" else {}

    refused = eventually("the kubelet refuses to create the container", refusal)
    assert "runAsUser breaks non-root policy" in refused["message"], refused
    assert kubectl.json("get", "pod", "as-root")["status"]["containerStatuses"][0]["started"] is False


# --- RBAC --------------------------------------------------------------------------------------


class Rule(NamedTuple):
    resource: str
    urls: tuple[str, ...]
    names: tuple[str, ...]
    verbs: tuple[str, ...]

    def wildcards(self) -> bool:
        return any("*" in field for field in (self.resource, *self.urls, *self.names, *self.verbs))


def _listed(cell: str) -> tuple[str, ...]:
    return tuple(cell.strip().strip("[]").split())


def permissions(kubectl: Kubectl, account: str, namespace: str) -> set[Rule]:
    """``kubectl auth can-i --list`` for a ServiceAccount in one namespace, parsed by its columns."""
    user = f"system:serviceaccount:{account}"
    lines = kubectl("auth", "can-i", "--list", f"--as={user}", namespace=namespace).stdout.splitlines()
    header = lines[0]
    starts = [header.index(title) for title in ("Resources", "Non-Resource URLs", "Resource Names", "Verbs")]
    rules = set()
    for line in lines[1:]:
        cells = [line[a:b] for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rules.add(Rule(cells[0].strip(), _listed(cells[1]), _listed(cells[2]), _listed(cells[3])))
    return rules


#: What every authenticated user may do (system:basic-user, system:discovery,
#: system:public-info-viewer).  Its non-resource URLs hold wildcards (/api/*, /apis/*, /openapi/*),
#: which is why the ServiceAccounts are judged on what they hold beyond it.
BASELINE_RESOURCES = {
    "selfsubjectreviews.authentication.k8s.io",
    "selfsubjectaccessreviews.authorization.k8s.io",
    "selfsubjectrulesreviews.authorization.k8s.io",
}


def test_service_accounts_hold_no_wildcard_beyond_what_every_user_gets(
    pk: Kubectl, article: str, app_namespace: str
) -> None:
    kubectl = pk.in_namespace(app_namespace)
    kubectl("create", "serviceaccount", "nobody")
    namespaces = (SYSTEM_NAMESPACE, article, app_namespace)
    baseline = {ns: permissions(pk, f"{app_namespace}:nobody", ns) for ns in namespaces}
    for rules in baseline.values():
        assert {r.resource for r in rules if r.resource} == BASELINE_RESOURCES, rules
        assert all(r.verbs == ("create",) for r in rules if r.resource), rules
        assert all(r.verbs == ("get",) for r in rules if r.urls), rules

    # The parser sees a wildcard where there is one: a namespaced binding to cluster-admin.
    kubectl("create", "serviceaccount", "almighty")
    kubectl(
        "create",
        "rolebinding",
        "almighty",
        "--clusterrole=cluster-admin",
        f"--serviceaccount={app_namespace}:almighty",
    )
    almighty = permissions(pk, f"{app_namespace}:almighty", app_namespace) - baseline[app_namespace]
    assert any(rule.wildcards() for rule in almighty), almighty

    for account in SERVICE_ACCOUNTS:
        for ns in (SYSTEM_NAMESPACE, article):
            extra = permissions(pk, f"{SYSTEM_NAMESPACE}:{account}", ns) - baseline[ns]
            assert extra, f"{account} holds nothing beyond the baseline in {ns}"
            assert [r for r in extra if r.wildcards()] == [], f"{account} in {ns}"
            assert [r for r in extra if r.urls] == [], f"{account} reaches non-resource URLs in {ns}"
    # The webhook reads and writes one Secret, its own; the controller only lists Secrets.
    webhook = permissions(pk, f"{SYSTEM_NAMESPACE}:agentops-webhook", SYSTEM_NAMESPACE)
    assert {r for r in webhook if r.resource == "secrets"} == {
        Rule("secrets", (), ("agentops-webhook-tls",), ("get", "update", "watch"))
    }
    controller = permissions(pk, f"{SYSTEM_NAMESPACE}:agentops-controller", article)
    assert {r for r in controller if r.resource == "secrets"} == {Rule("secrets", (), (), ("list",))}

    # Agent pods carry no API token, and the account they run as holds only the baseline.
    for pod in agent_pods(pk.in_namespace(article)):
        spec = pod["spec"]
        assert spec.get("automountServiceAccountToken") is False, pod["metadata"]["name"]
        assert not any(v["name"].startswith("kube-api-access") for v in spec.get("volumes", [])), spec
        account = spec.get("serviceAccountName", "default")
        assert permissions(pk, f"{article}:{account}", article) == baseline[article]

    # Running with exactly these rights, the article's flow passed (the fixture), and nothing of
    # ours was refused on the way.  (The webhook's own decisions on other requests are not refusals
    # of the webhook.)
    refused = [
        f"{pod}: {line}"
        for pod, text in logs_of_every_pod(pk, SYSTEM_NAMESPACE).items()
        for line in text.splitlines()
        if "forbidden" in line.lower() and '"admission decision"' not in line
    ]
    assert refused == []


# --- the API key ------------------------------------------------------------------------------

#: The Anthropic Messages API as far as an agent uses it, answering only the key whose SHA-256 is
#: its argument.  It prints whether each call authenticated, never the key.
FAKE_ANTHROPIC = r"""
import hashlib, http.server, json, sys
expected = sys.argv[1]
class Api(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
        # The SDK sends the key as x-api-key or as a bearer token, depending on its version.
        bearer = (self.headers.get("authorization") or "").removeprefix("Bearer ")
        key = self.headers.get("x-api-key") or bearer
        ok = hashlib.sha256(key.encode()).hexdigest() == expected
        print(json.dumps({"path": self.path, "authenticated": ok}), flush=True)
        if ok:
            status, reply = 200, {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": body.get("model"),
                "content": [{"type": "text", "text": "HEALTHY"}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 5, "output_tokens": 1},
            }
        else:
            error = {"type": "authentication_error", "message": "invalid key"}
            status, reply = 401, {"type": "error", "error": error}
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", 8080), Api).serve_forever()
"""


def fake_anthropic(key_sha256: str) -> list[dict[str, Any]]:
    labels = {"app": "fake-anthropic"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "fake-anthropic", "labels": labels},
            "spec": {
                "automountServiceAccountToken": False,
                "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
                "containers": [
                    {
                        "name": "api",
                        "image": PRODUCT_IMAGE,
                        "imagePullPolicy": "Never",
                        "command": ["python3", "-c", FAKE_ANTHROPIC, key_sha256],
                        "ports": [{"containerPort": 8080}],
                        "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                        "securityContext": {
                            "readOnlyRootFilesystem": True,
                            "allowPrivilegeEscalation": False,
                        },
                    }
                ],
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "fake-anthropic"},
            "spec": {"selector": labels, "ports": [{"port": 80, "targetPort": 8080}]},
        },
    ]


def node_logs(cluster: NodeCluster) -> list[Path]:
    """Every component log of the node: containerd, kubelet, kube-proxy, scheduler, the control plane."""
    found = [
        p
        for directory in (cluster.layout.logs, cluster.layout.controlplane / "logs")
        for p in directory.rglob("*")
        if p.is_file()
    ]
    assert {p.name for p in found} >= {"kubelet.log", "containerd.log", "kube-apiserver.log"}, found
    return found


def api_key_env(pod_spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [e for c in pod_spec["containers"] for e in c.get("env", []) if e["name"] == API_KEY_ENV]


def test_the_api_key_comes_only_from_its_secret_and_is_never_logged(
    pk: Kubectl, product: NodeCluster, app_namespace: str
) -> None:
    kubectl = pk.in_namespace(app_namespace)
    key = f"sk-ant-test-{uuid.uuid4()}"
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "anthropic-key"},
        "stringData": {"api-key": key},
    }
    apply(kubectl, secret, *fake_anthropic(hashlib.sha256(key.encode()).hexdigest()))
    kubectl("wait", "--for=condition=Ready", "pod/fake-anthropic", "--timeout=60s")
    # A semantic probe: the pod is ready only once the provider answered the agent's own call.
    apply(
        kubectl,
        agent(
            "keyed",
            model="claude-sonnet-4-20250514",
            provider="anthropic",
            credentials={"secretRef": {"name": "anthropic-key", "key": "api-key"}},
            livenessProbe={
                "type": "semantic",
                "intervalSeconds": 30,
                "validatorPrompt": "Reply with exactly one word: HEALTHY",
            },
        ),
    )
    # The spec has no provider endpoint; the runtime's own AGENTOPS_BASE_URL (contracts/runtime_env)
    # points the pods at the fake.  Added by a field manager of its own, which the controller's
    # server-side apply leaves alone.
    eventually(
        "the controller creates the agent's Deployment", lambda: kubectl.json("get", "deployment", "keyed")
    )
    endpoint = {"name": "AGENTOPS_BASE_URL", "value": f"http://fake-anthropic.{app_namespace}.svc"}
    patch = [{"op": "add", "path": "/spec/template/spec/containers/0/env/-", "value": endpoint}]
    kubectl("patch", "deployment", "keyed", "--type=json", "-p", json.dumps(patch))
    eventually(
        "the agent is ready on the fake API", lambda: ready_replicas(kubectl, "keyed") == 1, within=120
    )
    calls = [json.loads(line) for line in kubectl("logs", "fake-anthropic").stdout.splitlines()]
    assert calls, "the agent never called the provider"
    assert all(call["authenticated"] for call in calls), calls

    # The key is referenced, never copied: the Deployment, every ReplicaSet and every pod.
    deployment = kubectl.json("get", "deployment", "keyed")
    templates = [deployment["spec"]["template"]["spec"]]
    templates += [rs["spec"]["template"]["spec"] for rs in kubectl.json("get", "replicasets")["items"]]
    templates += [p["spec"] for p in agent_pods(kubectl, "keyed")]
    for spec in templates:
        assert api_key_env(spec) == [
            {"name": API_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": "anthropic-key", "key": "api-key"}}}
        ]
    kinds = "agentdeployments,agentpromptrevisions,deployments,replicasets,pods,configmaps,services,events"
    stored = kubectl("get", kinds, "-o", "json").stdout
    assert key not in stored

    logs = {**logs_of_every_pod(pk, SYSTEM_NAMESPACE), **logs_of_every_pod(pk, app_namespace)}
    assert any(name.startswith("keyed-") for name in logs), sorted(logs)
    assert [name for name, text in logs.items() if key in text] == []
    assert [str(p) for p in node_logs(product) if key.encode() in p.read_bytes()] == []
