"""The local stack: ``python -m localstack up|status|down`` and the component registration point."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from localstack._process import PidFile
from localstack.stack import COMPONENTS, Component, LocalStack, StackInfo, http_ready
from tests.support.kubectl import Kubectl
from tests.support.processes import processes_using
from tests.support.waiting import eventually

REPO = Path(__file__).resolve().parents[2]


def stack_cli(state_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "localstack", "--state-dir", str(state_dir), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )


def _echo_component() -> Component:
    """A stand-in for the webhook: a real HTTP server on a reserved port, with a readiness check."""

    def argv(info: StackInfo) -> list[str]:
        return [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(info.port("echo"))]

    return Component(
        "echo",
        argv,
        env=lambda info: {"ECHO_MARKER": "yes"},
        ready=http_ready(lambda info: f"http://127.0.0.1:{info.port('echo')}/"),
    )


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    try:
        yield state
    finally:
        LocalStack(state, components=[*COMPONENTS, _echo_component()]).down()


def test_up_status_down(state_dir: Path) -> None:
    up = stack_cli(state_dir, "up")
    assert up.returncode == 0, up.stderr
    kubeconfig = state_dir / "controlplane" / "kubeconfig"
    assert f"export KUBECONFIG={kubeconfig}" in up.stdout
    assert "applied AgentDeployment research-agent" in up.stderr

    kubectl = Kubectl(kubeconfig, "default")
    table = kubectl("get", "agdep").stdout
    assert "research-agent" in table
    assert "summarizer-agent" in table
    assert kubectl.json("get", "clusteragentpolicy", "org-defaults")["spec"]["mode"] == "Enforce"
    assert kubectl.json("get", "agpipe", "research-then-summarize")["spec"]["steps"][0]["name"] == "research"
    assert "offline" in up.stdout, "without an API key the stack must say agents run offline"

    # The whole system runs: the webhook gates changes, the controller turns agents into
    # Deployments, local runtime processes become READY, and the seed's pipeline completes.
    def pipeline_succeeded() -> bool:
        status = kubectl.json("get", "agpipe", "research-then-summarize").get("status", {})
        return bool(status.get("phase") == "Succeeded")

    eventually("the seed pipeline to succeed", pipeline_succeeded, within=90)
    pipeline = kubectl.json("get", "agpipe", "research-then-summarize")["status"]
    assert "AI in healthcare" in pipeline["output"]
    eventually(
        "research-agent to have 3 ready replicas",
        lambda: kubectl.json("get", "agdep", "research-agent").get("status", {}).get("readyReplicas") == 3,
        within=90,
    )
    agent = kubectl.json("get", "agdep", "research-agent")
    assert agent["status"]["effectiveProvider"] == "offline (no API key)"
    assert agent["metadata"]["annotations"]["agentops.agentops.io/prompt-changed-by"] == "agentops-admin"
    denied = kubectl("scale", "agdep", "research-agent", "--replicas=50", check=False)
    assert denied.returncode != 0
    assert "spec.replicas: 50 exceeds 10 set by ClusterAgentPolicy/org-defaults" in denied.stderr

    again = stack_cli(state_dir, "up")
    assert again.returncode == 0
    assert "already running" in again.stderr

    status = stack_cli(state_dir, "status")
    assert status.returncode == 0
    assert "control-plane    running" in status.stdout

    # A registered component joins the running stack: only it starts, with the stack's environment.
    stack = LocalStack(state_dir, components=[*COMPONENTS, _echo_component()])
    stack.up(samples=False)
    pid = PidFile(state_dir / "pids" / "echo.pid").alive_pid()
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"KUBECONFIG={kubeconfig}".encode() in environ
    assert b"ECHO_MARKER=yes" in environ
    assert any(e.startswith(b"AGENTOPS_REDIS_URL=redis://127.0.0.1:") for e in environ)
    assert set(stack.status().values()) == {True}
    assert set(stack.status()) == {"control-plane", "redis", "webhook", "controller", "agents", "echo"}

    kubectl("scale", "agdep", "research-agent", "--replicas=7")
    assert sorted(stack.down()) == ["agents", "control-plane", "controller", "echo", "redis", "webhook"]
    assert processes_using(state_dir) == []
    assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split(")")[1][:3]

    stopped = stack_cli(state_dir, "status")
    assert stopped.returncode == 3
    assert "control-plane    stopped" in stopped.stdout
    assert stack_cli(state_dir, "down").stdout.strip() == "nothing was running"

    # Up again: same server URL (the copied kubeconfig still works) and the cluster's data is kept.
    server = _server(up.stdout)
    with pytest.raises(AssertionError):
        kubectl("get", "agdep", "research-agent", timeout=10)  # really down
    restarted = stack_cli(state_dir, "up", "--no-samples")
    assert restarted.returncode == 0, restarted.stderr
    assert _server(restarted.stdout) == server
    assert kubectl.json("get", "agdep", "research-agent")["spec"]["replicas"] == 7
    assert stack_cli(state_dir, "down").returncode == 0
    assert processes_using(state_dir) == []


def _server(up_stdout: str) -> str:
    return next(line.split()[-1] for line in up_stdout.splitlines() if line.startswith("API server:"))


def test_failing_component_is_reported_with_its_log(state_dir: Path) -> None:
    broken = Component(
        "broken",
        lambda info: [sys.executable, "-c", "import sys; print('no config here'); sys.exit(4)"],
        ready=lambda info: False,
        ready_timeout=30,
    )
    stack = LocalStack(state_dir, components=[broken])
    with pytest.raises(
        RuntimeError, match=r"broken exited with status 4; the end of .*broken.log:\nno config here"
    ):
        stack.up(samples=False)
    stack.down()
    assert processes_using(state_dir) == []


def test_agentops_cli_runs_the_same_commands(tmp_path: Path) -> None:
    agentops = Path(sys.executable).parent / "agentops"
    result = subprocess.run(
        [str(agentops), "status", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 3, result.stderr
    assert "control-plane    stopped" in result.stdout
    assert "redis            stopped" in result.stdout
