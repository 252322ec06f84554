"""``agentops uninstall`` on the real control plane, with no controller running: what it deletes,
what it releases, and what it never touches.  (With ``--crds``, on a real node after ``helm
uninstall``: tests/cluster/test_uninstall.py.)"""

from __future__ import annotations

import functools
import json
import subprocess
import sys
from datetime import UTC, datetime
from typing import Any

import pytest

import kube
from agentops import uninstall_cmd
from contracts.resources import API_VERSION, CONTROLLER_FINALIZER, ClusterAgentPolicy
from controller import native as controller_native
from localstack.controlplane import ControlPlane
from policies.native import GENERATED_SELECTOR, WEBHOOK_CONDITION_NAME, Options, generate
from policies.review import PolicySet
from tests.support.kubectl import Kubectl
from tests.support.waiting import eventually
from webhook.registration import ClientConfig, configurations, register

OTHER_FINALIZER = "example.com/keep"


def agentops(control_plane: ControlPlane, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentops", "uninstall", *args, "--kubeconfig", str(control_plane.kubeconfig)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def apply(kubectl: Kubectl, obj: dict[str, Any]) -> None:
    kubectl("apply", "-f", "-", input=json.dumps(obj))


def held(kind: str, name: str, finalizers: list[str], spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "metadata": {"name": name, "finalizers": finalizers},
        "spec": spec,
    }


AGENT_SPEC = {
    "model": "claude-sonnet-4-20250514",
    "systemPrompt": "You answer.",
    "limits": {"maxTokensPerCall": 1000, "timeoutSeconds": 30, "maxConcurrentTasks": 1},
}
PIPELINE_SPEC = {"steps": [{"name": "one", "agentDeployment": "held", "inputs": {"prompt": "hello"}}]}


def test_releases_what_no_controller_finishes_and_nothing_else(
    control_plane: ControlPlane, kubectl: Kubectl, namespace: str
) -> None:
    apply(kubectl, held("AgentDeployment", "held", [CONTROLLER_FINALIZER], AGENT_SPEC))
    apply(kubectl, held("AgentPipeline", "held", [CONTROLLER_FINALIZER], PIPELINE_SPEC))
    apply(kubectl, held("AgentDeployment", "other", [OTHER_FINALIZER, CONTROLLER_FINALIZER], AGENT_SPEC))

    done = agentops(control_plane, "-n", namespace, "--wait", "1")

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"deleted 1 agentpipelines in namespace {namespace}" in lines
    assert f"deleted 2 agentdeployments in namespace {namespace}" in lines
    released = [line.strip() for line in lines if CONTROLLER_FINALIZER in line]
    assert len(released) == 3, done.stdout
    assert all(line.startswith("no controller finished /apis/") for line in released), released
    # Gone, but for the object another finalizer still holds: that one is not ours to release.
    assert kubectl.json("get", "agentpipelines")["items"] == []
    (left,) = kubectl.json("get", "agentdeployments")["items"]
    assert left["metadata"]["name"] == "other"
    assert left["metadata"]["finalizers"] == [OTHER_FINALIZER]
    assert left["metadata"]["deletionTimestamp"]
    kubectl(
        "patch",
        "agentdeployment",
        "other",
        "--type=json",
        "-p",
        '[{"op":"remove","path":"/metadata/finalizers"}]',
    )


ADMISSION = "admissionregistration.k8s.io/v1"
FOREIGN_CONDITION = {"name": "example.com/theirs", "expression": "true"}


def generated(k8s_api: kube.Client) -> list[str]:
    return [
        f"{kind}/{item['metadata']['name']}"
        for kind, plural in controller_native.PLURALS.items()
        for item in k8s_api.list_items(kube.path(ADMISSION, plural), label_selector=GENERATED_SELECTOR)
    ]


def test_native_admission_is_withdrawn_routing_first_and_nothing_else(
    control_plane: ControlPlane, k8s_api: kube.Client, kubectl: Kubectl, namespace: str
) -> None:
    """What a controller with --native-admission leaves behind: its generated policies, and its
    condition on the webhooks.  Withdrawn, the webhooks match everything again (another condition
    on them kept) and no generated object is left; agents are not touched."""
    policy = ClusterAgentPolicy.model_validate(
        {"apiVersion": API_VERSION, "kind": "ClusterAgentPolicy", "metadata": {"name": f"org-{namespace}"},
         "spec": {"mode": "Enforce", "limits": {"maxTokensPerCall": {"default": 100, "max": 2000}}}}
    )  # fmt: skip
    only_here = Options(namespaces=(namespace,))
    state = generate(PolicySet(cluster=(policy,)), now=datetime.now(UTC), options=only_here)
    for obj in state.objects():
        k8s_api.apply(obj, field_manager="test")
    name = f"native-{namespace}"
    # Scoped to a label no namespace carries: these configurations gate nothing of the other tests.
    mutating, validating = configurations(
        ClientConfig(url="https://127.0.0.1:1"), name=name, scope_label=("example.com/nobody", "x")
    )
    validating["webhooks"][0]["matchConditions"] = [FOREIGN_CONDITION]
    register(k8s_api, (mutating, validating))
    for kind, condition in ((controller_native.MUTATING, state.mutating_condition),
                            (controller_native.VALIDATING, state.validating_condition)):  # fmt: skip
        exactly = functools.partial(controller_native._exactly, wanted=condition)
        assert controller_native._set_condition(k8s_api, kind, name, exactly) == 1
    apply(kubectl, held("AgentDeployment", "kept", [], AGENT_SPEC))
    assert len(generated(k8s_api)) >= len(state.objects())

    done = agentops(control_plane, "--native-admission", "--webhook-configuration", name)

    assert done.returncode == 0, done.stderr
    assert "removed native admission's routing condition from 2 webhook configurations" in done.stdout
    assert f"deleted {len(state.objects())} generated admission policies and bindings:" in done.stdout
    assert generated(k8s_api) == []
    for kind, plural in controller_native.WEBHOOK_PLURALS.items():
        config = k8s_api.get(kube.path(ADMISSION, plural, name))
        assert config is not None, kind
        conditions = [c for hook in config["webhooks"] for c in hook.get("matchConditions") or ()]
        assert WEBHOOK_CONDITION_NAME not in {c["name"] for c in conditions}, kind
        assert conditions == ([FOREIGN_CONDITION] if kind == controller_native.VALIDATING else []), kind
    assert [a["metadata"]["name"] for a in kubectl.json("get", "agentdeployments")["items"]] == ["kept"]
    # Again: nothing left to withdraw, and it says so.
    again = agentops(control_plane, "--native-admission", "--webhook-configuration", name)
    assert again.returncode == 0, again.stderr
    assert "native admission: nothing generated to withdraw" in again.stdout
    for plural in controller_native.WEBHOOK_PLURALS.values():
        k8s_api.delete(kube.path(ADMISSION, plural, name))


def test_bad_arguments_are_refused_with_the_fix(control_plane: ControlPlane) -> None:
    both = agentops(control_plane, "--crds", "-n", "x")
    assert both.returncode == 2
    assert "drop -n/--namespace" in both.stderr
    only = agentops(control_plane, "--native-admission", "--crds")
    assert only.returncode == 2
    assert "--native-admission only withdraws native admission; drop --crds and -n" in only.stderr
    negative = agentops(control_plane, "--wait", "-1")
    assert negative.returncode == 2
    assert "--wait must be 0 or more seconds" in negative.stderr


def hold_crd(group: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"holds.{group}"},
        "spec": {
            "group": group,
            "scope": "Cluster",
            "names": {"plural": "holds", "singular": "hold", "kind": "Hold", "listKind": "HoldList"},
            "versions": [{"name": "v1", "served": True, "storage": True,
                          "schema": {"openAPIV3Schema": {"type": "object"}}}],
        },
    }  # fmt: skip


def test_a_crd_whose_cleanup_stalled_is_retried_and_goes(
    capsys: pytest.CaptureFixture[str], k8s_api: kube.Client, namespace: str
) -> None:
    """kube-apiserver (1.33 to 1.37) can leave a deleted CRD's cleanup failed and unretried for
    minutes (``uninstall_cmd.cleanup_stalled``).  That race cannot be started on purpose, so the failed
    cleanup's condition is written the way the API server writes it, onto a CRD whose cleanup is
    held by an object's finalizer: the CRD is told to retry, and goes once nothing holds it."""
    group = f"{namespace}.test.agentops.io"
    crd = kube.path("apiextensions.k8s.io/v1", "customresourcedefinitions", f"holds.{group}")
    k8s_api.create(kube.path("apiextensions.k8s.io/v1", "customresourcedefinitions"), hold_crd(group))
    k8s_api.wait_for_crds([f"holds.{group}"])
    instance = kube.path(f"{group}/v1", "holds", "held")
    k8s_api.create(
        kube.path(f"{group}/v1", "holds"),
        {
            "apiVersion": f"{group}/v1",
            "kind": "Hold",
            "metadata": {"name": "held", "finalizers": [OTHER_FINALIZER]},
        },
    )
    k8s_api.delete(crd)
    eventually("the API server is cleaning the CRD up", lambda: terminating(k8s_api.get(crd)) is not None)
    body = k8s_api.get(crd)
    assert body is not None
    conditions = [c for c in body["status"]["conditions"] if c["type"] != "Terminating"]
    stalled = {"type": "Terminating", "status": "True", "reason": "InstanceDeletionFailed",
               "message": "could not list instances: storage is (re)initializing"}  # fmt: skip
    k8s_api.patch_status(crd, {"conditions": [*conditions, {**stalled, "lastTransitionTime": now()}]})
    assert uninstall_cmd.cleanup_stalled(k8s_api.get(crd) or {})

    retried: list[str] = []

    def release_once_retried() -> None:
        annotations = ((k8s_api.get(crd) or {}).get("metadata") or {}).get("annotations") or {}
        if uninstall_cmd.CLEANUP_RETRY in annotations and not retried:
            retried.append(annotations[uninstall_cmd.CLEANUP_RETRY])
            k8s_api.merge_patch(instance, {"metadata": {"finalizers": None}})

    left = uninstall_cmd.delete_crds(k8s_api, [f"holds.{group}"], timeout=60, each_round=release_once_retried)

    assert left == []
    assert retried == ["1"]
    assert (
        f"CRD holds.{group}: the API server's cleanup stalled; asking it to retry" in capsys.readouterr().out
    )
    assert k8s_api.get(crd) is None


def terminating(crd: dict[str, Any] | None) -> dict[str, Any] | None:
    return next(
        (c for c in ((crd or {}).get("status") or {}).get("conditions") or [] if c["type"] == "Terminating"),
        None,
    )


def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.mark.parametrize(
    ("condition", "stalled"),
    [
        ({"type": "Terminating", "status": "True", "reason": "InstanceDeletionFailed"}, True),
        ({"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress"}, False),
        ({"type": "Terminating", "status": "True", "reason": "InstanceDeletionCheck"}, False),
        ({"type": "Terminating", "status": "False", "reason": "InstanceDeletionCompleted"}, False),
        ({"type": "Established", "status": "True", "reason": "InitialNamesAccepted"}, False),
    ],
)
def test_only_a_failed_cleanup_counts_as_stalled(condition: dict[str, str], stalled: bool) -> None:
    assert uninstall_cmd.cleanup_stalled({"status": {"conditions": [condition]}}) is stalled
