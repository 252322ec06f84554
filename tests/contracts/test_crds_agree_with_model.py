"""The CRDs, the generated YAML and the shared model agree.

1. ``deploy/crds/*.yaml`` is exactly what ``python -m localstack.crds`` writes (no hand edits, no drift).
2. Every sample and a set of generated objects round-trip: what the API server stores (after
   its own schema defaulting) is what :mod:`contracts.resources` produces for the same input, and
   the model reads the stored object back unchanged.  A field the model has and the CRD
   lacks would be pruned by the server; a default set on one side only would differ.
"""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kube
from contracts import resources as models
from localstack.crds import CRD_DIR, HAND_WRITTEN, crd_files
from tests.support.seed import SEED_AGENT, SEED_PIPELINE

SAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "samples"
GROUP, VERSION = models.GROUP, models.VERSION


def test_crd_files_match_the_model() -> None:
    expected = crd_files()
    on_disk = {p: p.read_text() for p in CRD_DIR.glob("*.yaml") if p.name not in HAND_WRITTEN}
    assert set(on_disk) == set(expected), "run `python -m localstack.crds` and commit the result"
    for path, text in expected.items():
        assert on_disk[path] == text, f"{path.name} differs from the model: run `python -m localstack.crds`"


def test_every_resource_has_a_crd(k8s_api: kube.Client) -> None:
    crds = k8s_api.list_items(kube.client.CRD_PATH)
    served = {c["spec"]["names"]["kind"]: c["spec"] for c in crds if c["spec"]["group"] == GROUP}
    assert set(served) == {r.KIND for r in models.RESOURCES}
    for resource in models.RESOURCES:
        spec = served[resource.KIND]
        assert spec["names"]["plural"] == resource.PLURAL
        assert (spec["scope"] == "Namespaced") == resource.NAMESPACED
        assert list(spec["names"].get("shortNames") or []) == list(resource.SHORT_NAMES)


# --- round trips ---------------------------------------------------------------------------------


def _prune_empty(value: Any) -> Any:
    """Drop empty maps and lists: the model writes ``inputs: {}``, the server omits it; same meaning."""
    if isinstance(value, dict):
        pruned = {k: _prune_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_prune_empty(v) for v in value]
    return value


def _path(resource: type[models.Resource], namespace: str, name: str = "") -> str:
    return kube.path(
        f"{GROUP}/{VERSION}",
        resource.PLURAL,
        name or None,
        namespace=namespace if resource.NAMESPACED else None,
    )


def round_trip(api: kube.Client, namespace: str, obj: dict[str, Any]) -> None:
    resource = models.RESOURCE_BY_KIND[obj["kind"]]
    submitted = copy.deepcopy(obj)
    submitted["metadata"] = {"name": f"rt-{uuid.uuid4().hex[:10]}"}
    status = submitted.pop("status", None)
    stored = api.request("POST", _path(resource, namespace), submitted)
    name = stored["metadata"]["name"]
    try:
        if status is not None:
            # Status is a subresource: a create ignores it, so write it the way the controller does.
            stored = api.patch_status(_path(resource, namespace, name), status)
        expected = resource.from_k8s({**obj, "metadata": stored["metadata"]}).to_k8s()
        for part in ("spec", "status"):
            if part in expected or part in stored:
                assert _prune_empty(stored.get(part)) == _prune_empty(expected.get(part)), part
        # And the model reads the server's object back to the same thing.
        reread = resource.from_k8s(stored).to_k8s()
        assert _prune_empty(reread["spec"]) == _prune_empty(stored["spec"])
        if "status" in stored:
            assert _prune_empty(reread["status"]) == _prune_empty(stored["status"])
    finally:
        api.delete(_path(resource, namespace, name))


def _sample_objects() -> Iterator[Any]:
    for path in sorted(SAMPLES.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                yield pytest.param(doc, id=f"{path.stem}-{doc['kind']}")
    yield pytest.param(yaml.safe_load(SEED_AGENT), id="seed-agent")
    yield pytest.param(yaml.safe_load(SEED_PIPELINE), id="seed-pipeline")


NOW = "2026-03-01T10:00:00Z"
FULL_OBJECTS: list[dict[str, Any]] = [
    {
        "apiVersion": models.API_VERSION,
        "kind": "AgentDeployment",
        "metadata": {},
        "spec": {
            "replicas": 2,
            "model": "gpt-4o-mini",
            "provider": "openai",
            "systemPrompt": "Answer briefly.",
            "limits": {"maxTokensPerCall": 100, "maxConcurrentTasks": 3, "timeoutSeconds": 30},
            "livenessProbe": {
                "type": "semantic",
                "intervalSeconds": 45,
                "validatorPrompt": "Ping",
                "expect": "OK",
            },
            "credentials": {"secretRef": {"name": "openai", "key": "token"}},
            "autoscaling": {
                "minReplicas": 1,
                "maxReplicas": 8,
                "targetPendingPerReplica": 4,
                "engine": "keda",
                "cooldownSeconds": 30,
            },
        },
        "status": {
            "replicas": 2,
            "readyReplicas": 1,
            "selector": "agentops.agentops.io/agent=x",
            "observedGeneration": 1,
            "promptHash": "b" * 64,
            "promptRevision": 3,
            "effectiveProvider": "openai",
            "usage": {
                "period": "2026-03",
                "tokens": 1200,
                "costUSD": 0.25,
                "remainingTokens": 5,
                "remainingCostUSD": 1.5,
            },
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "Scaling",
                    "message": "1/2 ready",
                    "lastTransitionTime": NOW,
                    "observedGeneration": 1,
                },
            ],
        },
    },
    {
        "apiVersion": models.API_VERSION,
        "kind": "AgentPipeline",
        "metadata": {},
        "spec": {
            "input": {"topic": "tides"},
            "steps": [
                {
                    "name": "a",
                    "agentDeployment": "x",
                    "inputs": {"prompt": "{{ .pipeline.input.topic }}"},
                    "timeoutSeconds": 20,
                    "retries": 2,
                },
                {
                    "name": "b-2",
                    "agentDeployment": "y",
                    "dependsOn": ["a"],
                    "inputs": {"prompt": "{{ .steps.a.output }}"},
                },
            ],
            "output": "{{ .steps.b-2.output }}",
            "failFast": False,
        },
        "status": {
            "phase": "Running",
            "progress": "1/2",
            "steps": [
                {
                    "name": "a",
                    "phase": "Succeeded",
                    "taskId": "t-1",
                    "attempts": 1,
                    "startTime": NOW,
                    "completionTime": NOW,
                    "output": "water",
                    "outputTruncated": False,
                    "message": "done",
                },
                {"name": "b-2", "phase": "Running", "attempts": 1, "startTime": NOW},
            ],
            "startTime": NOW,
            "observedGeneration": 1,
            "conditions": [{"type": "Ready", "status": "Unknown"}],
        },
    },
    {
        "apiVersion": models.API_VERSION,
        "kind": "AgentPolicy",
        "metadata": {},
        "spec": {
            "mode": "Warn",
            "selector": {
                "matchLabels": {"team": "a"},
                "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}],
            },
            "limits": {
                "maxTokensPerCall": {"default": 100, "max": 200},
                "timeoutSeconds": {"max": 60},
                "maxConcurrentTasks": {"default": 1},
            },
            "replicas": {"max": 4},
            "models": {"allowed": ["claude-*"]},
            "prompts": {"maxBytes": 1000, "requireChangeReason": True},
            "probes": {"minIntervalSeconds": 30},
            "pipelines": {"maxSteps": 5},
            "budget": {"period": "day", "tokens": 1000, "costUSD": 2.5, "scope": "Namespace"},
            "exceptions": {"allowed": True, "maxDurationHours": 72},
        },
    },
    {
        "apiVersion": models.API_VERSION,
        "kind": "AgentPolicyException",
        "metadata": {},
        "spec": {
            "agents": ["research-agent", "summarizer-agent"],
            "policies": [
                {"kind": "ClusterAgentPolicy", "name": "org", "rules": ["limits.maxTokensPerCall", "budget"]},
                {"kind": "AgentPolicy", "name": "team", "rules": list(models.POLICY_RULES)},
            ],
            "expiresAt": NOW,
            "reason": "OPS-42: load test",
        },
    },
    {
        "apiVersion": models.API_VERSION,
        "kind": "ClusterAgentPolicy",
        "metadata": {},
        "spec": {
            "mode": "Audit",
            "namespaceSelector": {"matchLabels": {"env": "prod"}},
            "budget": {"tokens": 10},
        },
    },
    {
        "apiVersion": models.API_VERSION,
        "kind": "AgentPromptRevision",
        "metadata": {},
        "spec": {
            "agent": "research-agent",
            "revision": 2,
            "prompt": "New prompt",
            "sha256": "c" * 64,
            "previousSha256": "d" * 64,
            "author": {"username": "alice", "uid": "u-1", "groups": ["system:authenticated"]},
            "reason": "tone",
            "time": NOW,
        },
    },
]


@pytest.mark.parametrize("obj", list(_sample_objects()))
def test_sample_round_trip(k8s_api: kube.Client, namespace: str, obj: dict[str, Any]) -> None:
    round_trip(k8s_api, namespace, obj)


@pytest.mark.parametrize("obj", FULL_OBJECTS, ids=[o["kind"] for o in FULL_OBJECTS])
def test_every_field_round_trips(k8s_api: kube.Client, namespace: str, obj: dict[str, Any]) -> None:
    round_trip(k8s_api, namespace, obj)


_dns = st.from_regex(r"\A[a-z]([a-z0-9-]{0,10}[a-z0-9])?\Z")
_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs", "Cc"]), min_size=1, max_size=40)
_agent_specs = st.fixed_dictionaries(
    {"model": st.sampled_from(["claude-sonnet-4", "gpt-4o", "offline-echo"]), "systemPrompt": _text},
    optional={
        "replicas": st.integers(0, 50),
        "provider": st.sampled_from(["anthropic", "openai", "offline"]),
        "limits": st.fixed_dictionaries({}, optional={n: st.integers(1, 10**6) for n in models.Limits.NAMES}),
        "livenessProbe": st.fixed_dictionaries(
            {"type": st.just("semantic"), "validatorPrompt": _text},
            optional={"intervalSeconds": st.integers(1, 3600), "expect": _text},
        )
        | st.fixed_dictionaries(
            {"type": st.just("ping")}, optional={"intervalSeconds": st.integers(1, 3600)}
        ),
        "credentials": st.fixed_dictionaries(
            {"secretRef": st.fixed_dictionaries({"name": _dns, "key": _dns})}
        ),
    },
)


@pytest.fixture(scope="module")
def roundtrip_namespace(k8s_api: kube.Client) -> Iterator[str]:
    # Hypothesis runs many examples per test; a module namespace avoids one namespace per example.
    name = f"t-roundtrip-{uuid.uuid4().hex[:8]}"
    k8s_api.create(kube.path("v1", "namespaces"), {"metadata": {"name": name}})
    yield name
    k8s_api.delete(kube.path("v1", "namespaces", name))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(spec=_agent_specs)
def test_generated_agents_round_trip(
    k8s_api: kube.Client, roundtrip_namespace: str, spec: dict[str, Any]
) -> None:
    obj = {"apiVersion": models.API_VERSION, "kind": "AgentDeployment", "metadata": {}, "spec": spec}
    round_trip(k8s_api, roundtrip_namespace, obj)
