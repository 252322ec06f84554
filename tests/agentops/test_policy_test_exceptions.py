"""``agentops policy test`` with AgentPolicyExceptions and ``--now``: the same verdicts as admission."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from agentops.cli import main

ORG = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: ClusterAgentPolicy
metadata: {name: org}
spec:
  limits:
    maxTokensPerCall: {default: 1000, max: 4000}
  exceptions: {maxDurationHours: 720}
"""
AGENT = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentDeployment
metadata: {name: big, namespace: team}
spec:
  model: claude-sonnet-4
  systemPrompt: be brief
  limits: {maxTokensPerCall: 5000, maxConcurrentTasks: 1, timeoutSeconds: 60}
"""
EXCEPTION = """\
apiVersion: agentops.agentops.io/v1alpha1
kind: AgentPolicyException
metadata: {name: ops-42, namespace: team}
spec:
  agents: [big]
  policies:
    - {name: org, rules: [limits.maxTokensPerCall]}
  expiresAt: "2026-03-01T18:00:00Z"
  reason: OPS-42 load test
"""
VIOLATION = "spec.limits.maxTokensPerCall: 5000 exceeds 4000 set by ClusterAgentPolicy/org"
NOTE = " (excepted by AgentPolicyException/team/ops-42 until 2026-03-01T18:00:00Z: OPS-42 load test)"


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    (tmp_path / "org.yaml").write_text(ORG)
    (tmp_path / "agent.yaml").write_text(AGENT)
    (tmp_path / "exception.yaml").write_text(EXCEPTION)
    return tmp_path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str]]:
    status = main(["policy", "test", *argv])
    return status, capsys.readouterr().out.splitlines()


def test_before_expiry_the_exception_excuses_the_violation_with_a_warning(
    manifests: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines = run(capsys, "-f", str(manifests), "--now", "2026-03-01T17:59:59Z")
    assert status == 0, lines
    assert lines == [
        f"{manifests / 'agent.yaml'}: AgentDeployment/big: warning: {VIOLATION}{NOTE}",
        "3 object(s) checked against 1 policy(ies): 0 denied, 1 with warnings, 0 unreadable",
    ]


def test_at_and_after_expiry_the_violation_is_denied_again(
    manifests: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for now in ("2026-03-01T18:00:00Z", "2026-03-01T20:00:00+01:00"):
        status, lines = run(
            capsys, "-f", str(manifests / "agent.yaml"), "--policies", str(manifests), "--now", now
        )
        assert status == 1, lines
        assert lines == [
            f"{manifests / 'agent.yaml'}: AgentDeployment/big: denied: {VIOLATION}",
            "1 object(s) checked against 1 policy(ies): 1 denied, 0 with warnings, 0 unreadable",
        ]


def test_the_exception_itself_is_judged_at_now(manifests: Path, capsys: pytest.CaptureFixture[str]) -> None:
    exception = manifests / "exception.yaml"
    status, lines = run(
        capsys,
        "-f",
        str(exception),
        "--policies",
        str(manifests / "org.yaml"),
        "--now",
        "2026-03-02T00:00:00Z",
    )
    assert status == 1
    assert lines[0] == (
        f"{exception}: AgentPolicyException/ops-42: denied: spec.expiresAt: 2026-03-01T18:00:00Z is not "
        "in the future (now 2026-03-02T00:00:00Z); an exception must expire after it is created: "
        "set a later time"
    )
    status, lines = run(
        capsys,
        "-f",
        str(exception),
        "--policies",
        str(manifests / "org.yaml"),
        "--now",
        "2026-01-01T00:00:00Z",
    )
    assert status == 1
    assert "over the 720 hours ClusterAgentPolicy/org allows" in lines[0]
    status, lines = run(
        capsys,
        "-f",
        str(exception),
        "--policies",
        str(manifests / "org.yaml"),
        "--now",
        "2026-02-28T00:00:00Z",
    )
    assert status == 0, lines


@pytest.mark.parametrize("bad", ["tomorrow", "2026-03-01T18:00:00", "2026-13-01T00:00:00Z"])
def test_a_now_that_is_not_rfc3339_with_an_offset_is_refused(
    manifests: Path, capsys: pytest.CaptureFixture[str], bad: str
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["policy", "test", "-f", str(manifests), "--now", bad])
    assert exited.value.code == 2
    assert textwrap.dedent(f"argument --now: {bad!r} is not an RFC 3339 time with a zone offset") in (
        capsys.readouterr().err
    )
