"""The in-cluster manifests: consistent with the code, least privilege, accepted by the API server.

- the webhook configurations in ``deploy/manifests`` are exactly what :mod:`webhook.registration`
  builds, and carry the required settings;
- the RBAC has no wildcard and, applied for real (renamed into the test namespace), grants the
  webhook's service account what it needs and nothing more, as ``kubectl auth can-i`` reports;
- every manifest passes a server-side dry run against the real API server.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from contracts.resources import RESOURCE_BY_PLURAL
from policies import engine
from policies.review import ALLOW, AdmissionRequest, PolicySet, UserInfo
from tests.support.kubectl import Kubectl
from webhook.registration import ClientConfig, configurations

MANIFESTS = Path(__file__).resolve().parents[2] / "deploy" / "manifests"


def load(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((MANIFESTS / name).read_text()) if d]


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind)


def test_configurations_match_the_code() -> None:
    expected = configurations(
        ClientConfig(service_name="agentops-webhook", service_namespace="agentops-system")
    )
    assert load("webhook-configurations.yaml") == list(expected)


def test_configurations_have_the_required_settings() -> None:
    mutating, validating = load("webhook-configurations.yaml")
    for config in (mutating, validating):
        (hook,) = config["webhooks"]
        assert hook["failurePolicy"] == "Fail"
        assert hook["sideEffects"] == "None"
        assert hook["matchPolicy"] == "Equivalent"
        assert hook["timeoutSeconds"] <= 5
        assert hook["admissionReviewVersions"] == ["v1"]
        assert hook["namespaceSelector"]["matchExpressions"] == [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["agentops-system"]}
        ]
        (rule,) = hook["rules"]
        assert rule["apiGroups"] == ["agentops.agentops.io"]
        assert rule["operations"] == ["CREATE", "UPDATE"]
    # Every kind of ours is validated; only what the engine mutates is sent to the mutating webhook.
    assert set(validating["webhooks"][0]["rules"][0]["resources"]) == {
        "agentdeployments", "agentdeployments/scale", "agentpipelines", "agentpolicies",
        "agentpolicyexceptions", "agentpromptrevisions", "clusteragentpolicies",
    }  # fmt: skip
    assert mutating["webhooks"][0]["rules"][0]["resources"] == ["agentdeployments"]
    assert mutating["webhooks"][0]["reinvocationPolicy"] == "IfNeeded"


def test_the_mutating_webhook_matches_exactly_the_kinds_the_engine_mutates() -> None:
    """A kind the engine leaves alone would cost a hop that always answers "unchanged"; a kind it
    changes but the rules miss would never be filled in or stamped."""
    mutated = {k for k, rules in engine.RULES.items() if rules.mutate is not None}
    assert mutated == {"AgentDeployment"}
    mutating, _ = configurations(ClientConfig(url="https://127.0.0.1:1"))
    (rule,) = mutating["webhooks"][0]["rules"]
    matched = {RESOURCE_BY_PLURAL[plural].KIND for plural in rule["resources"]}
    assert matched == mutated
    # Unmatched kinds and Scales are allowed unchanged by mutate, so leaving them out loses nothing.
    for kind in set(engine.RULES) - mutated:
        request = AdmissionRequest(
            uid="u", kind=kind, operation="CREATE", namespace="ns", name="x", object={},
            old_object=None, user=UserInfo(username="u"), now=datetime.now(UTC),
            sub_resource="scale" if kind == "Scale" else None,
        )  # fmt: skip
        assert engine.mutate(request, PolicySet()) == ALLOW


def test_rbac_has_no_wildcards_and_names_its_secret_and_configurations() -> None:
    docs = load("rbac-webhook.yaml")
    for doc in docs:
        for rule in doc.get("rules", []):
            for key in ("apiGroups", "resources", "verbs", "resourceNames"):
                assert "*" not in rule.get(key, []), (
                    f"{doc['kind']}/{doc['metadata']['name']}: wildcard in {key}"
                )
    role = by_kind(docs, "Role")
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "resourceNames": ["agentops-webhook-tls"],
            "verbs": ["get", "update", "watch"],
        }
    ]


def test_deployment_is_highly_available_non_root_and_probed() -> None:
    docs = load("webhook.yaml")
    deployment = by_kind(docs, "Deployment")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    pdb = by_kind(docs, "PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    assert pdb["spec"]["minAvailable"] == 1
    assert by_kind(docs, "Service")["spec"]["selector"] == pdb["spec"]["selector"]["matchLabels"]
    # The args name the Secret and the configurations the RBAC allows, and nothing else.
    args = " ".join(container["args"])
    assert "--secret=agentops-system/agentops-webhook-tls" in args
    assert "--mutating=agentops-admission" in args
    assert "--validating=agentops-admission" in args


def _into_namespace(doc: dict[str, Any], namespace: str, suffix: str) -> dict[str, Any]:
    """The same object, moved into the test namespace (and renamed when cluster-scoped)."""
    doc = copy.deepcopy(doc)
    if "namespace" in doc["metadata"]:
        doc["metadata"]["namespace"] = namespace
    if doc["kind"] in ("ClusterRole", "ClusterRoleBinding"):
        doc["metadata"]["name"] += f"-{suffix}"
    if doc["kind"] == "ClusterRoleBinding":
        doc["roleRef"]["name"] += f"-{suffix}"
    for subject in doc.get("subjects", []):
        subject["namespace"] = namespace
    return doc


@pytest.fixture
def webhook_rbac(namespace: str, cluster_kubectl: Kubectl) -> Iterator[str]:
    docs = [_into_namespace(d, namespace, namespace) for d in load("rbac-webhook.yaml")]
    cluster_kubectl("apply", "-f", "-", input=yaml.safe_dump_all(docs))
    try:
        yield f"system:serviceaccount:{namespace}:agentops-webhook"
    finally:
        for kind in ("clusterrolebinding", "clusterrole"):
            cluster_kubectl("delete", kind, f"agentops-webhook-{namespace}", "--ignore-not-found")


CAN_I = [
    ("list", "clusteragentpolicies.agentops.agentops.io", True),
    ("watch", "agentpolicies.agentops.agentops.io", True),
    ("watch", "agentdeployments.agentops.agentops.io", True),
    ("list", "agentpolicyexceptions.agentops.agentops.io", True),
    ("watch", "agentpolicyexceptions.agentops.agentops.io", True),
    ("list", "namespaces", True),
    ("get", "secret/agentops-webhook-tls", True),
    ("update", "secret/agentops-webhook-tls", True),
    ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/agentops-admission", True),
    ("patch", "validatingwebhookconfigurations.admissionregistration.k8s.io/agentops-admission", True),
    # ... and nothing more:
    ("get", "secret/some-other-secret", False),
    ("list", "secrets", False),
    ("create", "secrets", False),
    ("delete", "secret/agentops-webhook-tls", False),
    ("create", "agentdeployments.agentops.agentops.io", False),
    ("update", "agentdeployments.agentops.agentops.io", False),
    ("get", "agentdeployments.agentops.agentops.io", False),
    ("create", "agentpolicyexceptions.agentops.agentops.io", False),
    ("update", "agentpolicyexceptions.agentops.agentops.io", False),
    ("patch", "mutatingwebhookconfigurations.admissionregistration.k8s.io/someone-elses", False),
    ("delete", "validatingwebhookconfigurations.admissionregistration.k8s.io/agentops-admission", False),
]


def test_the_service_account_can_do_exactly_what_it_needs(kubectl: Kubectl, webhook_rbac: str) -> None:
    wrong = []
    for verb, resource, allowed in CAN_I:
        result = kubectl("auth", "can-i", verb, resource, "--as", webhook_rbac, check=False)
        if result.stdout.strip() != ("yes" if allowed else "no"):
            wrong.append(f"can-i {verb} {resource}: {result.stdout.strip()} {result.stderr.strip()}")
    assert wrong == []


def test_every_manifest_passes_a_server_side_dry_run(kubectl: Kubectl, namespace: str) -> None:
    docs: list[dict[str, Any]] = []
    for name in ("rbac-webhook.yaml", "webhook.yaml", "webhook-configurations.yaml"):
        for doc in load(name):
            if doc["kind"] == "Namespace":
                continue  # the dry run of the rest goes into the test namespace instead
            docs.append(_into_namespace(doc, namespace, namespace))
    result = kubectl("apply", "--dry-run=server", "-f", "-", input=yaml.safe_dump_all(docs))
    assert result.stdout.count("(server dry run)") == len(docs)
