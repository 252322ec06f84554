"""The prompt audit trail's backstop (``deploy/manifests/audit-trail-admission-policy.yaml``) in a
real API server, with real kubectl and distinct users through impersonation (``--as``).

The shipped ValidatingAdmissionPolicy is installed as it is; only its binding is narrowed to this
module's namespaces (a label), because the session's other suites create agents with no webhook
at all, which the backstop would rightly refuse.

- With no webhook: a create (or prompt change) whose ``prompt-changed-by`` is not the requesting
  user is denied with the policy's message, one stamped with the requesting user passes, an update
  that rewrites a stamp without changing the prompt is denied, and status and scale writes are not
  gated.
- With the webhook registered and running: honest creates, prompt changes, other updates,
  server-side applies, replaces, scales and ``agentops rollback`` all pass (the backstop agrees
  with what the webhook stamps).  After the webhook stops and its configurations are deleted,
  forged stamps are still denied.
- As installed by ``kubectl apply -k deploy/`` on a control plane of its own, with the webhook
  configurations deleted: in force as shipped, and not in ``agentops-system``.
"""

from __future__ import annotations

import ast
import copy
import json
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

import kube
from contracts.resources import (
    CHANGE_REASON,
    PROMPT_CHANGED_BY,
    PROMPT_CHANGED_BY_GROUPS,
    PROMPT_CHANGED_BY_UID,
    PROMPT_PREVIOUS_SHA256,
    PROMPT_SHA256,
    PROMPT_STAMPS,
    prompt_sha256,
)
from localstack.controlplane import ControlPlane
from tests.deploy.render import DEPLOY, NAMESPACE, REPO
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually
from tests.webhook.conftest import WebhookProcess, start_webhook, stop_webhook

pytestmark = pytest.mark.cluster

MANIFEST = DEPLOY / "manifests" / "audit-trail-admission-policy.yaml"
BACKSTOP_LABEL = ("agentops.agentops.io/test-audit-trail", "true")
WEBHOOK_LABEL = ("agentops.agentops.io/test-audit-trail-webhook", "true")
#: Impersonated users get their rights from this group (a Role in each test's namespace).
EDITORS = "agent-editors"
ALICE, BOB, CAROL = "alice", "bob", "carol"
LIMITS = {"maxTokensPerCall": 1000, "maxConcurrentTasks": 2, "timeoutSeconds": 30}
#: A reference to ``spec.variables`` outside a string literal (a literal is matched whole first).
VARIABLE = re.compile(r"""(?P<literal>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')|(?<![\w.])variables\.""")
#: A CEL list literal of two or more strings: the stamp keys the backstop iterates over.
STAMP_KEYS = re.compile(r"\[\s*'[^']*'(?:\s*,\s*'[^']*')+\s*\]")


def shipped() -> tuple[dict[str, Any], dict[str, Any]]:
    policy, binding = (d for d in yaml.safe_load_all(MANIFEST.read_text()) if d)
    assert (policy["kind"], binding["kind"]) == (
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
    )
    return policy, binding


# --- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def backstop(cluster_kubectl: Kubectl) -> Iterator[str]:
    """The shipped policy, bound to namespaces labelled :data:`BACKSTOP_LABEL`; its name."""
    policy, binding = (copy.deepcopy(d) for d in shipped())
    name = f"{policy['metadata']['name']}-{uuid.uuid4().hex[:6]}"
    policy["metadata"]["name"] = binding["metadata"]["name"] = binding["spec"]["policyName"] = name
    selector = binding["spec"]["matchResources"]["namespaceSelector"]
    selector["matchLabels"] = {BACKSTOP_LABEL[0]: BACKSTOP_LABEL[1]}
    cluster_kubectl("apply", "-f", "-", input=yaml.safe_dump_all([policy, binding]))
    try:
        yield name
    finally:
        cluster_kubectl("delete", "validatingadmissionpolicybinding,validatingadmissionpolicy", name)


def label(kubectl: Kubectl, namespace: str, *labels: tuple[str, str]) -> None:
    kubectl("label", "namespace", namespace, *(f"{k}={v}" for k, v in labels), "--overwrite", namespace="")


def grant_editors(kubectl: Kubectl) -> None:
    """What the impersonated users may do in the namespace (RBAC, not system:masters: their groups
    are then exactly ``agent-editors,system:authenticated``)."""
    rbac = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": EDITORS},
            "rules": [
                {
                    "apiGroups": ["agentops.agentops.io"],
                    "resources": ["agentdeployments", "agentdeployments/scale", "agentdeployments/status"],
                    "verbs": ["get", "list", "watch", "create", "update", "patch"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": EDITORS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": EDITORS},
            "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": EDITORS}],
        },
    ]
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(rbac))


def wait_until_gated(kubectl: Kubectl, policy: str) -> None:
    """Until the API server applies the policy to this namespace (policies and bindings reach its
    admission plugin asynchronously): an unstamped dry-run create is refused by it."""

    def refused() -> bool:
        result = kubectl("create", "--dry-run=server", "-f", "-", input=manifest("probe"), check=False)
        assert f"ValidatingAdmissionPolicy '{policy}'" in result.stderr, result.stdout + result.stderr
        return True

    eventually(f"{policy} to gate namespace {kubectl.namespace}", refused, within=30)


@pytest.fixture
def gated(kubectl: Kubectl, namespace: str, backstop: str) -> Kubectl:
    """The test's namespace under the backstop alone (no webhook is registered for it)."""
    grant_editors(kubectl)
    label(kubectl, namespace, BACKSTOP_LABEL)
    wait_until_gated(kubectl, backstop)
    return kubectl


@pytest.fixture(scope="module")
def webhook(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory, k8s_api: kube.Client
) -> Iterator[WebhookProcess]:
    workdir = tmp_path_factory.mktemp("audit-trail-webhook")
    hook = start_webhook(
        control_plane, workdir, f"agentops-audit-{uuid.uuid4().hex[:8]}", scope_label=WEBHOOK_LABEL
    )
    try:
        yield hook
    finally:
        stop_webhook(hook, k8s_api)


def wait_until_stamped(kubectl: Kubectl) -> None:
    """Until the webhook's registration reaches the API server: a dry-run create comes back stamped."""

    def stamped() -> bool:
        result = kubectl("create", "--dry-run=server", "-o", "json", "-f", "-", input=manifest("probe"))
        return PROMPT_SHA256 in json.loads(result.stdout)["metadata"].get("annotations", {})

    eventually(f"the webhook to stamp agents in {kubectl.namespace}", stamped, within=30)


@pytest.fixture
def hooked(gated: Kubectl, webhook: WebhookProcess) -> Kubectl:
    """The test's namespace under the backstop and the running webhook."""
    assert gated.namespace is not None
    label(gated, gated.namespace, WEBHOOK_LABEL)
    wait_until_stamped(gated)
    return gated


# --- helpers ---------------------------------------------------------------------------------------


def manifest(
    name: str, prompt: str = "You help.", annotations: dict[str, str] | None = None, **spec: Any
) -> str:
    body: dict[str, Any] = {"model": "claude-sonnet-4-20250514", "systemPrompt": prompt, "limits": LIMITS}
    body.update(spec)
    meta: dict[str, Any] = {"name": name}
    if annotations:
        meta["annotations"] = annotations
    return yaml.safe_dump(
        {
            "apiVersion": "agentops.agentops.io/v1alpha1",
            "kind": "AgentDeployment",
            "metadata": meta,
            "spec": body,
        }
    )


def groups_of(kubectl: Kubectl, user: str) -> str:
    """The user's groups as the API server sees them (and the webhook stamps them), joined with ","."""
    review = kubectl.json("auth", "whoami", **as_(user))
    return ",".join(review["status"]["userInfo"]["groups"])


def whoami(kubectl: Kubectl) -> dict[str, Any]:
    info: dict[str, Any] = kubectl.json("auth", "whoami")["status"]["userInfo"]
    return info


def own_stamps(kubectl: Kubectl, user: str) -> dict[str, str]:
    """The identity stamps an honest client writes for itself (what the webhook would write)."""
    return {PROMPT_CHANGED_BY: user, PROMPT_CHANGED_BY_GROUPS: groups_of(kubectl, user)}


def as_(user: str) -> dict[str, Any]:
    """kubectl's impersonation of ``user``, a member of :data:`EDITORS`."""
    return {"as_user": user, "as_groups": [EDITORS]}


def create(
    kubectl: Kubectl,
    name: str,
    annotations: dict[str, str] | None = None,
    *flags: str,
    user: str = ALICE,
    check: bool = True,
) -> subprocess.CompletedProcess[str]:
    """``kubectl create`` of an agent as ``user`` (``flags``: e.g. ``--as-uid``)."""
    body = manifest(name, annotations=annotations)
    return kubectl("create", *flags, "-f", "-", input=body, check=check, **as_(user))


def stamps(kubectl: Kubectl, name: str) -> dict[str, str]:
    annotations = kubectl.json("get", "agdep", name)["metadata"].get("annotations", {})
    return {k: v for k, v in annotations.items() if k in PROMPT_STAMPS}


def denied(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0, f"expected a denial, got: {result.stdout}"
    return result.stderr


def by_message(user: str, found: str) -> str:
    return (
        f"metadata.annotations[{PROMPT_CHANGED_BY}] is {found}: prompt-changed-by must be the requesting "
        f"user ({user}), set by the agentops webhook on every create and change of spec.systemPrompt "
        '(if the webhook is not registered or not running, see "When the webhook is unavailable" in '
        "docs/webhook.md)"
    )


def rewrite_message(key: str, found: str, stored: str) -> str:
    return (
        f"metadata.annotations[{key}] is {found}, stored {stored}: spec.systemPrompt did not change, so "
        "the prompt audit stamps must stay as stored; they record who changed the prompt last and cannot "
        "be rewritten"
    )


def merge(patch: dict[str, Any]) -> tuple[str, ...]:
    return ("--type=merge", "-p", json.dumps(patch))


# --- the policy as shipped -------------------------------------------------------------------------


def test_the_policy_declares_no_variables() -> None:
    policy, _ = shipped()
    assert "variables" not in policy["spec"], (
        "spec.variables crash Kubernetes < 1.36 API servers (kubernetes/kubernetes#135757: concurrent "
        "map read and map write in DeclTypeProvider.FindStructFieldType); inline every term instead"
    )
    for validation in policy["spec"]["validations"]:
        for key in ("expression", "messageExpression"):
            references = [m for m in VARIABLE.finditer(validation.get(key, "")) if m["literal"] is None]
            assert not references, (
                f"{validation[key]!r} refers to spec.variables, which the policy must not declare "
                "(kubernetes/kubernetes#135757)"
            )


def test_the_policy_compares_every_prompt_stamp_and_gates_no_subresource() -> None:
    policy, binding = shipped()
    *_, unchanged = policy["spec"]["validations"]
    # The list of stamps compared when the prompt did not change, in the check and in its message.
    for expression in (unchanged["expression"], unchanged["messageExpression"]):
        (keys,) = STAMP_KEYS.findall(expression)
        assert ast.literal_eval(keys) == list(PROMPT_STAMPS)
    for key in (PROMPT_CHANGED_BY, PROMPT_CHANGED_BY_UID, PROMPT_CHANGED_BY_GROUPS):
        assert any(f"[?'{key}']" in v["expression"] for v in policy["spec"]["validations"]), key
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    # Not agentdeployments/status nor /scale: the controller's status writes and every scale pass.
    assert rule["resources"] == ["agentdeployments"]
    assert rule["operations"] == ["CREATE", "UPDATE"]
    assert policy["spec"]["failurePolicy"] == "Fail"
    assert binding["spec"]["validationActions"] == ["Deny"]


def test_the_api_server_type_checks_the_policy_without_warnings(
    backstop: str, cluster_kubectl: Kubectl
) -> None:
    def checked() -> dict[str, Any]:
        policy = cluster_kubectl.json("get", "validatingadmissionpolicy", backstop)
        status: dict[str, Any] = policy.get("status", {})
        assert status.get("observedGeneration") == policy["metadata"]["generation"], status
        return status

    status = eventually("the API server to type-check the policy", checked, within=30)
    assert status.get("typeChecking", {}).get("expressionWarnings") is None, status


# --- the backstop alone ----------------------------------------------------------------------------


def test_without_the_webhook_a_create_naming_someone_else_is_denied(gated: Kubectl, backstop: str) -> None:
    honest = own_stamps(gated, ALICE)
    forged = {**honest, PROMPT_CHANGED_BY: BOB}
    stderr = denied(create(gated, "forged", forged, check=False))
    assert f"ValidatingAdmissionPolicy '{backstop}' with binding '{backstop}' denied request: " in stderr
    assert by_message(ALICE, f'"{BOB}"') in stderr

    unstamped = denied(create(gated, "unstamped", check=False))
    assert by_message(ALICE, "absent") in unstamped

    wrong_groups = {**honest, PROMPT_CHANGED_BY_GROUPS: f"{EDITORS},system:masters"}
    stderr = denied(create(gated, "groups", wrong_groups, check=False))
    assert (
        f'metadata.annotations[{PROMPT_CHANGED_BY_GROUPS}] is "{EDITORS},system:masters": '
        "prompt-changed-by-groups must be the requesting user's groups joined with "
        f'"," ({honest[PROMPT_CHANGED_BY_GROUPS]})'
    ) in stderr

    # The request has a uid the stamps leave out.
    stderr = denied(create(gated, "uid", honest, "--as-uid=uid-alice", check=False))
    assert (
        f"metadata.annotations[{PROMPT_CHANGED_BY_UID}] is absent: prompt-changed-by-uid must be the "
        "requesting user's uid (uid-alice)"
    ) in stderr
    assert gated.json("get", "agdep")["items"] == []


def test_without_the_webhook_a_create_stamped_with_the_requesting_user_passes(gated: Kubectl) -> None:
    honest = own_stamps(gated, ALICE)
    create(gated, "honest", honest)
    with_uid = {**honest, PROMPT_CHANGED_BY_UID: "uid-alice"}
    create(gated, "with-uid", with_uid, "--as-uid=uid-alice")
    # Stored exactly as sent: no webhook touched them (it would have added the sha256 stamp).
    assert stamps(gated, "honest") == honest
    assert stamps(gated, "with-uid") == with_uid


def test_without_the_webhook_history_cannot_be_rewritten(gated: Kubectl) -> None:
    alices = own_stamps(gated, ALICE)
    recorded = {**alices, PROMPT_SHA256: prompt_sha256("You help.")}
    create(gated, "agent", recorded)

    stderr = denied(
        gated(
            "annotate", "agdep", "agent", f"{PROMPT_CHANGED_BY}={BOB}", "--overwrite", check=False, **as_(BOB)
        )
    )
    assert rewrite_message(PROMPT_CHANGED_BY, f'"{BOB}"', f'"{ALICE}"') in stderr
    stderr = denied(
        gated("annotate", "agdep", "agent", f"{PROMPT_CHANGED_BY_GROUPS}-", check=False, **as_(BOB))
    )
    assert (
        rewrite_message(PROMPT_CHANGED_BY_GROUPS, "absent", f'"{alices[PROMPT_CHANGED_BY_GROUPS]}"') in stderr
    )
    stderr = denied(
        gated("annotate", "agdep", "agent", f"{PROMPT_PREVIOUS_SHA256}={'0' * 64}", check=False, **as_(BOB))
    )
    assert rewrite_message(PROMPT_PREVIOUS_SHA256, f'"{"0" * 64}"', "absent") in stderr
    # A prompt change under Alice's name, by Bob.
    stderr = denied(
        gated(
            "patch", "agdep", "agent", *merge({"spec": {"systemPrompt": "Bob's."}}), check=False, **as_(BOB)
        )
    )
    assert by_message(BOB, f'"{ALICE}"') in stderr
    assert stamps(gated, "agent") == recorded

    # What does not touch the record goes through.
    gated(
        "patch",
        "agdep",
        "agent",
        *merge({"spec": {"replicas": 2}, "metadata": {"labels": {"team": "a"}}}),
        **as_(BOB),
    )
    gated("annotate", "agdep", "agent", f"{CHANGE_REASON}=tidy", **as_(BOB))
    assert stamps(gated, "agent") == recorded
    # A prompt change recorded under the name of whoever makes it (the webhook would do this).
    bobs = own_stamps(gated, BOB)
    gated(
        "patch",
        "agdep",
        "agent",
        *merge({"spec": {"systemPrompt": "Bob's."}, "metadata": {"annotations": bobs}}),
        **as_(BOB),
    )
    assert stamps(gated, "agent") == {**recorded, **bobs}


def test_status_and_scale_writes_are_not_gated(kubectl: Kubectl, namespace: str, backstop: str) -> None:
    """Even on an agent whose record the backstop would refuse (written before it was in force)."""
    grant_editors(kubectl)
    forged = {PROMPT_CHANGED_BY: "mallory"}
    kubectl("create", "-f", "-", input=manifest("legacy", annotations=forged))
    label(kubectl, namespace, BACKSTOP_LABEL)
    wait_until_gated(kubectl, backstop)

    # The controller's status writes (any identity) and scales by anyone.
    kubectl("patch", "agdep", "legacy", "--subresource=status", *merge({"status": {"readyReplicas": 0}}))
    kubectl(
        "patch", "agdep", "legacy", "--subresource=status", *merge({"status": {"replicas": 1}}), **as_(BOB)
    )
    kubectl("scale", "agdep", "legacy", "--replicas=3", **as_(BOB))
    kubectl(
        "patch", "agdep", "legacy", "--subresource=scale", *merge({"spec": {"replicas": 0}}), **as_(CAROL)
    )
    stored = kubectl.json("get", "agdep", "legacy")
    assert stored["status"]["replicas"] == 1
    assert stored["spec"].get("replicas", 0) == 0
    # Metadata-only writes (kopf's finalizer) keep the record, so they pass too...
    kubectl(
        "patch", "agdep", "legacy", *merge({"metadata": {"finalizers": ["example.com/test"]}}), **as_(BOB)
    )
    kubectl("patch", "agdep", "legacy", *merge({"metadata": {"finalizers": None}}), **as_(BOB))
    # ...while the record itself stays what it was.
    stderr = denied(kubectl("annotate", "agdep", "legacy", f"{PROMPT_CHANGED_BY}-", check=False, **as_(BOB)))
    assert rewrite_message(PROMPT_CHANGED_BY, "absent", '"mallory"') in stderr


# --- with the webhook --------------------------------------------------------------------------------


def test_through_the_webhook_every_honest_change_passes_the_backstop(
    hooked: Kubectl, cluster_kubectl: Kubectl
) -> None:
    kubectl = hooked
    alices = own_stamps(kubectl, ALICE)

    kubectl("apply", "-f", "-", input=manifest("agent", prompt="First."), **as_(ALICE))
    first = stamps(kubectl, "agent")
    assert {k: first[k] for k in alices} == alices
    assert first[PROMPT_SHA256] == prompt_sha256("First.")
    # A client's forged stamps are replaced by the webhook before the backstop judges them.
    forged = {PROMPT_CHANGED_BY: "mallory", PROMPT_CHANGED_BY_GROUPS: "system:masters"}
    create(kubectl, "forged", forged)
    assert {k: stamps(kubectl, "forged")[k] for k in alices} == alices
    # A requester with a uid.
    create(kubectl, "carols", None, "--as-uid=uid-carol", user=CAROL)
    assert stamps(kubectl, "carols")[PROMPT_CHANGED_BY_UID] == "uid-carol"

    # Bob changes the prompt: his record, Alice's hash as the previous one.
    kubectl("patch", "agdep", "agent", *merge({"spec": {"systemPrompt": "Second."}}), **as_(BOB))
    second = stamps(kubectl, "agent")
    assert second[PROMPT_CHANGED_BY] == BOB
    assert second[PROMPT_PREVIOUS_SHA256] == first[PROMPT_SHA256]

    # Carol changes everything but the prompt, every way kubectl can: the record stays Bob's.
    kubectl("patch", "agdep", "agent", *merge({"spec": {"replicas": 2}}), **as_(CAROL))
    kubectl("scale", "agdep", "agent", "--replicas=3", **as_(CAROL))
    # An edit of the record itself: the webhook puts the stored one back, which then passes.
    kubectl("annotate", "agdep", "agent", f"{PROMPT_CHANGED_BY}=carol", "--overwrite", **as_(CAROL))
    stripped = kubectl.json("get", "agdep", "agent")
    stripped["metadata"]["annotations"] = {}
    stripped["spec"]["replicas"] = 4
    kubectl("replace", "-f", "-", input=json.dumps(stripped), **as_(CAROL))
    # A server-side apply that leaves the stamps out removes them; the webhook puts them back.
    kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        "-f",
        "-",
        input=manifest("agent", prompt="Second.", replicas=5),
        **as_(CAROL),
    )
    kubectl("patch", "agdep", "agent", "--subresource=status", *merge({"status": {"replicas": 5}}))
    assert stamps(kubectl, "agent") == second
    assert kubectl.json("get", "agdep", "agent")["spec"]["replicas"] == 5

    # `agentops rollback` to Alice's prompt (the revision as the controller records it).
    revision = {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPromptRevision",
        "metadata": {"name": "agent-r1", "labels": {"agentops.agentops.io/agent": "agent"}},
        "spec": {
            "agent": "agent",
            "revision": 1,
            "prompt": "First.",
            "sha256": prompt_sha256("First."),
            "author": {"username": ALICE},
            "time": "2026-01-01T00:00:00Z",
        },
    }
    kubectl("create", "-f", "-", input=yaml.safe_dump(revision))
    rollback = subprocess.run(
        [sys.executable, "-m", "agentops", "rollback", "agent", "--to", "1",
         "--kubeconfig", str(cluster_kubectl.kubeconfig), "--namespace", str(kubectl.namespace)],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
    )  # fmt: skip
    assert rollback.returncode == 0, rollback.stdout + rollback.stderr
    admin = whoami(cluster_kubectl)
    rolled = kubectl.json("get", "agdep", "agent")
    assert rolled["spec"]["systemPrompt"] == "First."
    annotations = rolled["metadata"]["annotations"]
    assert annotations[PROMPT_CHANGED_BY] == admin["username"]
    assert annotations[PROMPT_CHANGED_BY_GROUPS] == ",".join(admin["groups"])
    assert annotations[PROMPT_PREVIOUS_SHA256] == second[PROMPT_SHA256]
    assert annotations[CHANGE_REASON] == "rollback to r1"


def test_with_the_webhook_stopped_and_unregistered_forged_stamps_are_still_denied(
    gated: Kubectl, control_plane: ControlPlane, k8s_api: kube.Client, tmp_path: Path
) -> None:
    kubectl = gated
    assert kubectl.namespace is not None
    scope = (WEBHOOK_LABEL[0], uuid.uuid4().hex[:8])  # this test's own webhook, nobody else's
    hook = start_webhook(control_plane, tmp_path, f"agentops-audit-{scope[1]}", scope_label=scope)
    try:
        label(kubectl, kubectl.namespace, scope)
        wait_until_stamped(kubectl)
        create(kubectl, "agent")
        recorded = stamps(kubectl, "agent")
        assert recorded[PROMPT_CHANGED_BY] == ALICE
    finally:
        stop_webhook(hook, k8s_api)  # ends the process and deletes both configurations
    for kind in ("mutatingwebhookconfiguration", "validatingwebhookconfiguration"):
        assert kubectl("get", kind, hook.registration_name, check=False, namespace="").returncode != 0

    def ungated() -> bool:  # the deletion has reached the API server: a plain update goes through
        kubectl("patch", "agdep", "agent", "--dry-run=server", *merge({"spec": {"replicas": 2}}))
        return True

    eventually("the API server to stop calling the deleted webhook", ungated, within=30)
    kubectl("patch", "agdep", "agent", *merge({"spec": {"replicas": 2}}), **as_(BOB))

    forged = {**own_stamps(kubectl, BOB), PROMPT_CHANGED_BY: ALICE}
    stderr = denied(create(kubectl, "forged", forged, user=BOB, check=False))
    assert by_message(BOB, f'"{ALICE}"') in stderr
    stderr = denied(
        kubectl(
            "annotate", "agdep", "agent", f"{PROMPT_CHANGED_BY}={BOB}", "--overwrite", check=False, **as_(BOB)
        )
    )
    assert rewrite_message(PROMPT_CHANGED_BY, f'"{BOB}"', f'"{ALICE}"') in stderr
    stderr = denied(
        kubectl(
            "patch", "agdep", "agent", *merge({"spec": {"systemPrompt": "Bob's."}}), check=False, **as_(BOB)
        )
    )
    assert by_message(BOB, f'"{ALICE}"') in stderr
    assert stamps(kubectl, "agent") == recorded


# --- as installed --------------------------------------------------------------------------------


def test_installed_by_kubectl_apply_k_it_holds_with_the_webhook_configurations_deleted(
    fresh_cluster: Kubectl,
) -> None:
    """The base as shipped, on a control plane of its own (no webhook runs there), after the
    recovery step that deletes both webhook configurations."""
    cluster = fresh_cluster
    cluster("apply", "-k", str(DEPLOY))
    cluster("delete", "mutatingwebhookconfiguration,validatingwebhookconfiguration", "agentops-admission")
    cluster("create", "namespace", "team-a")
    team, system = cluster.in_namespace("team-a"), cluster.in_namespace(NAMESPACE)
    admin = whoami(cluster)

    def refused_by_the_backstop() -> str:
        result = team("create", "--dry-run=server", "-f", "-", input=manifest("unstamped"), check=False)
        assert "ValidatingAdmissionPolicy 'agentops-audit-trail'" in result.stderr, (
            result.stdout + result.stderr
        )
        return result.stderr

    stderr = eventually("the shipped policy to be in force", refused_by_the_backstop, within=30)
    assert by_message(admin["username"], "absent") in stderr
    # Its own requester's record passes; the system namespace is not gated (as by the webhooks).
    honest = {PROMPT_CHANGED_BY: admin["username"], PROMPT_CHANGED_BY_GROUPS: ",".join(admin["groups"])}
    team("create", "-f", "-", input=manifest("honest", annotations=honest))
    system("create", "-f", "-", input=manifest("unstamped"))
