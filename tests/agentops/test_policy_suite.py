"""``agentops policy test DIR``: policy test suites (``agentops-test.yaml``) for GitOps CI.

The suites run through the real CLI entry point against the shipped example in
``deploy/samples/tests/`` (copied to a temporary directory whenever a test changes a file), so the
example, its documentation and the runner cannot drift apart.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml

from agentops.cli import main

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"
SUITE = SAMPLES / "tests" / "agentops-test.yaml"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    status = main(["policy", "test", *argv])
    captured = capsys.readouterr()
    return status, captured.out.splitlines(), captured.err


@pytest.fixture
def samples(tmp_path: Path) -> Path:
    """A copy of deploy/samples (the suite refers to the samples one directory up)."""
    copy = tmp_path / "samples"
    shutil.copytree(SAMPLES, copy)
    return copy


def edit_suite(samples: Path, change: str, to: str, count: int = 1) -> Path:
    suite = samples / "tests" / "agentops-test.yaml"
    text = suite.read_text()
    assert text.count(change) == count, f"{change!r} occurs {text.count(change)} times"
    suite.write_text(text.replace(change, to))
    return suite


def columns(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def test_the_shipped_example_suite_passes(capsys: pytest.CaptureFixture[str]) -> None:
    status, lines, _ = run(capsys, str(SAMPLES / "tests"))
    assert status == 0, "\n".join(lines)
    assert lines[0] == f"Test suite {SUITE}"
    assert columns(lines[1]) == ["ID", "POLICY", "RULE", "RESOURCE", "EXPECTED", "GOT", "RESULT"]
    rows = [columns(line) for line in lines[2:-1]]
    assert lines[-1] == f"Test summary: {len(rows)} passed, 0 failed"
    assert all(row[-1] == "Pass" and row[4] == row[5] for row in rows)
    # Every outcome is shown: pass, fail, warn (a Warn policy, an exception) and skip.
    assert {row[5] for row in rows} == {"pass", "fail", "warn", "skip"}
    assert [
        "15",
        "AgentPolicy/team-a/team-a-limits",
        "replicas.max",
        "AgentDeployment/team-a/legacy-bot",
        "warn",
        "warn",
        "Pass",
    ] in rows


def test_detailed_results_add_field_value_limit_exception_and_message(
    capsys: pytest.CaptureFixture[str],
) -> None:
    status, lines, _ = run(capsys, str(SUITE), "--detailed-results")
    assert status == 0
    assert columns(lines[1])[7:] == ["FIELD", "VALUE", "LIMIT", "EXCEPTION", "MESSAGE"]
    (legacy,) = [columns(line) for line in lines if "legacy-bot" in line and "team-a-limits" in line]
    assert legacy[7:11] == ["spec.replicas", "6", "4", "AgentPolicyException/team-a/legacy-bot-replicas"]
    assert legacy[11].startswith(
        "spec.replicas: 6 exceeds 4 set by AgentPolicy/team-a-limits (excepted by "
        "AgentPolicyException/team-a/legacy-bot-replicas until 2026-09-30T00:00:00Z: OPS-1234"
    )


def test_a_wrong_expectation_fails_naming_the_resource_and_the_rule(
    samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    edit_suite(
        samples,
        "    resource: bulk-writer\n    result: fail\n",
        "    resource: bulk-writer\n    result: pass\n",
    )
    status, lines, _ = run(capsys, str(samples / "tests"))
    assert status == 1
    assert lines[-2] == "Test summary: 15 passed, 1 failed"
    assert lines[-1] == (
        "FAIL 14: AgentDeployment/team-a/bulk-writer: rule limits.maxTokensPerCall of "
        "AgentPolicy/team-a/team-a-limits: expected pass, got fail: "
        "spec.limits.maxTokensPerCall: 12000 exceeds 8000 set by AgentPolicy/team-a-limits"
    )
    (row,) = [columns(line) for line in lines if line.startswith("14 ")]
    assert row[4:] == ["pass", "fail", "Fail"]


def test_a_patched_output_that_differs_fails_naming_the_field(
    samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    expected = samples / "tests" / "expected" / "summarizer-lite.yaml"
    expected.write_text(expected.read_text().replace("timeoutSeconds: 60", "timeoutSeconds: 90"))
    status, lines, _ = run(capsys, str(samples / "tests"))
    assert status == 1
    assert lines[-1] == (
        "FAIL 10: AgentDeployment/team-a/summarizer-lite: rule limits.maxTokensPerCall of "
        "AgentPolicy/team-a/team-a-limits: patched output differs from expected/summarizer-lite.yaml: "
        "spec.limits.timeoutSeconds: expected 90, got 60"
    )


def test_now_after_the_exceptions_expiry_flips_the_verdict(
    samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The same suite a day after legacy-bot's exception expired: the violation is a failure again.
    suite = edit_suite(samples, 'now: "2026-06-01T12:00:00Z"', 'now: "2026-09-30T00:00:01Z"')
    status, lines, _ = run(capsys, str(suite))
    assert status == 1
    assert lines[-1] == (
        "FAIL 15: AgentDeployment/team-a/legacy-bot: rule replicas.max of AgentPolicy/team-a/team-a-limits: "
        "expected warn, got fail: spec.replicas: 6 exceeds 4 set by AgentPolicy/team-a-limits"
    )
    # Written for that time, the suite passes: the verdict depends on the suite's clock only.
    edit_suite(
        samples,
        "    resource: legacy-bot\n    result: warn\n",
        "    resource: legacy-bot\n    result: fail\n",
    )
    status, lines, _ = run(capsys, str(suite))
    assert status == 0, "\n".join(lines)
    # One second before expiry it is still excused.
    edit_suite(samples, 'now: "2026-09-30T00:00:01Z"', 'now: "2026-09-29T23:59:59Z"')
    status, lines, _ = run(capsys, str(suite))
    assert status == 1
    assert "expected fail, got warn" in lines[-1]


def test_a_rule_that_does_not_apply_is_a_skip(samples: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # team-a-limits sets no model list, and does not match research-agent (namespace default).
    suite = samples / "tests" / "agentops-test.yaml"
    data = yaml.safe_load(suite.read_text())
    data["results"] = [
        {"policy": "team-a-limits", "rule": "models.allowed", "resource": "bulk-writer", "result": "skip"},
        {"policy": "team-a-limits", "rule": "replicas.max", "resource": "research-agent", "result": "pass"},
    ]
    suite.write_text(yaml.safe_dump(data))
    status, lines, _ = run(capsys, str(suite), "--detailed-results")
    assert status == 1
    assert lines[-2] == "Test summary: 1 passed, 1 failed"
    assert lines[-1] == (
        "FAIL 2: AgentDeployment/default/research-agent: rule replicas.max of "
        "AgentPolicy/team-a/team-a-limits: expected pass, got skip: "
        "no result: the policy does not match this resource or does not set this rule"
    )


def test_directories_are_searched_for_suites_and_every_suite_runs(
    samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    second = samples / "tests" / "more"
    second.mkdir()
    data = yaml.safe_load((samples / "tests" / "agentops-test.yaml").read_text())
    data["name"] = "second"
    data["policies"] = ["../../org-defaults.yaml"]
    data["exceptions"] = []
    data["resources"] = ["../../research-agent.yaml"]
    data["results"] = [
        {"policy": "org-defaults", "rule": "replicas.max", "resource": "research-agent", "result": "fail"}
    ]
    (second / "agentops-test.yml").write_text(yaml.safe_dump(data))
    status, lines, _ = run(capsys, str(samples))
    assert status == 1
    suites = [line for line in lines if line.startswith("Test suite ")]
    assert suites == [
        f"Test suite {samples / 'tests' / 'agentops-test.yaml'}",
        f"Test suite {second / 'agentops-test.yml'}",
    ]
    assert "Test summary: 16 passed, 0 failed" in lines
    assert lines[-1].startswith("FAIL 1: AgentDeployment/default/research-agent: rule replicas.max of ")


def test_manifest_mode_skips_suite_directories(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # `-f deploy/samples/` checks what would be applied; a suite's resources break policies on purpose.
    (tmp_path / "ok.yaml").write_text((SAMPLES / "research-agent.yaml").read_text())
    suite_dir = tmp_path / "tests"
    suite_dir.mkdir()
    (suite_dir / "agentops-test.yaml").write_text("name: x\n")
    (suite_dir / "bad.yaml").write_text("not: [a kubernetes object")
    status, lines, _ = run(capsys, "-f", str(tmp_path), "--policies", str(SAMPLES / "org-defaults.yaml"))
    assert status == 0, lines
    assert lines == ["1 object(s) checked against 1 policy(ies): 0 denied, 0 with warnings, 0 unreadable"]


# --- malformed suites: exit status 2, the message names the file and the field -----------------


def suite_text(**changes: object) -> str:
    data = yaml.safe_load(SUITE.read_text())
    for key, value in changes.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    return yaml.safe_dump(data)


BAD_RESULT = {
    "policy": "org-defaults",
    "rule": "replicas.max",
    "resource": "research-agent",
    "result": "pass",
}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (suite_text(results=None), "results: Field required"),
        (suite_text(name=""), "name: String should have at least 1 character"),
        (suite_text(resource=["agents.yaml"]), "resource: Extra inputs are not permitted"),
        (suite_text(now="2026-06-01T12:00:00"), "now: Input should have timezone info"),
        (
            suite_text(results=[{**BAD_RESULT, "rule": "replicas"}]),
            "results[0].rule: Input should be 'limits.maxTokensPerCall', ",
        ),
        (
            suite_text(results=[{**BAD_RESULT, "result": "passed"}]),
            "results[0].result: Input should be 'pass', 'fail', 'warn', 'skip' or 'error'",
        ),
        (
            suite_text(results=[{**BAD_RESULT, "resources": ["summarizer-agent"]}]),
            "results[0]: Value error, give exactly one of resource (a name) or resources",
        ),
        (
            suite_text(results=[{**BAD_RESULT, "policy": "nope"}]),
            "results[0].policy: 'nope' is not among the suite's policies (loaded: ",
        ),
        (
            suite_text(
                results=[BAD_RESULT, {**BAD_RESULT, "resource": None, "resources": ["bulk-writer", "ghost"]}]
            ),
            "results[1].resources[1]: 'ghost' is not among the suite's resources (loaded: ",
        ),
        (
            suite_text(results=[{**BAD_RESULT, "patchedResource": "expected/missing.yaml"}]),
            "results[0].patchedResource: ",
        ),
        (suite_text(policies=["nowhere.yaml"]), "policies[0]: "),
        (suite_text(exceptions=["agents.yaml"]), "exceptions: "),
        (suite_text(resources=["policies.yaml"]), "resources: "),
        (suite_text(resources=["agents.yaml", "agents.yaml"]), "resources: "),
        ("name: [unclosed\n", "invalid YAML at line 2"),
        ("- a list\n", "a test suite is a mapping with name, policies, resources and results"),
    ],
    ids=[
        "missing-results",
        "empty-name",
        "unknown-field",
        "naive-now",
        "unknown-rule",
        "unknown-result",
        "resource-and-resources",
        "unknown-policy",
        "unknown-resource",
        "missing-patched-file",
        "missing-policy-file",
        "not-an-exception",
        "policy-among-resources",
        "resource-twice",
        "invalid-yaml",
        "not-a-mapping",
    ],
)
def test_a_malformed_suite_names_the_file_and_the_field(
    samples: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    suite = samples / "tests" / "agentops-test.yaml"
    suite.write_text(text)
    status, lines, _ = run(capsys, str(samples / "tests"))
    assert status == 2, lines
    assert all(line.startswith(f"error: {suite}: ") for line in lines), lines
    assert any(line.startswith(f"error: {suite}: {message}") for line in lines), lines


def test_a_malformed_exception_names_its_file_and_field(
    samples: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exceptions = samples / "tests" / "exceptions.yaml"
    exceptions.write_text(exceptions.read_text().replace("  reason:", "  why:"))
    status, lines, _ = run(capsys, str(samples / "tests"))
    assert status == 2
    assert (
        f"{exceptions}: AgentPolicyException/legacy-bot-replicas: spec.reason: Field required"
        in "\n".join(lines)
    )
    assert (
        f"{exceptions}: AgentPolicyException/legacy-bot-replicas: spec.why: Extra inputs are not permitted"
        in ("\n".join(lines))
    )


def test_a_directory_without_a_suite_and_a_mix_of_modes_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, lines, _ = run(capsys, str(tmp_path))
    assert status == 2
    assert lines == [
        f"error: {tmp_path}: no test suite found (a file named agentops-test.yaml or agentops-test.yml)"
    ]
    status, _, err = run(capsys, str(SUITE), "-f", str(SAMPLES / "research-agent.yaml"))
    assert status == 2
    assert "not both" in err
    status, _, err = run(capsys)
    assert status == 2
    assert "give test suite directories (DIR) or manifests (-f PATH)" in err
