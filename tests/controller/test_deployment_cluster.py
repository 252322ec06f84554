"""The controller's own deployment: it works with nothing but its ClusterRole, and two replicas
elect a leader with kopf peering, the standby taking over when the leader is killed.

Both controllers run as real processes authenticated as the ``agentops-controller``
ServiceAccount (a token from the TokenRequest API), with the manifests from ``deploy/manifests``.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.controller.conftest import ControllerProcess
from tests.support.kubectl import Kubectl
from tests.support.seed import SEED_AGENT, SEED_PIPELINE
from tests.support.waiting import eventually

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "manifests"
SUMMARIZER = Path(__file__).resolve().parents[2] / "deploy" / "samples" / "summarizer-agent.yaml"


def service_account_kubeconfig(cluster_kubectl: Kubectl, admin: Path, target: Path) -> Path:
    token = cluster_kubectl(
        "-n", "agentops-system", "create", "token", "agentops-controller", "--duration=1h"
    ).stdout.strip()
    config: dict[str, Any] = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "agentops-controller", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "agentops-controller"
    target.write_text(yaml.safe_dump(config))
    return target


def paused(log: str) -> bool:
    """kopf starts paused until it knows its peers; the last peering message decides."""
    resumed, pausing = log.rfind("Resuming operations"), log.rfind("Pausing operations")
    return resumed == -1 or pausing > resumed


def test_least_privilege_controller_with_leader_election_and_failover(
    cluster_kubectl: Kubectl,
    kubectl: Kubectl,
    namespace: str,
    redis_url: str,
    control_plane: Any,
    local_agents: None,
    tmp_path: Path,
) -> None:
    if cluster_kubectl("get", "namespace", "agentops-system", check=False).returncode != 0:
        cluster_kubectl("create", "namespace", "agentops-system")
    cluster_kubectl("apply", "-f", str(MANIFESTS / "rbac-controller.yaml"))
    # The peering CRDs must be Established before the peering object in the same file applies.
    cluster_kubectl("apply", "-f", str(MANIFESTS / "controller-peering.yaml"), check=False)
    cluster_kubectl("wait", "--for=condition=Established", "crd/kopfpeerings.kopf.dev", "--timeout=30s")
    cluster_kubectl("apply", "-f", str(MANIFESTS / "controller-peering.yaml"))
    # A namespaced controller peers through a KopfPeering object in its namespace.
    kubectl(
        "apply",
        "-f",
        "-",
        input="apiVersion: kopf.dev/v1\nkind: KopfPeering\nmetadata: {name: agentops-controller}\n",
    )
    sa_config = service_account_kubeconfig(
        cluster_kubectl, control_plane.kubeconfig, tmp_path / "sa.kubeconfig"
    )
    assert (
        "agentops-controller"
        in cluster_kubectl(
            "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}", f"--kubeconfig={sa_config}"
        ).stdout
    )

    env = {**os.environ, "KUBECONFIG": str(sa_config)}
    env.pop("ANTHROPIC_API_KEY", None)

    def replica(name: str, priority: int) -> ControllerProcess:
        argv = [
            sys.executable, "-m", "controller", "--namespace", namespace, "--redis-url", redis_url,
            "--offline-fallback", "--resync-seconds", "0.5", "--peering", "agentops-controller",
            "--priority", str(priority), "--peering-lifetime", "5",
        ]  # fmt: skip
        proc = ControllerProcess(argv, env, tmp_path / f"{name}.log")
        proc.start()
        return proc

    leader, standby = replica("leader", 20), replica("standby", 10)
    try:
        kubectl("apply", "-f", "-", input=SEED_AGENT)
        kubectl("apply", "-f", str(SUMMARIZER))
        kubectl("apply", "-f", "-", input=SEED_PIPELINE)
        eventually(
            "the seed pipeline under the ServiceAccount's RBAC",
            lambda: (
                (kubectl.json("get", "agpipe", "research-then-summarize").get("status") or {}).get("phase")
                == "Succeeded"
            ),
            within=90,
        )
        # The standby pauses behind the higher-priority leader (both may act for a moment at a
        # simultaneous start, until each has seen the other's peering record).
        eventually("the standby to pause in favour of the leader", lambda: paused(standby.output()))
        assert "reconciling agent" in leader.output()
        at_kill = len(standby.output())
        warnings = kubectl.json("get", "events", "--field-selector", "type=Warning")["items"]
        assert not [e["message"] for e in warnings if "forbidden" in e["message"].lower()]
        assert "forbidden" not in leader.output().lower(), leader.output()[-3000:]

        leader.kill()
        second = SEED_PIPELINE.replace("name: research-then-summarize", "name: after-failover")
        kubectl("apply", "-f", "-", input=second)
        eventually(
            "the standby to take over and run a new pipeline",
            lambda: (
                (kubectl.json("get", "agpipe", "after-failover").get("status") or {}).get("phase")
                == "Succeeded"
            ),
            within=60,
        )
        assert "Resuming operations" in standby.output()[at_kill:]
    finally:
        for proc in (leader, standby):
            if proc.proc is not None and proc.proc.poll() is None:
                os.killpg(proc.proc.pid, signal.SIGTERM)
                proc.proc.wait(timeout=15)
        print("--- standby log ---")
        print(standby.output()[-4000:])
