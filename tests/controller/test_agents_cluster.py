"""AgentDeployments against the real control plane: children, status from real processes, GC,
self-healing, missing Secrets, prompt revisions and rollback.

Each test runs its own controller process (``--namespace <test namespace>``) and, where pods must
become ready, the local launcher, so READY comes from real ``agent_runtime`` processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import kube
from contracts.resources import (
    CHANGE_REASON,
    LABEL_AGENT,
    PROMPT_CHANGED_AT,
    PROMPT_CHANGED_BY,
    PROMPT_CHANGED_BY_GROUPS,
    PROMPT_CHANGED_BY_UID,
    PROMPT_PREVIOUS_SHA256,
    PROMPT_SHA256,
    prompt_sha256,
)
from tests.controller.conftest import ControllerProcess
from tests.support.kubectl import Kubectl
from tests.support.seed import SEED_AGENT
from tests.support.waiting import eventually

SMALL_AGENT = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentDeployment
metadata:
  name: {name}
spec:
  replicas: {replicas}
  model: claude-sonnet-4-20250514
  systemPrompt: "You answer briefly."
  limits: {{maxTokensPerCall: 500, maxConcurrentTasks: 2, timeoutSeconds: 30}}
"""


def agdep(kubectl: Kubectl, name: str) -> Any:
    return kubectl.json("get", "agdep", name)


def condition(obj: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next((c for c in (obj.get("status") or {}).get("conditions", []) if c["type"] == type_), None)


def child(api: kube.Client, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
    """A Deployment, ConfigMap or Service of the test namespace (None while it does not exist)."""
    api_version, plural = {
        "Deployment": ("apps/v1", "deployments"),
        "ConfigMap": ("v1", "configmaps"),
        "Service": ("v1", "services"),
    }[kind]
    return api.get(kube.path(api_version, plural, name, namespace=namespace))


def _env(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_seed_agent_gets_children_and_ready_status_from_real_processes(
    kubectl: Kubectl,
    k8s_api: kube.Client,
    namespace: str,
    controller: ControllerProcess,
    local_agents: None,
) -> None:
    kubectl("apply", "-f", "-", input=SEED_AGENT)
    service = eventually("children", lambda: child(k8s_api, "Service", namespace, "research-agent-metrics"))
    deployment = child(k8s_api, "Deployment", namespace, "research-agent")
    assert deployment is not None
    env = _env(deployment)
    assert env["AGENTOPS_MAX_CONCURRENT_TASKS"]["value"] == "5"
    assert env["AGENTOPS_MAX_TOKENS_PER_CALL"]["value"] == "8000"
    assert env["AGENTOPS_PROVIDER"]["value"] == "offline"
    prompt = child(k8s_api, "ConfigMap", namespace, "research-agent-prompt")
    assert prompt is not None
    assert prompt["data"]["system-prompt"].startswith("You are a research agent.")
    assert service["spec"]["ports"][0]["port"] == 8080

    ready = eventually(
        "3 ready replicas from local runtime processes",
        lambda: (agdep(kubectl, "research-agent").get("status") or {}).get("readyReplicas") == 3,
        within=60,
    )
    assert ready
    obj = agdep(kubectl, "research-agent")
    status = obj["status"]
    assert status["replicas"] == 3
    assert status["selector"] == "agentops.agentops.io/agent=research-agent"
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    assert status["promptHash"] == prompt_sha256(obj["spec"]["systemPrompt"])
    assert status["promptRevision"] == 1
    assert status["effectiveProvider"] == "offline (no API key)"
    ready_condition = condition(obj, "Ready")
    assert ready_condition is not None
    assert ready_condition["status"] == "True"
    assert ready_condition["reason"] == "AllReplicasReady"
    assert condition(obj, "BudgetExceeded")["status"] == "False"  # type: ignore[index]
    printed = kubectl("get", "agdep", "research-agent").stdout
    assert printed.split("\n")[1].split()[2:4] == ["3", "3"], printed
    events = kubectl.json("get", "events", "--field-selector", "involvedObject.name=research-agent")
    assert "OfflineProvider" in {e["reason"] for e in events["items"]}

    # The scale subresource drives replicas (what `kubectl scale` and HPA/KEDA use).
    kubectl("scale", "agdep", "research-agent", "--replicas=1")
    eventually(
        "scale to 1 reaches the Deployment and the status",
        lambda: ((child(k8s_api, "Deployment", namespace, "research-agent") or {})["spec"]["replicas"] == 1
                 and agdep(kubectl, "research-agent")["status"].get("readyReplicas") == 1),
        within=30,
    )  # fmt: skip


def test_deleted_deployment_comes_back_and_deleting_the_agent_removes_its_children(
    kubectl: Kubectl, k8s_api: kube.Client, namespace: str, controller: ControllerProcess
) -> None:
    kubectl("apply", "-f", "-", input=SMALL_AGENT.format(name="helper", replicas=1))
    first = eventually("Deployment", lambda: child(k8s_api, "Deployment", namespace, "helper"))
    first_uid = first["metadata"]["uid"]

    k8s_api.delete(kube.path("apps/v1", "deployments", "helper", namespace=namespace))

    def recreated() -> bool:
        again = child(k8s_api, "Deployment", namespace, "helper")
        return again is not None and again["metadata"]["uid"] != first_uid

    assert eventually("the hand-deleted Deployment to be recreated", recreated)
    k8s_api.delete(kube.path("v1", "configmaps", "helper-prompt", namespace=namespace))
    eventually("ConfigMap back", lambda: child(k8s_api, "ConfigMap", namespace, "helper-prompt"))

    kubectl("delete", "agdep", "helper", "--wait=true")
    eventually(
        "garbage collection of Deployment, ConfigMap and Service",
        lambda: (
            not any(
                (
                    child(k8s_api, "Deployment", namespace, "helper"),
                    child(k8s_api, "ConfigMap", namespace, "helper-prompt"),
                    child(k8s_api, "Service", namespace, "helper-metrics"),
                )
            )
        ),
        within=60,
    )


def test_missing_secret_is_a_condition_with_a_message_not_a_crash(
    kubectl: Kubectl, namespace: str, controller: ControllerProcess, local_agents: None
) -> None:
    manifest = SMALL_AGENT.format(name="keyed", replicas=1) + "  credentials: {secretRef: {name: llm-key}}\n"
    kubectl("apply", "-f", "-", input=manifest)

    def not_found() -> dict[str, Any] | None:
        ready = condition(agdep(kubectl, "keyed"), "Ready")
        return ready if ready and ready["reason"] == "SecretNotFound" else None

    ready = eventually("Ready=False/SecretNotFound", not_found)
    assert ready["status"] == "False"
    assert "llm-key" in ready["message"]
    assert "does not exist" in ready["message"]
    events = kubectl.json("get", "events", "--field-selector", "involvedObject.name=keyed")
    assert "SecretNotFound" in {e["reason"] for e in events["items"]}
    assert controller.proc is not None
    assert controller.proc.poll() is None, controller.output()[-3000:]

    # Once the Secret exists the agent uses it (the pod starts, the condition clears).
    kubectl("create", "secret", "generic", "llm-key", "--from-literal=api-key=not-a-real-key")
    eventually(
        "the condition to clear after the Secret appears",
        lambda: (condition(agdep(kubectl, "keyed"), "Ready") or {}).get("reason") != "SecretNotFound",
    )
    assert agdep(kubectl, "keyed")["status"]["effectiveProvider"] == "anthropic"


def _revisions(kubectl: Kubectl, agent: str, count: int | None = None) -> list[dict[str, Any]] | None:
    """The agent's revisions in order; None if ``count`` is given and there are not exactly that many."""
    items = kubectl.json("get", "agrev", "-l", f"agentops.agentops.io/agent={agent}")["items"]
    found = sorted(items, key=lambda r: r["spec"]["revision"])
    return None if count is not None and len(found) != count else found


def _stamp_patch(prompt: str, previous: str, user: str, groups: list[str], reason: str) -> str:
    """The change exactly as the mutating webhook would store it (the webhook itself is not running here)."""
    return json.dumps(
        {
            "metadata": {
                "annotations": {
                    PROMPT_SHA256: prompt_sha256(prompt),
                    PROMPT_PREVIOUS_SHA256: previous,
                    PROMPT_CHANGED_BY: user,
                    PROMPT_CHANGED_BY_UID: "uid-" + user,
                    PROMPT_CHANGED_BY_GROUPS: ",".join(groups),
                    PROMPT_CHANGED_AT: "2026-11-24T10:00:00Z",
                    CHANGE_REASON: reason,
                }
            },
            "spec": {"systemPrompt": prompt},
        }
    )


def test_prompt_change_by_impersonated_user_makes_exactly_one_revision_and_rollback_works(
    kubectl: Kubectl, namespace: str, controller: ControllerProcess, control_plane: Any
) -> None:
    kubectl("apply", "-f", "-", input=SMALL_AGENT.format(name="writer", replicas=0))
    eventually("revision 1", lambda: _revisions(kubectl, "writer", count=1))
    # alice may edit agents in this namespace, nothing else.
    kubectl("create", "role", "agent-editor", "--verb=get,patch,update", "--resource=agentdeployments")
    kubectl("create", "rolebinding", "alice-edits", "--role=agent-editor", "--user=alice")

    old_prompt = agdep(kubectl, "writer")["spec"]["systemPrompt"]
    new_prompt = "You answer briefly and politely."
    patch = _stamp_patch(new_prompt, prompt_sha256(old_prompt), "alice", ["team-a"], "be polite")
    kubectl("patch", "agdep", "writer", "--type=merge", "-p", patch, as_user="alice", as_groups=["team-a"])

    revisions = eventually("revision 2", lambda: _revisions(kubectl, "writer", count=2))
    second = revisions[1]["spec"]
    assert second["revision"] == 2
    assert second["author"] == {"username": "alice", "uid": "uid-alice", "groups": ["team-a"]}
    assert second["reason"] == "be polite"
    assert second["prompt"] == new_prompt
    assert second["previousSha256"] == prompt_sha256(old_prompt)
    assert agdep(kubectl, "writer")["status"]["promptRevision"] == 2

    # Exactly one per change, also across a controller crash and restart.
    controller.kill()
    controller.start()
    eventually("controller restart", lambda: "controller started" in controller.output())
    # A spec change that keeps the prompt: once the restarted controller reports its generation, it
    # has reconciled the agent (prompt hash check included) after the restart, and made no revision.
    kubectl("patch", "agdep", "writer", "--type=merge", "-p", '{"spec":{"limits":{"maxConcurrentTasks":3}}}')
    generation = agdep(kubectl, "writer")["metadata"]["generation"]

    def observed() -> dict[str, Any] | None:
        status: dict[str, Any] = agdep(kubectl, "writer").get("status") or {}
        return status if status.get("observedGeneration") == generation else None

    settled = eventually(f"status.observedGeneration {generation} from the restarted controller", observed)
    assert settled["promptRevision"] == 2
    assert [r["spec"]["revision"] for r in _revisions(kubectl, "writer") or []] == [1, 2]

    history = subprocess.run(
        [sys.executable, "-m", "agentops", "history", "writer", "-n", namespace,
         "--kubeconfig", str(control_plane.kubeconfig)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert "alice (team-a)" in history.stdout
    assert "be polite" in history.stdout
    assert "+You answer briefly and politely." in history.stdout

    rollback = subprocess.run(
        [sys.executable, "-m", "agentops", "rollback", "writer", "--to", "1", "--reason", "too chatty",
         "-n", namespace, "--kubeconfig", str(control_plane.kubeconfig)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert rollback.returncode == 0, rollback.stderr
    obj = agdep(kubectl, "writer")
    assert obj["spec"]["systemPrompt"] == old_prompt
    assert obj["metadata"]["annotations"][CHANGE_REASON] == "too chatty"
    revisions = eventually(
        "rollback revision",
        lambda: _revisions(kubectl, "writer", count=3),
    )
    assert revisions[2]["spec"]["prompt"] == old_prompt
    assert revisions[2]["spec"]["reason"] == "too chatty"


def test_with_an_api_key_the_local_stack_gives_agents_claude_through_a_secret(
    kubectl: Kubectl,
    k8s_api: kube.Client,
    namespace: str,
    redis_url: str,
    control_plane: Any,
    tmp_path: Any,
    monkeypatch: Any,
) -> None:
    from localstack.agents import API_KEY_SECRET, Launcher
    from tests.controller.conftest import controller_argv

    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    argv = [*controller_argv(namespace, redis_url), "--default-api-key-secret", API_KEY_SECRET]
    proc = ControllerProcess(argv, env, tmp_path / "controller.log")
    proc.start()
    try:
        kubectl("apply", "-f", "-", input=SMALL_AGENT.format(name="claude", replicas=1))
        # No key yet: the offline provider, said plainly.
        eventually(
            "the offline fallback",
            lambda: (
                (agdep(kubectl, "claude").get("status") or {}).get("effectiveProvider")
                == "offline (no API key)"
            ),
        )
        # The launcher stores ANTHROPIC_API_KEY in every namespace with agents; the agent switches.
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-test-not-real")
        launcher = Launcher(k8s_api, namespace, tmp_path / "agents")
        launcher.ensure_api_key_secrets()
        assert namespace in launcher.keyed_namespaces
        eventually(
            "provider anthropic from the default Secret",
            lambda: (agdep(kubectl, "claude").get("status") or {}).get("effectiveProvider") == "anthropic",
        )
        env_vars = _env(child(k8s_api, "Deployment", namespace, "claude") or {})
        assert env_vars["AGENTOPS_PROVIDER"]["value"] == "anthropic"
        ref = env_vars["AGENTOPS_API_KEY"]["valueFrom"]["secretKeyRef"]
        assert (ref["name"], ref["key"]) == (API_KEY_SECRET, "api-key")

        # The launcher resolves the key exactly as a kubelet would.
        def keyed_pod() -> Any:
            pods = k8s_api.list_items(
                kube.path("v1", "pods", namespace=namespace), label_selector=LABEL_AGENT
            )
            for pod in pods:
                for var in pod["spec"]["containers"][0].get("env") or []:
                    if var["name"] == "AGENTOPS_API_KEY":
                        return pod, var
            return None

        pod, api_key_var = eventually("a pod of the re-rendered template", keyed_pod)
        assert launcher._resolve(pod, api_key_var) == "sk-ant-test-not-real"
    finally:
        proc.stop()
