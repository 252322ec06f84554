"""``agentops policy test``: offline evaluation of manifests for GitOps CI."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agentops.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"

ORG = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: ClusterAgentPolicy
metadata: {name: org}
spec:
  limits:
    maxTokensPerCall: {default: 4000, max: 8000}
    maxConcurrentTasks: {default: 2, max: 10}
    timeoutSeconds: {default: 60, max: 600}
  replicas: {max: 5}
"""


def agent_yaml(name: str, tokens: int = 1000, replicas: int = 1, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        apiVersion: agentops.agentops.io/v1alpha1
        kind: AgentDeployment
        metadata: {{name: {name}{extra}}}
        spec:
          replicas: {replicas}
          model: claude-sonnet-4
          systemPrompt: be brief
          limits: {{maxTokensPerCall: {tokens}}}
        """)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    status = main(["policy", "test", *argv])
    return status, capsys.readouterr().out.splitlines()


def test_the_seed_samples_pass(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = run(capsys, "-f", str(SAMPLES))
    assert status == 0, lines
    assert lines == ["4 object(s) checked against 1 policy(ies): 0 denied, 0 with warnings, 0 unreadable"]


def test_an_over_limit_agent_is_reported_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "org.yaml").write_text(ORG)
    bad = tmp_path / "agents.yaml"
    bad.write_text(agent_yaml("big", tokens=50000, replicas=7) + "---\n" + agent_yaml("small"))
    status, lines = run(capsys, "-f", str(bad), "--policies", str(tmp_path / "org.yaml"))
    assert status == 1
    assert lines == [
        f"{bad}: AgentDeployment/big: denied: spec.limits.maxTokensPerCall: 50000 exceeds 8000 "
        "set by ClusterAgentPolicy/org",
        f"{bad}: AgentDeployment/big: denied: spec.replicas: 7 exceeds 5 set by ClusterAgentPolicy/org",
        "2 object(s) checked against 1 policy(ies): 1 denied, 0 with warnings, 0 unreadable",
    ]


def test_policies_among_the_files_apply_and_directories_are_searched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    nested = tmp_path / "apps" / "team"
    nested.mkdir(parents=True)
    (tmp_path / "org.yml").write_text(ORG)
    (nested / "agent.yaml").write_text(agent_yaml("big", replicas=9))
    (nested / "README.md").write_text("not a manifest")
    status, lines = run(capsys, "-f", str(tmp_path))
    assert status == 1
    assert lines[0] == (
        f"{nested / 'agent.yaml'}: AgentDeployment/big: denied: spec.replicas: 9 exceeds 5 "
        "set by ClusterAgentPolicy/org"
    )


def test_missing_limits_without_defaults_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "a.yaml").write_text(agent_yaml("a"))
    status, lines = run(capsys, "-f", str(tmp_path / "a.yaml"))
    assert status == 1
    assert any("spec.limits.timeoutSeconds: missing, and no matching" in line for line in lines)


def test_warnings_alone_pass(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    warn = ORG.replace("spec:\n", "spec:\n  mode: Warn\n")
    (tmp_path / "p.yaml").write_text(warn)
    (tmp_path / "a.yaml").write_text(agent_yaml("a", replicas=6))
    status, lines = run(capsys, "-f", str(tmp_path))
    assert status == 0
    assert lines[0] == (
        f"{tmp_path / 'a.yaml'}: AgentDeployment/a: warning: spec.replicas: 6 exceeds 5 "
        "set by ClusterAgentPolicy/org"
    )


def test_namespace_labels_from_namespace_objects(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    scoped = ORG.replace("spec:\n", "spec:\n  namespaceSelector: {matchLabels: {env: prod}}\n")
    (tmp_path / "p.yaml").write_text(scoped)
    (tmp_path / "ns.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop, labels: {env: prod}}\n"
    )
    (tmp_path / "a.yaml").write_text(
        agent_yaml("dev-agent", replicas=9).replace(
            "limits: {maxTokensPerCall: 1000}",
            "limits: {maxTokensPerCall: 1000, maxConcurrentTasks: 1, timeoutSeconds: 5}",
        )
        + "---\n"
        + agent_yaml("prod-agent", replicas=9, extra=", namespace: shop")
    )
    status, lines = run(capsys, "-f", str(tmp_path))
    assert status == 1
    assert [line.split(": ")[1] for line in lines[:-1]] == ["AgentDeployment/prod-agent"]


def test_invalid_objects_are_reported_with_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "a.yaml"
    bad.write_text(agent_yaml("a").replace("replicas: 1", "replicas: -1"))
    status, lines = run(capsys, "-f", str(bad))
    assert status == 1
    assert (
        lines[0]
        == f"{bad}: AgentDeployment/a: denied: spec.replicas: Input should be greater than or equal to 0"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        pytest.param(
            "kind: [unclosed\n",
            "invalid YAML at line 2, column 1: expected ',' or ']', but got '<stream end>'",
            id="yaml",
        ),
        pytest.param(
            "- just\n- a list\n", "document 1 is not a Kubernetes object (no kind)", id="not-an-object"
        ),
    ],
)
def test_malformed_files_fail_with_the_file_name(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(content)
    status, lines = run(capsys, "-f", str(bad))
    assert status == 1
    assert lines[0] == f"{bad}: {message}"


def test_a_missing_path_fails(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, lines = run(capsys, "-f", str(tmp_path / "nope.yaml"))
    assert status == 1
    assert lines[0] == f"{tmp_path / 'nope.yaml'}: no such file or directory"


def test_an_invalid_policy_file_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "p.yaml").write_text(ORG.replace("replicas: {max: 5}", "replicas: {max: many}"))
    (tmp_path / "a.yaml").write_text(agent_yaml("a"))
    status, lines = run(capsys, "-f", str(tmp_path / "a.yaml"), "--policies", str(tmp_path / "p.yaml"))
    assert status == 1
    assert (
        f"{tmp_path / 'p.yaml'}: ClusterAgentPolicy/org: invalid policy: spec.replicas.max: "
        "Input should be a valid integer, unable to parse string as an integer"
    ) in lines


def test_the_installed_command_runs(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(ORG)
    (tmp_path / "a.yaml").write_text(agent_yaml("big", tokens=9000))
    done = subprocess.run(
        [sys.executable, "-m", "agentops", "policy", "test", "-f", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    assert "AgentDeployment/big: denied: spec.limits.maxTokensPerCall: 9000 exceeds 8000" in done.stdout
