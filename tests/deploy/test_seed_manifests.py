"""The seed article's user experience with the real API server and the machine's kubectl."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.support.kubectl import Kubectl
from tests.support.seed import SEED_AGENT, SEED_PIPELINE, SEED_PROBE

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"


def test_samples_are_the_seed_manifests() -> None:
    assert yaml.safe_load((SAMPLES / "research-agent.yaml").read_text()) == yaml.safe_load(SEED_AGENT)
    assert yaml.safe_load((SAMPLES / "research-then-summarize.yaml").read_text()) == yaml.safe_load(
        SEED_PIPELINE
    )


def test_seed_agent_and_pipeline_apply_unchanged(kubectl: Kubectl) -> None:
    out = kubectl("apply", "-f", "-", input=SEED_AGENT).stdout
    assert "agentdeployment.agentops.agentops.io/research-agent created" in out
    out = kubectl("apply", "-f", "-", input=SEED_PIPELINE).stdout
    assert "agentpipeline.agentops.agentops.io/research-then-summarize created" in out

    stored = kubectl.json("get", "agentdeployment", "research-agent")
    assert stored["spec"]["replicas"] == 3
    assert stored["spec"]["limits"] == {
        "maxTokensPerCall": 8000,
        "maxConcurrentTasks": 5,
        "timeoutSeconds": 120,
    }
    assert stored["spec"]["systemPrompt"].startswith("You are a research agent.")
    pipeline = kubectl.json("get", "agpipe", "research-then-summarize")
    assert [s["name"] for s in pipeline["spec"]["steps"]] == ["research", "summarize"]
    assert pipeline["spec"]["steps"][1]["dependsOn"] == ["research"]


def test_seed_semantic_probe_applies(kubectl: Kubectl) -> None:
    agent = yaml.safe_load(SEED_AGENT)
    agent["spec"].update(yaml.safe_load(SEED_PROBE))
    kubectl("apply", "-f", "-", input=yaml.safe_dump(agent))
    probe = kubectl.json("get", "agdep", "research-agent")["spec"]["livenessProbe"]
    assert probe["type"] == "semantic"
    assert probe["validatorPrompt"] == "Reply with exactly one word: HEALTHY"


def test_get_agdep_shows_model_replicas_ready_violation_age(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", input=SEED_AGENT)
    lines = kubectl("get", "agdep").stdout.splitlines()
    assert lines[0].split() == ["NAME", "MODEL", "REPLICAS", "READY", "VIOLATION", "AGE"]
    row = lines[1].split()
    assert row[:3] == ["research-agent", "claude-sonnet-4-20250514", "3"]
    # READY and VIOLATION (the PolicyViolation condition's status) are empty until the controller
    # reports status; AGE is the last column, e.g. "0s".
    assert re.fullmatch(r"\d+[smhd]", row[-1])


def test_patch_and_scale_change_spec_replicas(kubectl: Kubectl) -> None:
    kubectl("apply", "-f", "-", input=SEED_AGENT)
    kubectl("patch", "agdep", "research-agent", "--type=merge", "-p", '{"spec":{"replicas":10}}')
    assert kubectl.json("get", "agdep", "research-agent")["spec"]["replicas"] == 10

    out = kubectl("scale", "agdep", "research-agent", "--replicas=2").stdout
    assert "scaled" in out
    assert kubectl.json("get", "agdep", "research-agent")["spec"]["replicas"] == 2

    # The scale subresource is what a HorizontalPodAutoscaler reads and writes.
    scale = json.loads(kubectl("get", "--raw", _scale_path(kubectl, "research-agent"), namespace="").stdout)
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 2


def _scale_path(kubectl: Kubectl, name: str) -> str:
    return f"/apis/agentops.agentops.io/v1alpha1/namespaces/{kubectl.namespace}/agentdeployments/{name}/scale"
