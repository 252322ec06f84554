"""Every program reaches Kubernetes by the one rule of :mod:`kube.config`, kopf included."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import kube
from tests.controller.conftest import ControllerProcess, controller_argv
from tests.kube.objects import MANAGER, agent
from tests.support.waiting import eventually


def _without_cluster() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST")}


@pytest.mark.parametrize(
    "argv",
    [
        ["controller", "--namespace", "x"],
        ["certs", "ensure", "--cert-dir", "{tmp}/certs", "--secret", "ns/tls"],
        ["agentops", "history", "some-agent"],
        ["agentops", "pipeline", "output", "some-pipeline"],
    ],
    ids=["controller", "certs", "agentops-history", "agentops-pipeline"],
)
def test_without_a_configuration_each_program_says_how_to_give_one(argv: list[str], tmp_path: Path) -> None:
    command = [sys.executable, "-m", *(a.format(tmp=tmp_path) for a in argv)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=_without_cluster())
    assert result.returncode == 2, result.stderr
    assert "--kubeconfig PATH or set $KUBECONFIG" in result.stderr
    assert "service account" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_controller_and_its_kopf_use_the_kubeconfig_flag_alone(
    control_plane: Any, k8s_api: kube.Client, namespace: str, redis_url: str, tmp_path: Path
) -> None:
    """No $KUBECONFIG: kopf's watches (which see the agent) and our client (which applies its
    Deployment) must both take the cluster from ``--kubeconfig``."""
    argv = controller_argv(namespace, redis_url, "--kubeconfig", str(control_plane.kubeconfig))
    proc = ControllerProcess(argv, _without_cluster(), tmp_path / "controller.log")
    proc.start()
    try:
        k8s_api.apply(agent("flagged", namespace), field_manager=MANAGER)
        deployment = kube.path("apps/v1", "deployments", "flagged", namespace=namespace)
        eventually("the agent's Deployment", lambda: k8s_api.get(deployment), within=60)
    finally:
        proc.stop()
        print(proc.output()[-4000:])
