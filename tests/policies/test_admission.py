"""AdmissionReview v1 decoding and the response the webhook sends."""

from __future__ import annotations

import base64
import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from policies.admission import MalformedReview, parse_admission_review, review_response
from policies.engine import Decision, UserInfo

NOW = datetime(2026, 1, 2, tzinfo=UTC)


def review(**request: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
        "kind": {"group": "agentops.agentops.io", "version": "v1alpha1", "kind": "AgentDeployment"},
        "resource": {"group": "agentops.agentops.io", "version": "v1alpha1", "resource": "agentdeployments"},
        "namespace": "team",
        "name": "researcher",
        "operation": "CREATE",
        "userInfo": {"username": "alice", "uid": "u-1", "groups": ["dev", "system:authenticated"]},
        "object": {"kind": "AgentDeployment", "metadata": {"name": "researcher"}},
        "oldObject": None,
        "dryRun": False,
    }
    body.update(request)
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": body}


def test_a_create_review_is_decoded() -> None:
    req = parse_admission_review(review(), now=NOW)
    assert req.uid == "705ab4f5-6393-11e8-b7cc-42010a800002"
    assert (req.kind, req.operation, req.namespace, req.name) == (
        "AgentDeployment",
        "CREATE",
        "team",
        "researcher",
    )
    assert req.user == UserInfo("alice", "u-1", ("dev", "system:authenticated"))
    assert req.object == {"kind": "AgentDeployment", "metadata": {"name": "researcher"}}
    assert req.old_object is None
    assert req.now == NOW
    assert not req.dry_run
    assert req.sub_resource is None


def test_a_scale_review_is_decoded() -> None:
    req = parse_admission_review(
        review(
            kind={"group": "autoscaling", "version": "v1", "kind": "Scale"},
            subResource="scale",
            operation="UPDATE",
            dryRun=True,
            object={"kind": "Scale", "spec": {"replicas": 3}},
        ),
        now=NOW,
    )
    assert (req.kind, req.sub_resource, req.dry_run) == ("Scale", "scale", True)


def test_cluster_scoped_and_minimal_user_info() -> None:
    req = parse_admission_review(review(namespace=None, userInfo={"username": "system:admin"}), now=NOW)
    assert req.namespace is None
    assert req.user == UserInfo("system:admin")


def broken(path: str, value: Any) -> dict[str, Any]:
    body = review()
    parts = path.split(".")
    target = body
    for part in parts[:-1]:
        target = target[part]
    if value is ...:
        del target[parts[-1]]
    else:
        target[parts[-1]] = value
    return body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        pytest.param([], "the body must be a JSON object (an AdmissionReview), got list", id="list"),
        pytest.param(None, "the body must be a JSON object (an AdmissionReview), got nothing", id="none"),
        pytest.param(
            broken("apiVersion", "admission.k8s.io/v1beta1"),
            "expected apiVersion admission.k8s.io/v1 and kind AdmissionReview, got apiVersion "
            "'admission.k8s.io/v1beta1' and kind 'AdmissionReview'",
            id="v1beta1",
        ),
        pytest.param(broken("request", ...), "request: must be an object, got nothing", id="no-request"),
        pytest.param(
            broken("request.uid", ...), "request.uid: must be a non-empty string, got nothing", id="no-uid"
        ),
        pytest.param(
            broken("request.uid", ""), "request.uid: must be a non-empty string, got str", id="empty-uid"
        ),
        pytest.param(
            broken("request.kind", "AgentDeployment"),
            "request.kind: must be an object with a non-empty string kind (group, version, kind)",
            id="kind-string",
        ),
        pytest.param(
            broken("request.operation", "PATCH"),
            "request.operation: 'PATCH' is not one of CONNECT, CREATE, DELETE, UPDATE",
            id="operation",
        ),
        pytest.param(
            broken("request.userInfo", ...), "request.userInfo: must be an object, got nothing", id="no-user"
        ),
        pytest.param(
            broken("request.userInfo.username", 7),
            "request.userInfo.username: must be a string, got int",
            id="username",
        ),
        pytest.param(
            broken("request.userInfo.groups", "dev"),
            "request.userInfo.groups: must be a list of strings",
            id="groups",
        ),
        pytest.param(
            broken("request.object", "{}"), "request.object: must be an object or null, got str", id="object"
        ),
        pytest.param(
            broken("request.oldObject", [1]),
            "request.oldObject: must be an object or null, got list",
            id="old",
        ),
        pytest.param(
            broken("request.dryRun", "yes"), "request.dryRun: must be a boolean, got str", id="dry-run"
        ),
        pytest.param(
            broken("request.namespace", 3),
            "request.namespace: must be a non-empty string, got int",
            id="namespace",
        ),
    ],
)
def test_malformed_reviews_say_what_is_wrong(body: Any, message: str) -> None:
    with pytest.raises(MalformedReview) as err:
        parse_admission_review(copy.deepcopy(body), now=NOW)
    assert str(err.value) == message
    assert isinstance(err.value, ValueError)


def test_allowed_response_carries_the_patch_and_warnings() -> None:
    patch = ({"op": "add", "path": "/spec/limits", "value": {"timeoutSeconds": 60}},)
    out = review_response("u1", Decision(allowed=True, patch=patch, warnings=("careful",)))
    response = out["response"]
    assert out["apiVersion"] == "admission.k8s.io/v1"
    assert out["kind"] == "AdmissionReview"
    assert response["uid"] == "u1"
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == list(patch)
    assert response["warnings"] == ["careful"]
    assert "status" not in response


def test_allowed_response_without_patch_has_no_patch_type() -> None:
    response = review_response("u1", Decision(allowed=True))["response"]
    assert response == {"uid": "u1", "allowed": True}


def test_denied_response_has_403_and_every_message() -> None:
    decision = Decision(allowed=False, denials=("a: 2 exceeds 1 set by X/y", "b: bad"))
    response = review_response("u2", decision)["response"]
    assert response["allowed"] is False
    assert response["status"] == {
        "code": 403,
        "reason": "Forbidden",
        "message": "a: 2 exceeds 1 set by X/y; b: bad",
    }
    assert "patch" not in response


def test_audit_violations_become_audit_annotations() -> None:
    response = review_response("u3", Decision(allowed=True, audit=("x: 3 exceeds 1",)))["response"]
    assert json.loads(response["auditAnnotations"]["policy-violations"]) == ["x: 3 exceeds 1"]


def test_overlong_warnings_are_cut() -> None:
    response = review_response("u4", Decision(allowed=True, warnings=("w" * 400,)))["response"]
    assert len(response["warnings"][0]) == 256
    assert response["warnings"][0].endswith("...")


def test_a_long_excused_warning_keeps_the_exception_that_excused_it() -> None:
    note = (
        " (excepted by AgentPolicyException/team-with-a-long-name/load-test"
        " until 2026-03-01T18:00:00Z: OPS-42)"
    )
    violation = "spec.limits.maxTokensPerCall: 50000 exceeds 16000 set by ClusterAgentPolicy/" + "o" * 200
    plain = "spec.replicas: 9 exceeds 4 set by AgentPolicy/" + "p" * 300
    response = review_response("u", Decision(allowed=True, warnings=(violation + note, plain)))["response"]
    excused, cut = response["warnings"]
    assert len(excused) == 256
    assert excused.endswith("..." + note), excused
    assert excused.startswith("spec.limits.maxTokensPerCall: 50000 exceeds 16000")
    assert len(cut) == 256
    assert cut.endswith("...")
    assert cut.startswith("spec.replicas: 9 exceeds 4")
