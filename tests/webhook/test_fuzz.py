"""Fuzzing the running webhook over HTTPS with malformed and random AdmissionReviews.

Target: the same ``python -m webhook`` process the end-to-end tests use (real TLS, real watch
cache).  Three generators, bounded and derandomized so a failure reproduces:

- random bytes (not JSON, truncated JSON, binary);
- random JSON values of any shape;
- valid AdmissionReviews of every kind with random parts replaced by random JSON values.

Every answer must be 200 (an AdmissionReview response for the request's uid, allowed or denied)
or 400 (malformed, with a message); never a 5xx, never a dropped connection; and the process
must still be alive and answering a well-formed review correctly afterwards.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhook.conftest import WebhookProcess
from tests.webhook.reviews import agent, review, scale_review

FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=25,
)


def _seeds() -> list[dict[str, Any]]:
    pipeline = {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPipeline",
        "metadata": {"name": "p", "namespace": "fuzz"},
        "spec": {
            "input": {"topic": "x"},
            "steps": [
                {"name": "a", "agentDeployment": "x", "inputs": {"prompt": "{{ .pipeline.input.topic }}"}},
                {
                    "name": "b",
                    "agentDeployment": "y",
                    "dependsOn": ["a"],
                    "inputs": {"p": "{{ .steps.a.output }}"},
                },
            ],
        },
    }
    policy = {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPolicy",
        "metadata": {"name": "pol", "namespace": "fuzz"},
        "spec": {"mode": "Warn", "limits": {"maxTokensPerCall": {"default": 10, "max": 20}}},
    }
    revision = {
        "apiVersion": "agentops.agentops.io/v1alpha1",
        "kind": "AgentPromptRevision",
        "metadata": {"name": "r", "namespace": "fuzz"},
        "spec": {"agent": "a", "revision": 1, "prompt": "p", "sha256": "0" * 64, "author": {"username": "u"},
                 "time": "2026-01-01T00:00:00Z"},
    }  # fmt: skip
    old = agent(
        namespace="fuzz", limits={"maxTokensPerCall": 5, "maxConcurrentTasks": 1, "timeoutSeconds": 1}
    )
    return [
        review(agent(namespace="fuzz")),
        review(agent(namespace="fuzz", replicas=3), operation="UPDATE", old=old),
        review(pipeline),
        review(policy),
        review(revision),
        scale_review("fuzz", "agent", 50),
    ]


SEEDS = _seeds()


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _paths(child, (*prefix, index))


def _replace(doc: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    parent = doc
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = new
    return doc


@st.composite
def mutated_reviews(draw: st.DrawFn) -> Any:
    doc: Any = copy.deepcopy(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        paths = list(_paths(doc))
        path = draw(st.sampled_from(paths))
        doc = _replace(doc, path, draw(json_values))
    return doc


@pytest.fixture(scope="module")
def http(webhook: WebhookProcess) -> Iterator[httpx.Client]:
    with webhook.client(timeout=10) as client:
        yield client


def check_answer(http: httpx.Client, body: bytes, sent: Any = None) -> None:
    for endpoint in ("/mutate", "/validate"):
        reply = http.post(endpoint, content=body, headers={"Content-Type": "application/json"})
        assert reply.status_code in (200, 400), f"{endpoint} answered {reply.status_code}: {reply.text[:300]}"
        data = reply.json()
        if reply.status_code == 400:
            assert data["message"], "a 400 must say what is wrong"
            continue
        answer = data["response"]
        assert isinstance(answer["allowed"], bool)
        if isinstance(sent, dict) and isinstance(sent.get("request"), dict):
            assert answer["uid"] == sent["request"].get("uid")
        if not answer["allowed"]:
            assert answer["status"]["message"]


@FUZZ_SETTINGS
@given(body=st.binary(max_size=300))
def test_random_bytes(http: httpx.Client, body: bytes) -> None:
    check_answer(http, body)


@FUZZ_SETTINGS
@given(value=json_values)
def test_random_json(http: httpx.Client, value: Any) -> None:
    check_answer(http, json.dumps(value).encode(), value)


@FUZZ_SETTINGS
@given(doc=mutated_reviews())
def test_mutated_admission_reviews(http: httpx.Client, doc: Any) -> None:
    check_answer(http, json.dumps(doc).encode(), doc)


@FUZZ_SETTINGS
@given(doc=st.sampled_from(SEEDS), cut=st.integers(0, 2000))
def test_truncated_reviews(http: httpx.Client, doc: Any, cut: int) -> None:
    raw = json.dumps(doc).encode()
    check_answer(http, raw[: cut % max(len(raw), 1)])


def test_still_alive_and_correct_after_fuzzing(webhook: WebhookProcess, http: httpx.Client) -> None:
    assert webhook.alive()
    assert http.get("/healthz").status_code == 200
    assert http.get("/readyz").status_code == 200
    body = review(
        agent(namespace="fuzz", limits={"maxTokensPerCall": 5, "maxConcurrentTasks": 1, "timeoutSeconds": 1})
    )
    reply = http.post("/validate", json=body)
    assert reply.status_code == 200
    assert reply.json()["response"]["uid"] == body["request"]["uid"]
    assert '"level": "error"' not in webhook.logs(), "the webhook logged errors while being fuzzed"
