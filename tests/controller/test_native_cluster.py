"""``python -m controller --native-admission`` against a real API server, with the real webhook.

Every test runs the whole stack: ``python -m webhook`` registered under a name of its own (scoped
to the test's namespace by label), and the controller as a subprocess with ``--native-admission
--webhook-configuration <that name>``, which generates the ValidatingAdmissionPolicies (bound to
its namespace only, as a controller serving one namespace is) and narrows both webhooks with
``matchConditions``.  ClusterAgentPolicies select the test's namespace alone.

- a ceiling edited in a ClusterAgentPolicy changes the API server's in-process verdict within
  seconds (the latency is printed);
- deleting a policy deletes what was generated from it, and a leftover from a policy deleted while
  the controller was down is pruned at start-up;
- with the webhook process killed (its configurations left in place): replica changes within the
  ceiling succeed and over it are denied with the policy's message, while a prompt change and a
  create fail closed naming the webhook;
- through the full stack, each message comes exactly once, in one wording.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import kube
from localstack.controlplane import ControlPlane
from policies.native import (
    GENERATED_SELECTOR,
    WEBHOOK_CONDITION_NAME,
    Options,
    generate_for,
    source_selector,
)
from policies.review import PolicySet
from tests.controller.conftest import ControllerProcess, controller_argv
from tests.controller.test_metrics_cluster import LISTENING, Samples, scrape
from tests.policies.builders import NOW, cluster_policy
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually
from tests.webhook.conftest import SCOPE_LABEL, WebhookProcess, label_namespace, start_webhook, stop_webhook
from webhook.registration import ClientConfig, configurations, register

GROUP_VERSION = "agentops.agentops.io/v1alpha1"
ADMISSION = "admissionregistration.k8s.io/v1"
GENERATED_PLURALS = ("validatingadmissionpolicybindings", "validatingadmissionpolicies")
LIMITS = {"maxTokensPerCall": 1000, "maxConcurrentTasks": 1, "timeoutSeconds": 60}
MUTATE_HOOK = "mutate.agentops.agentops.io"


@dataclass
class Stack:
    namespace: str
    kubectl: Kubectl  # bound to the namespace
    api: kube.Client
    webhook: WebhookProcess
    controller: ControllerProcess
    policies: list[str]

    def cluster_policy(self, name: str, *, mode: str = "Enforce", **spec: Any) -> str:
        """Create a ClusterAgentPolicy that selects this test's namespace only."""
        selector = {"matchLabels": {"kubernetes.io/metadata.name": self.namespace}}
        body = {
            "apiVersion": GROUP_VERSION,
            "kind": "ClusterAgentPolicy",
            "metadata": {"name": name, "labels": dict([SCOPE_LABEL])},
            "spec": {"mode": mode, "namespaceSelector": selector, **spec},
        }
        self.api.create(kube.path(GROUP_VERSION, "clusteragentpolicies"), body)
        self.policies.append(name)
        return name

    def agent_manifest(self, name: str, replicas: int = 2, prompt: str = "Be brief.") -> dict[str, Any]:
        return {
            "apiVersion": GROUP_VERSION,
            "kind": "AgentDeployment",
            "metadata": {"name": name, "namespace": self.namespace},
            "spec": {
                "model": "claude-sonnet-4",
                "systemPrompt": prompt,
                "replicas": replicas,
                "limits": LIMITS,
            },
        }

    def generated(self, selector: str = GENERATED_SELECTOR) -> list[str]:
        names: list[str] = []
        for plural in GENERATED_PLURALS:
            items = self.api.list_items(
                kube.path(ADMISSION, plural), label_selector=selector, metadata_only=True
            )
            names += [f"{plural}/{item['metadata']['name']}" for item in items]
        return sorted(names)

    def routed(self) -> bool:
        """Both webhooks carry the controller's matchConditions (the narrowing is in place)."""
        for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
            config = self.api.get(kube.path(ADMISSION, plural, self.webhook.registration_name))
            assert config is not None
            hooks = [h for h in config["webhooks"] if not h["name"].startswith("cluster-")]
            names = [c["name"] for h in hooks for c in h.get("matchConditions") or ()]
            if names != [WEBHOOK_CONDITION_NAME]:
                return False
        return True


def delete_generated(api: kube.Client) -> None:
    for plural in GENERATED_PLURALS:
        api.request("DELETE", kube.path(ADMISSION, plural), query={"labelSelector": GENERATED_SELECTOR})


@pytest.fixture
def stack(
    control_plane: ControlPlane,
    k8s_api: kube.Client,
    namespace: str,
    cluster_kubectl: Kubectl,
    redis_url: str,
    tmp_path: Path,
) -> Iterator[Stack]:
    label_namespace(k8s_api, namespace)
    (tmp_path / "webhook").mkdir()
    hook = start_webhook(control_plane, tmp_path / "webhook", f"agentops-native-{uuid.uuid4().hex[:8]}")
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    env.pop("ANTHROPIC_API_KEY", None)
    argv = controller_argv(
        namespace, redis_url, "--native-admission", "--webhook-configuration", hook.registration_name,
        "--metrics-bind-address", "127.0.0.1:0",
    )  # fmt: skip
    controller = ControllerProcess(argv, env, tmp_path / "controller.log")
    controller.start()
    stack = Stack(namespace, cluster_kubectl.in_namespace(namespace), k8s_api, hook, controller, [])
    try:
        yield stack
    finally:
        controller.stop()
        stop_webhook(hook, k8s_api)  # also unregisters it when a test killed the process
        for name in stack.policies:
            k8s_api.delete(kube.path(GROUP_VERSION, "clusteragentpolicies", name))
        delete_generated(k8s_api)
        print("--- controller log (tail) ---")
        print(controller.output()[-6000:])


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


def dry_run_replicas(stack: Stack, agent: str, replicas: int) -> str:
    """A dry-run merge patch of ``spec.replicas``: "" when allowed, else the API server's message."""
    path = kube.path(GROUP_VERSION, "agentdeployments", agent, namespace=stack.namespace)
    try:
        stack.api.request(
            "PATCH",
            path,
            {"spec": {"replicas": replicas}},
            query={"dryRun": "All"},
            content_type="application/merge-patch+json",
        )
    except kube.ApiError as exc:
        return exc.message
    return ""


def vap_denies(stack: Stack, agent: str, replicas: int, message: str) -> bool:
    """A dry-run replica patch is denied with ``message``, by a generated VAP (not the webhook)."""
    answer = dry_run_replicas(stack, agent, replicas)
    return message in answer and "ValidatingAdmissionPolicy 'agentops." in answer and "webhook" not in answer


def test_a_ceiling_edit_changes_the_in_process_verdict_within_seconds(stack: Stack) -> None:
    policy = stack.cluster_policy(unique("ceiling"), replicas={"max": 5})
    stack.kubectl("apply", "-f", "-", input=_yaml(stack.agent_manifest("agent")))
    denied_at_5 = f"denied request: spec.replicas: 5 exceeds 4 set by ClusterAgentPolicy/{policy}"
    in_process = f"ValidatingAdmissionPolicy 'agentops.cagpol.{policy}.deny'"
    eventually(
        "the generated VAP denies 7 (over 5)",
        lambda: vap_denies(
            stack, "agent", 7, f"spec.replicas: 7 exceeds 5 set by ClusterAgentPolicy/{policy}"
        ),
        within=30,
    )
    assert dry_run_replicas(stack, "agent", 5) == ""

    edited = time.monotonic()
    stack.api.merge_patch(
        kube.path(GROUP_VERSION, "clusteragentpolicies", policy), {"spec": {"replicas": {"max": 4}}}
    )

    def denied_at_new_ceiling() -> str | None:
        message = dry_run_replicas(stack, "agent", 5)
        return message if denied_at_5 in message else None

    message = eventually(
        "the in-process verdict follows the edit (5 now over 4)",
        denied_at_new_ceiling,
        within=10,
        interval=0.02,
    )
    latency = time.monotonic() - edited
    print(f"\nClusterAgentPolicy replicas.max edit -> in-process verdict: {latency:.2f} s")
    assert in_process in message, message
    assert "admission webhook" not in message
    assert latency < 5, f"the verdict changed {latency:.2f} s after the edit"

    # The controller's /metrics count the regenerations (one at start-up, one per edit at least)
    # and the objects kept, which are what the cluster holds.
    (address,) = eventually("the metrics address", lambda: LISTENING.findall(stack.controller.output()))
    # The verdict can follow the writes a moment before the regeneration records itself.
    regenerations = ("agentops_native_admission_regenerations_total", frozenset({("result", "ok")}))

    def counted() -> Samples | None:
        found = scrape(address)
        return found if found.get(regenerations, 0) >= 2 else None

    samples = eventually("two regenerations counted", counted)
    assert samples[regenerations] >= 2
    assert samples[("agentops_native_admission_regeneration_duration_seconds_count", frozenset())] >= 2
    kept = samples[("agentops_native_admission_generated_objects", frozenset())]
    assert kept == len(stack.generated()) > 0


def test_deleting_a_policy_deletes_what_was_generated_and_start_up_prunes_leftovers(stack: Stack) -> None:
    policy = stack.cluster_policy(unique("gone"), replicas={"max": 5}, prompts={"maxBytes": 100})
    own = source_selector("ClusterAgentPolicy", None, policy)
    wanted = {
        f"validatingadmissionpolicies/agentops.cagpol.{policy}.deny",
        f"validatingadmissionpolicybindings/agentops.cagpol.{policy}.deny",
    }
    eventually(
        "the policy's VAP and binding are generated", lambda: wanted <= set(stack.generated(own)), within=30
    )
    stack.api.delete(kube.path(GROUP_VERSION, "clusteragentpolicies", policy))
    eventually(
        "what was generated from the deleted policy is deleted", lambda: not stack.generated(own), within=30
    )
    assert "validatingadmissionpolicies/agentops.baseline.deny" in stack.generated()

    # A policy deleted while the controller was down leaves its objects behind: the next start prunes them.
    stack.controller.stop()
    ghost = unique("ghost")
    leftover = generate_for(
        cluster_policy(ghost, replicas={"max": 1}),
        PolicySet(),
        now=NOW,
        options=Options(namespaces=(stack.namespace,)),
    )
    for obj in leftover.objects():
        plural = (
            "validatingadmissionpolicies"
            if obj["kind"] == "ValidatingAdmissionPolicy"
            else GENERATED_PLURALS[0]
        )
        stack.api.create(kube.path(ADMISSION, plural), obj)
    ghost_selector = source_selector("ClusterAgentPolicy", None, ghost)
    assert len(stack.generated(ghost_selector)) == len(leftover.objects())
    stack.controller.start()
    eventually("the leftover is pruned at start-up", lambda: not stack.generated(ghost_selector), within=30)
    assert "validatingadmissionpolicies/agentops.baseline.deny" in stack.generated()


def test_uninstalling_the_webhooks_takes_what_was_generated_with_them(stack: Stack) -> None:
    """Every generated object is owned by the ValidatingWebhookConfiguration: deleting the two
    configurations (what ``kubectl delete -k`` and ``helm uninstall`` do) leaves nothing generated,
    with the controller still running, and registering them again generates everything again."""
    policy = stack.cluster_policy(unique("owned"), replicas={"max": 5})
    own = source_selector("ClusterAgentPolicy", None, policy)
    eventually("the policy's objects are generated", lambda: stack.generated(own), within=30)
    path = kube.path(ADMISSION, "validatingwebhookconfigurations", stack.webhook.registration_name)
    configuration = stack.api.get(path, metadata_only=True)
    assert configuration is not None
    owner = {"apiVersion": ADMISSION, "kind": "ValidatingWebhookConfiguration",
             "name": stack.webhook.registration_name, "uid": configuration["metadata"]["uid"]}  # fmt: skip

    (address,) = eventually("the metrics address", lambda: LISTENING.findall(stack.controller.output()))
    regenerations = ("agentops_native_admission_regenerations_total", frozenset({("result", "ok")}))
    kept: tuple[str, frozenset[tuple[str, str]]] = (
        "agentops_native_admission_generated_objects",
        frozenset(),
    )

    def regeneration_done() -> tuple[Samples, dict[str, list[dict[str, Any]]]] | None:
        # The objects are written one by one, and recorded once all are: the count is the signal.
        samples, found = scrape(address), owners(stack)
        return (samples, found) if samples.get(regenerations) and samples.get(kept) == len(found) else None

    samples, owned = eventually("the regeneration has written what it counts", regeneration_done)
    assert owned == {name: [owner] for name in owned}
    assert set(stack.generated(own)) <= owned.keys()
    before = samples[regenerations]
    for plural in ("mutatingwebhookconfigurations", "validatingwebhookconfigurations"):
        assert stack.api.delete(kube.path(ADMISSION, plural, stack.webhook.registration_name))

    def regenerated_with_nothing() -> bool:
        found = scrape(address)
        return found[regenerations] > before and found[kept] == 0

    # The controller saw the configuration go (its regeneration keeps nothing), and nothing it
    # generated is left, whether the garbage collector or the controller deleted it.
    eventually("the controller regenerates with no configuration", regenerated_with_nothing, within=30)
    eventually("nothing generated is left", lambda: stack.generated() == [], within=30)

    ca_bundle = (stack.webhook.cert_dir / "ca.crt").read_bytes()
    registration = configurations(
        ClientConfig(url=stack.webhook.url, ca_bundle=ca_bundle),
        name=stack.webhook.registration_name,
        scope_label=SCOPE_LABEL,
    )
    register(stack.api, registration)
    eventually("the policy's objects are generated again", lambda: stack.generated(own), within=30)
    eventually("the webhooks are narrowed again", stack.routed, within=30)
    again = stack.api.get(path, metadata_only=True)
    assert again is not None
    assert again["metadata"]["uid"] != owner["uid"]
    assert owners(stack) == {name: [{**owner, "uid": again["metadata"]["uid"]}] for name in stack.generated()}


def owners(stack: Stack) -> dict[str, list[dict[str, Any]]]:
    """Each generated object's owner references."""
    found: dict[str, list[dict[str, Any]]] = {}
    for plural in GENERATED_PLURALS:
        for item in stack.api.list_items(
            kube.path(ADMISSION, plural), label_selector=GENERATED_SELECTOR, metadata_only=True
        ):
            refs = item["metadata"].get("ownerReferences") or []
            found[f"{plural}/{item['metadata']['name']}"] = [
                {key: ref[key] for key in ("apiVersion", "kind", "name", "uid")} for ref in refs
            ]
    return found


def test_with_the_webhook_killed_replicas_are_still_judged_and_the_rest_fails_closed(stack: Stack) -> None:
    policy = stack.cluster_policy(unique("down"), replicas={"max": 5})
    stack.kubectl("apply", "-f", "-", input=_yaml(stack.agent_manifest("agent")))
    eventually("both webhooks are narrowed", stack.routed, within=30)
    eventually(
        "the generated VAP denies 7 (over 5)",
        lambda: vap_denies(
            stack, "agent", 7, f"spec.replicas: 7 exceeds 5 set by ClusterAgentPolicy/{policy}"
        ),
        within=30,
    )
    stack.webhook.process.kill()  # SIGKILL: the configurations stay registered, pointing at nothing
    stack.webhook.process.wait(timeout=10)
    kubectl = stack.kubectl

    # The API server loads configuration changes through a watch: wait for it to route around the webhook.
    eventually(
        "kubectl scale within the ceiling succeeds without the webhook",
        lambda: kubectl("scale", "agdep/agent", "--replicas=4", check=False).returncode == 0,
        within=30,
    )
    over = kubectl("scale", "agdep/agent", "--replicas=9", check=False)
    assert over.returncode != 0
    assert f"denied request: spec.replicas: 9 exceeds 5 set by ClusterAgentPolicy/{policy}" in over.stderr, (
        over.stderr
    )
    assert "failed calling webhook" not in over.stderr

    kubectl("patch", "agdep/agent", "--type=merge", "-p", '{"spec":{"replicas":3}}')
    over = kubectl("patch", "agdep/agent", "--type=merge", "-p", '{"spec":{"replicas":8}}', check=False)
    assert over.returncode != 0
    assert f"denied request: spec.replicas: 8 exceeds 5 set by ClusterAgentPolicy/{policy}" in over.stderr, (
        over.stderr
    )
    assert kubectl.json("get", "agdep/agent")["spec"]["replicas"] == 3

    prompt = kubectl(
        "patch", "agdep/agent", "--type=merge", "-p", '{"spec":{"systemPrompt":"Be terse."}}', check=False
    )
    assert prompt.returncode != 0
    assert f'failed calling webhook "{MUTATE_HOOK}"' in prompt.stderr, prompt.stderr
    assert kubectl.json("get", "agdep/agent")["spec"]["systemPrompt"] == "Be brief."

    create = kubectl(
        "apply", "-f", "-", input=_yaml(stack.agent_manifest("newcomer", replicas=1)), check=False
    )
    assert create.returncode != 0
    assert f'failed calling webhook "{MUTATE_HOOK}"' in create.stderr, create.stderr


def test_routing_follows_an_exception_to_its_expiry_and_survives_resets(stack: Stack) -> None:
    policy = stack.cluster_policy(unique("excusable"), replicas={"max": 5})
    stack.kubectl("apply", "-f", "-", input=_yaml(stack.agent_manifest("excused")))
    over = f"spec.replicas: 7 exceeds 5 set by ClusterAgentPolicy/{policy}"
    eventually(
        "the generated VAP denies 7 (over 5)", lambda: vap_denies(stack, "excused", 7, over), within=30
    )

    # An exception routes its agent to the webhook, which honours it; at its expiry the VAPs take over.
    expires = datetime.now(UTC) + timedelta(seconds=8)
    exception = {
        "apiVersion": GROUP_VERSION,
        "kind": "AgentPolicyException",
        "metadata": {"name": "more-replicas", "namespace": stack.namespace},
        "spec": {
            "agents": ["excused"],
            "policies": [{"kind": "ClusterAgentPolicy", "name": policy, "rules": ["replicas.max"]}],
            "expiresAt": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "reason": "TICKET-9: a load test needs more replicas for a few seconds",
        },
    }
    stack.api.create(kube.path(GROUP_VERSION, "agentpolicyexceptions", namespace=stack.namespace), exception)
    eventually(
        "the excused agent's replica patch is left to the webhook",
        lambda: dry_run_replicas(stack, "excused", 7) == "",
        within=6,
    )
    assert datetime.now(UTC) < expires, "too slow to see the exception in force"
    eventually(
        "after the expiry, the VAPs judge the agent again",
        lambda: vap_denies(stack, "excused", 7, over),
        within=20,
    )

    # Someone else's changes are undone: a re-registration (a re-apply of the manifests) resets
    # the webhooks' matchConditions, and a generated object is deleted by hand.
    ca_bundle = (stack.webhook.cert_dir / "ca.crt").read_bytes()
    registration = configurations(
        ClientConfig(url=stack.webhook.url, ca_bundle=ca_bundle),
        name=stack.webhook.registration_name,
        scope_label=SCOPE_LABEL,
    )
    assert stack.routed()
    register(stack.api, registration)
    baseline = kube.path(ADMISSION, "validatingadmissionpolicies", "agentops.baseline.deny")
    assert stack.api.delete(baseline)
    eventually("the webhooks are narrowed again", stack.routed, within=10)
    eventually("the deleted VAP is applied again", lambda: stack.api.get(baseline) is not None, within=10)


def test_the_full_stack_says_each_message_once(stack: Stack) -> None:
    """Webhook and VAPs both in place: a request is judged by exactly one of them."""
    ceiling = stack.cluster_policy(unique("once"), replicas={"max": 5}, prompts={"maxBytes": 40})
    advice = stack.cluster_policy(unique("advice"), mode="Warn", replicas={"max": 3})
    kubectl = stack.kubectl
    kubectl("apply", "-f", "-", input=_yaml(stack.agent_manifest("agent")))
    eventually("both webhooks are narrowed", stack.routed, within=30)
    over = f"spec.replicas: 7 exceeds 5 set by ClusterAgentPolicy/{ceiling}"
    warned = f"spec.replicas: 4 exceeds 3 set by ClusterAgentPolicy/{advice}"
    big_prompt = "x" * 41
    too_big = f"spec.systemPrompt: 41 bytes exceeds 40 set by ClusterAgentPolicy/{ceiling}"

    def patch(spec: dict[str, Any]) -> subprocess.CompletedProcess[str]:
        return kubectl(
            "patch",
            "agdep/agent",
            "--type=merge",
            "--dry-run=server",
            "-p",
            json.dumps({"spec": spec}),
            check=False,
        )

    eventually("the VAPs judge a replica patch", lambda: over in patch({"replicas": 7}).stderr, within=30)

    # A replica patch: the VAPs alone.
    said_once(patch({"replicas": 7}).stderr, [over], by_vaps=True)
    said_once(patch({"replicas": 4}).stderr, [warned], by_vaps=True)

    # A prompt change: the webhook alone, every message of the request in its wording.
    out = patch({"replicas": 7, "systemPrompt": big_prompt}).stderr
    said_once(out, [over, too_big], by_vaps=False)
    assert 'admission webhook "validate.agentops.agentops.io" denied' in out, out
    said_once(patch({"replicas": 4, "systemPrompt": "Be terse."}).stderr, [warned], by_vaps=False)

    # A create: mutated by the webhook, judged by the VAPs.
    created = kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        input=_yaml(stack.agent_manifest("newcomer", replicas=7)),
        check=False,
    )
    assert created.returncode != 0
    said_once(created.stderr, [over], by_vaps=True)


def said_once(output: str, messages: list[str], *, by_vaps: bool) -> None:
    """Each message exactly once in kubectl's output, in the wording of one evaluator only."""
    for message in messages:
        assert output.count(message) == 1, output
    if by_vaps:
        assert "ValidatingAdmissionPolicy" in output, output
        assert "admission webhook" not in output, output
    else:
        assert "ValidatingAdmissionPolicy" not in output, output


def _yaml(obj: dict[str, Any]) -> str:
    return json.dumps(obj)  # JSON is YAML
