"""The webhook's HTTP layer over real TLS: uvicorn in a thread, httpx as the client.

The policy source here is a :class:`~webhook.cache.StaticPolicySource` (a fixed snapshot), so
these tests pin down the HTTP contract: status codes, AdmissionReview responses, fail-closed
behaviour, cache completion of Scale requests, metrics.  The watch cache itself is tested against
the real API server in ``test_cache.py``, and everything together in ``test_e2e.py``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from contracts.resources import API_VERSION, AgentPolicyException
from policies.engine import PolicySet
from tests.support.waiting import eventually
from tests.webhook.conftest import Served, serve
from tests.webhook.reviews import agent, apply_patch, cluster_policy, review, scale_review
from webhook.app import create_app
from webhook.cache import Snapshot, StaticPolicySource

POLICY = cluster_policy(selector={"matchLabels": {"tier": "small"}}, replicas={"max": 2})
SNAPSHOT = Snapshot(
    PolicySet(cluster=(cluster_policy("org-defaults"), POLICY)),
    namespace_labels={"team-a": {"kubernetes.io/metadata.name": "team-a"}},
    agent_labels={("team-a", "small-agent"): {"tier": "small"}, ("team-a", "big-agent"): {}},
)


@pytest.fixture
def served(cert_dir: Path, caplog: pytest.LogCaptureFixture) -> Iterator[Served]:
    # INFO on, as in the real process: logging with bad ``extra`` keys only fails when enabled.
    caplog.set_level(logging.INFO)
    with serve(create_app(StaticPolicySource(SNAPSHOT)), cert_dir) as s:
        yield s


@pytest.fixture
def http(served: Served) -> Iterator[httpx.Client]:
    with served.client(timeout=10) as c:
        yield c


def response_of(http: httpx.Client, endpoint: str, body: Mapping[str, Any]) -> dict[str, Any]:
    reply = http.post(endpoint, json=body)
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert data["apiVersion"] == "admission.k8s.io/v1"
    assert data["kind"] == "AdmissionReview"
    answer: dict[str, Any] = data["response"]
    assert answer["uid"] == body["request"]["uid"]
    return answer


def test_health_and_readiness(http: httpx.Client) -> None:
    assert http.get("/healthz").text == "ok"
    assert http.get("/readyz").status_code == 200


def test_not_ready_and_fail_closed_until_the_cache_has_synced(cert_dir: Path) -> None:
    with (
        serve(create_app(StaticPolicySource(SNAPSHOT, synced=False)), cert_dir) as served,
        served.client() as http,
    ):
        assert http.get("/readyz").status_code == 503
        answer = response_of(http, "/validate", review(agent()))
        assert answer["allowed"] is False
        assert "policy cache not synced" in answer["status"]["message"]


def test_mutate_fills_missing_limits_and_stamps_the_author(http: httpx.Client) -> None:
    obj = agent()
    answer = response_of(http, "/mutate", review(obj, user="alice"))
    assert answer["allowed"] is True
    patched = apply_patch(obj, answer)
    assert patched["spec"]["limits"] == {
        "maxTokensPerCall": 4000,
        "maxConcurrentTasks": 2,
        "timeoutSeconds": 60,
    }
    annotations = patched["metadata"]["annotations"]
    assert annotations["agentops.agentops.io/prompt-changed-by"] == "alice"
    assert len(annotations["agentops.agentops.io/prompt-sha256"]) == 64
    # What the mutating webhook produced passes the validating webhook.
    assert response_of(http, "/validate", review(patched, user="alice"))["allowed"] is True


def test_validate_denies_over_the_ceiling_naming_field_value_limit_and_policy(http: httpx.Client) -> None:
    obj = agent(limits={"maxTokensPerCall": 50000, "maxConcurrentTasks": 1, "timeoutSeconds": 10})
    mutated = apply_patch(obj, response_of(http, "/mutate", review(obj)))
    answer = response_of(http, "/validate", review(mutated))
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    message = answer["status"]["message"]
    assert (
        "spec.limits.maxTokensPerCall: 50000 exceeds 16000 set by ClusterAgentPolicy/org-defaults" in message
    )


def test_an_exception_stops_excusing_when_the_clock_passes_its_expiry(cert_dir: Path) -> None:
    # One snapshot, one process: only time changes between the two answers, so nothing may have
    # cached the first verdict or judged expiry once when the exception arrived.
    expires_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1.5)
    waiver = AgentPolicyException.from_k8s(
        {
            "apiVersion": API_VERSION,
            "kind": "AgentPolicyException",
            "metadata": {"name": "waiver", "namespace": "team-a"},
            "spec": {
                "agents": ["greedy"],
                "policies": [{"name": "org-defaults", "rules": ["limits.maxTokensPerCall"]}],
                "expiresAt": expires_at.isoformat(),
                "reason": "OPS-1",
            },
        }
    )
    snapshot = Snapshot(
        PolicySet(cluster=SNAPSHOT.policies.cluster, exceptions=(waiver,)),
        namespace_labels=SNAPSHOT.namespace_labels,
        agent_labels=SNAPSHOT.agent_labels,
    )
    obj = agent("greedy", limits={"maxTokensPerCall": 50000, "maxConcurrentTasks": 1, "timeoutSeconds": 10})
    with serve(create_app(StaticPolicySource(snapshot)), cert_dir) as served, served.client() as http:
        mutated = apply_patch(obj, response_of(http, "/mutate", review(obj)))
        excused = response_of(http, "/validate", review(mutated))
        assert excused["allowed"] is True, excused
        (warning,) = [w for w in excused["warnings"] if "maxTokensPerCall: 50000" in w]
        assert "AgentPolicyException/team-a/waiver" in warning
        assert "OPS-1" in warning
        eventually("the clock passes expiresAt", lambda: dt.datetime.now(dt.UTC) > expires_at, within=5)
        expired = response_of(http, "/validate", review(mutated))
        assert expired["allowed"] is False
        assert "spec.limits.maxTokensPerCall: 50000 exceeds 16000" in expired["status"]["message"]
        assert "waiver" not in expired["status"]["message"]


def test_scale_is_checked_against_the_scaled_agents_labels_from_the_cache(http: httpx.Client) -> None:
    # "small-agent" carries tier=small in the cache, so the replicas.max=2 policy applies to it.
    denied = response_of(http, "/validate", scale_review("team-a", "small-agent", 5))
    assert denied["allowed"] is False
    assert "spec.replicas: 5 exceeds 2" in denied["status"]["message"]
    # Same request for an agent without the label: only the org ceiling (10) applies.
    assert response_of(http, "/validate", scale_review("team-a", "big-agent", 5))["allowed"] is True
    assert response_of(http, "/validate", scale_review("team-a", "big-agent", 11))["allowed"] is False


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{not json", "body is not JSON"),
        (b"[]", "must be a JSON object"),
        (b'{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview"}', "expected apiVersion"),
        (b'{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": 3}', "request"),
        (b"\xff\xfe\x00", "body is not JSON"),
        (b"[" * 200_000, "body is not JSON"),  # nesting deeper than the parser's recursion limit
    ],
)
def test_malformed_reviews_get_400_with_a_clear_message(
    http: httpx.Client, body: bytes, expected: str
) -> None:
    for endpoint in ("/mutate", "/validate"):
        reply = http.post(endpoint, content=body, headers={"Content-Type": "application/json"})
        assert reply.status_code == 400
        assert expected in reply.json()["message"]
    assert http.get("/healthz").status_code == 200  # still serving


def test_an_oversized_body_is_refused_without_buffering_it(http: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        # Chunked, no Content-Length: the server must stop reading on its own.
        for _ in range(5 * 1024):
            yield b" " * 1024

    reply = http.post("/validate", content=chunks())
    assert reply.status_code == 400
    assert "exceeds" in reply.json()["message"]
    assert http.get("/healthz").status_code == 200


def test_a_review_sent_in_chunks_is_decided_like_one_sent_whole(http: httpx.Client) -> None:
    # The admission routes read the ASGI body stream themselves; a body split over several
    # messages (chunked transfer encoding) must be joined, not cut at the first chunk.
    body = review(agent("chunked", limits={"maxTokensPerCall": 50000}))
    raw = json.dumps(body).encode()
    pieces = [raw[i : i + 100] for i in range(0, len(raw), 100)]
    reply = http.post("/validate", content=iter(pieces))
    assert reply.status_code == 200, reply.text
    answer = reply.json()["response"]
    assert answer["uid"] == body["request"]["uid"]
    assert answer["allowed"] is False
    assert "maxTokensPerCall: 50000" in answer["status"]["message"]


def test_admission_routes_answer_only_post(http: httpx.Client) -> None:
    for endpoint in ("/mutate", "/validate"):
        reply = http.get(endpoint)
        assert reply.status_code == 405
        assert reply.headers["allow"] == "POST"
    assert http.get("/no-such-path").status_code == 404
    assert http.get("/healthz").status_code == 200


class ExplodingSource(StaticPolicySource):
    def snapshot(self) -> Snapshot:
        # Exception messages may quote object contents (a prompt); they must not reach the logs.
        raise RuntimeError("boom: SECRET PROMPT TEXT")


def test_an_internal_error_denies_and_is_logged_with_the_uid(
    cert_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with serve(create_app(ExplodingSource(SNAPSHOT)), cert_dir) as served, served.client() as http:
        body = review(agent(systemPrompt="SECRET PROMPT TEXT"))
        with caplog.at_level(logging.INFO, logger="webhook.admission"):
            answer = response_of(http, "/validate", body)
        assert answer["allowed"] is False
        assert "internal error" in answer["status"]["message"]
        records = [r for r in caplog.records if r.name == "webhook.admission"]
        (record,) = [r for r in records if getattr(r, "uid", None) == body["request"]["uid"]]
        assert record.error_type == "builtins.RuntimeError"  # type: ignore[attr-defined]
        assert any("snapshot" in frame for frame in record.stack)  # type: ignore[attr-defined]
        assert "SECRET PROMPT TEXT" not in caplog.text
        assert all("SECRET PROMPT TEXT" not in repr(vars(r)) for r in caplog.records)
        assert http.get("/healthz").status_code == 200


def test_metrics_count_requests_by_resource_operation_and_decision(http: httpx.Client) -> None:
    obj = agent(limits={"maxTokensPerCall": 50000, "maxConcurrentTasks": 1, "timeoutSeconds": 10})
    response_of(http, "/validate", review(obj))
    response_of(http, "/validate", scale_review("team-a", "small-agent", 1))
    http.post("/validate", content=b"nope")
    text = http.get("/metrics").text
    assert (
        'agentops_webhook_requests_total{decision="denied",endpoint="validate",'
        'operation="CREATE",resource="agentdeployments"} 1.0'
    ) in text
    assert (
        'agentops_webhook_requests_total{decision="allowed",endpoint="validate",'
        'operation="UPDATE",resource="agentdeployments/scale"} 1.0'
    ) in text
    assert 'decision="malformed",endpoint="validate",operation="other",resource="other"} 1.0' in text
    assert 'agentops_webhook_request_duration_seconds_count{endpoint="validate"} 3.0' in text
    assert 'agentops_webhook_policy_cache_objects{kind="ClusterAgentPolicy"} 2.0' in text
    assert "agentops_webhook_policy_cache_synced 1.0" in text


def test_objects_missing_from_the_cache_deny_with_retry_only_when_labels_matter(cert_dir: Path) -> None:
    by_team = cluster_policy("by-team", namespaceSelector={"matchLabels": {"team": "blue"}})
    selective = StaticPolicySource(Snapshot(PolicySet(cluster=(cluster_policy("org-defaults"), by_team))))
    with serve(create_app(selective), cert_dir) as served, served.client() as http:
        # A namespace the cache has not seen, and a policy that selects namespaces by "team".
        answer = response_of(http, "/validate", review(agent(namespace="brand-new")))
        assert answer["allowed"] is False
        assert "namespace brand-new is not in the webhook's watch cache yet" in answer["status"]["message"]
        assert "retry" in answer["status"]["message"]
    # Without label selectors the missing labels cannot change the decision: decided exactly.
    plain = StaticPolicySource(Snapshot(PolicySet(cluster=(cluster_policy("org-defaults"),))))
    with serve(create_app(plain), cert_dir) as served, served.client() as http:
        limited = agent(
            namespace="brand-new",
            limits={"maxTokensPerCall": 1, "maxConcurrentTasks": 1, "timeoutSeconds": 1},
        )
        mutated = apply_patch(limited, response_of(http, "/mutate", review(limited, user="alice")))
        answer = response_of(http, "/validate", review(mutated, user="alice"))
        assert answer["allowed"] is True, answer
        assert response_of(http, "/validate", scale_review("brand-new", "unknown", 5))["allowed"] is True
        assert response_of(http, "/validate", scale_review("brand-new", "unknown", 11))["allowed"] is False


def test_scale_of_an_agent_missing_from_the_cache_is_not_decided_without_its_labels(
    http: httpx.Client,
) -> None:
    # SNAPSHOT has a policy selecting agents by tier: the unknown agent's labels matter.
    answer = response_of(http, "/validate", scale_review("team-a", "not-cached", 1))
    assert answer["allowed"] is False
    assert (
        "AgentDeployment team-a/not-cached is not in the webhook's watch cache yet"
        in answer["status"]["message"]
    )
