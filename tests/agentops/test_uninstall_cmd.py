"""``agentops uninstall`` on the real control plane, with no controller running: what it deletes,
what it releases, and what it never touches.  (With ``--crds``, on a real node after ``helm
uninstall``: tests/cluster/test_uninstall.py.)"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

from contracts.resources import API_VERSION, CONTROLLER_FINALIZER
from localstack.controlplane import ControlPlane
from tests.support.kubectl import Kubectl

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


def test_bad_arguments_are_refused_with_the_fix(control_plane: ControlPlane) -> None:
    both = agentops(control_plane, "--crds", "-n", "x")
    assert both.returncode == 2
    assert "drop -n/--namespace" in both.stderr
    negative = agentops(control_plane, "--wait", "-1")
    assert negative.returncode == 2
    assert "--wait must be 0 or more seconds" in negative.stderr
