"""The Helm chart ``deploy/chart``: lint-clean, strict about its values, and each value does what it says.

Rendered with the real ``helm`` (built from ``localstack/helm``); what the default rendering must be
is pinned by test_renderings_agree.py (the same objects as the kustomize base).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.render import (
    CHART,
    DEPLOY,
    NAMESPACE,
    container,
    find,
    helm_lint,
    helm_template,
    helm_template_error,
    key,
    kustomize,
)
from tests.support.manifest_checks import security_problems

DEFAULT_IMAGE = "agentops-operator:0.1.0"


def kinds(docs: list[dict[str, Any]]) -> set[tuple[str, str]]:
    return {(d["kind"], d["metadata"]["name"]) for d in docs}


def env_of(spec: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in spec.get("env", [])}


def hooks(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        hook
        for doc in docs
        if doc["kind"] in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
        for hook in doc["webhooks"]
    ]


# --- the chart itself ---------------------------------------------------------------------------


def test_lint_is_clean(helm: Path) -> None:
    result = helm_lint(helm)
    assert result.returncode == 0, result.stdout + result.stderr
    findings = [line for line in result.stdout.splitlines() if re.match(r"\[(INFO|WARNING|ERROR)\]", line)]
    # Helm recommends an icon URL; the project publishes none, and Helm rates this INFO only.
    assert findings == ["[INFO] Chart.yaml: icon is recommended"], result.stdout


def test_chart_crds_are_copies_of_the_generated_ones() -> None:
    stale = [
        p.name
        for p in sorted((DEPLOY / "crds").glob("*.yaml"))
        if not (CHART / "crds" / p.name).exists() or (CHART / "crds" / p.name).read_bytes() != p.read_bytes()
    ]
    extra = {p.name for p in (CHART / "crds").glob("*.yaml")} - {
        p.name for p in (DEPLOY / "crds").glob("*.yaml")
    }
    assert stale == [], "run: cp deploy/crds/*.yaml deploy/chart/crds/"
    assert extra == {"kopf-peerings.yaml"}


def test_chart_ships_kopfs_peering_crds_as_the_manifests_do() -> None:
    manifests = yaml.safe_load_all((DEPLOY / "manifests" / "controller-peering.yaml").read_text())
    chart = yaml.safe_load_all((CHART / "crds" / "kopf-peerings.yaml").read_text())
    crds = [d for d in manifests if d and d["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 2
    assert [d for d in chart if d] == crds


# --- values the schema rejects ------------------------------------------------------------------

BAD_VALUES = [
    ({"webhook.failurePolicy": "Sometimes"}, ["/webhook/failurePolicy", "Fail", "Ignore"]),
    ({"webhook.replicas": "-1"}, ["/webhook/replicas", "-1"]),
    ({"webhook.replicas": "0"}, ["/webhook/replicas", "got 0"]),
    ({"webhook.timeoutSeconds": "60"}, ["/webhook/timeoutSeconds", "60", "30"]),
    ({"webhook.timeoutSeconds": "0"}, ["/webhook/timeoutSeconds", "got 0"]),
    ({"controller.replicas": "two"}, ["/controller/replicas", "string", "integer"]),
    ({"image.pullPolicy": "Sometimes"}, ["/image/pullPolicy", "IfNotPresent"]),
    ({"webhook.replica": "3"}, ["/webhook", "replica"]),
    ({"redis.persistence.enabled": "maybe"}, ["/redis/persistence/enabled", "boolean"]),
    ({"redis.persistence.size": "lots"}, ["/redis/persistence/size", "lots"]),
    ({"metrics.enabled": "yes"}, ["/metrics/enabled", "boolean"]),
    ({"redis.external.url": "http://redis:6379"}, ["redis.external.url", "http://redis:6379", "redis://"]),
    ({"redis.external.url": "redis://redis:6379/zero"}, ["redis.external.url", "redis://redis:6379/zero"]),
]


@pytest.mark.parametrize(
    ("values", "expected"),
    BAD_VALUES,
    ids=[next(iter(v)) + "=" + next(iter(v.values())) for v, _ in BAD_VALUES],
)
def test_a_wrong_value_fails_naming_it(helm: Path, values: dict[str, str], expected: list[str]) -> None:
    message = helm_template_error(helm, values)
    missing = [fragment for fragment in expected if fragment not in message]
    assert missing == [], message


def test_an_api_key_given_as_the_secret_name_is_refused_without_echoing_it(helm: Path) -> None:
    api_key = "sk-ant-api03-AbCdEf_0123456789"
    message = helm_template_error(helm, {"provider.apiKeySecret.name": api_key})
    assert "provider.apiKeySecret.name" in message
    assert "never the key itself" in message
    assert "sk-ant" not in message


@pytest.mark.parametrize(
    "url",
    ["redis://:hunter2@redis:6379/zero", "redis://:hunter2@%zz:6379/0", "redis://:hunter2@redis:port/0"],
)
def test_a_bad_redis_url_is_refused_without_its_password(helm: Path, url: str) -> None:
    message = helm_template_error(helm, {"redis.external.url": url})
    assert "redis.external.url" in message
    assert "hunter2" not in message
    assert "***@" in message


# --- what each value does -----------------------------------------------------------------------


def test_images_default_to_the_release_with_if_not_present(helm: Path) -> None:
    docs = helm_template(helm)
    for kind, name in (("Deployment", "agentops-webhook"), ("Deployment", "agentops-controller")):
        spec = container(docs, kind, name)
        assert (spec["image"], spec["imagePullPolicy"]) == (DEFAULT_IMAGE, "IfNotPresent")
    assert f"--runtime-image={DEFAULT_IMAGE}" in container(docs, "Deployment", "agentops-controller")["args"]
    assert container(docs, "StatefulSet", "redis")["imagePullPolicy"] == "IfNotPresent"


def test_image_values_reach_every_component_and_the_agents(helm: Path) -> None:
    values = {
        "image.repository": "registry.example/agentops",
        "image.tag": "1.2.3",
        "image.pullPolicy": "Always",
        "imagePullSecrets[0].name": "regcred",
    }
    docs = helm_template(helm, values)
    for kind, name in (("Deployment", "agentops-webhook"), ("Deployment", "agentops-controller")):
        spec = container(docs, kind, name)
        assert (spec["image"], spec["imagePullPolicy"]) == ("registry.example/agentops:1.2.3", "Always")
        assert find(docs, kind, name)["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "regcred"}]
    args = container(docs, "Deployment", "agentops-controller")["args"]
    assert "--runtime-image=registry.example/agentops:1.2.3" in args


def test_failure_policy_and_timeout_reach_both_configurations(helm: Path) -> None:
    default = hooks(helm_template(helm))
    assert [(h["failurePolicy"], h["timeoutSeconds"]) for h in default] == [("Fail", 5), ("Fail", 5)]
    changed = hooks(helm_template(helm, {"webhook.failurePolicy": "Ignore", "webhook.timeoutSeconds": "12"}))
    assert [h["name"] for h in changed] == ["mutate.agentops.agentops.io", "validate.agentops.agentops.io"]
    assert [(h["failurePolicy"], h["timeoutSeconds"]) for h in changed] == [("Ignore", 12), ("Ignore", 12)]


def test_replicas(helm: Path) -> None:
    docs = helm_template(helm, {"webhook.replicas": "3", "controller.replicas": "1"})
    assert find(docs, "Deployment", "agentops-webhook")["spec"]["replicas"] == 3
    assert find(docs, "Deployment", "agentops-controller")["spec"]["replicas"] == 1
    assert find(docs, "PodDisruptionBudget", "agentops-webhook")["spec"]["minAvailable"] == 1


NATIVE_RBAC = DEPLOY / "manifests" / "rbac-controller-native-admission.yaml"
NATIVE_ROLE = "agentops-controller-native-admission"


def admission_rules(role: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for r in role["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]]


def test_native_admission_is_on_by_default_and_off_takes_its_rights(helm: Path) -> None:
    default = helm_template(helm)
    assert "--native-admission" in container(default, "Deployment", "agentops-controller")["args"]
    # Its rights are a ClusterRole of their own, the same as the kustomize base's.
    role = next(yaml.safe_load_all(NATIVE_RBAC.read_text()))
    assert find(default, "ClusterRole", NATIVE_ROLE)["rules"] == role["rules"]
    assert find(default, "ClusterRoleBinding", NATIVE_ROLE)["roleRef"]["name"] == NATIVE_ROLE
    # The controller's own ClusterRole never touches admission objects.
    assert admission_rules(find(default, "ClusterRole", "agentops-controller")) == []

    off = helm_template(helm, {"controller.nativeAdmission": "false"})
    assert "--native-admission" not in container(off, "Deployment", "agentops-controller")["args"]
    # Least privilege: without native admission the controller may not touch admission objects.
    assert {key(d) for d in default} - {key(d) for d in off} == {
        ("ClusterRole", None, NATIVE_ROLE),
        ("ClusterRoleBinding", None, NATIVE_ROLE),
    }
    assert admission_rules(find(off, "ClusterRole", "agentops-controller")) == []


def test_the_kustomize_component_turns_native_admission_off(tmp_path: Path, helm: Path) -> None:
    """An overlay of the user's, outside the repository, as the component's header shows it: the
    controller told --no-native-admission (the last flag wins) and the mode's rights gone, which
    is what the chart renders with controller.nativeAdmission=false."""
    overlay = tmp_path / "overlay"
    overlay.mkdir()
    base = os.path.relpath(DEPLOY, overlay)
    (overlay / "kustomization.yaml").write_text(
        yaml.safe_dump({"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                        "resources": [base], "components": [f"{base}/native-admission-off"]})
    )  # fmt: skip
    plain, docs = kustomize(), kustomize(overlay)
    assert container(docs, "Deployment", "agentops-controller")["args"] == [
        *container(plain, "Deployment", "agentops-controller")["args"],
        "--no-native-admission",
    ]
    removed = {key(d) for d in plain} - {key(d) for d in docs}
    assert removed == {key(d) for d in yaml.safe_load_all(NATIVE_RBAC.read_text())}
    assert {key(d) for d in docs} == {key(d) for d in plain} - removed
    off = helm_template(helm, {"controller.nativeAdmission": "false"})
    assert {key(d) for d in docs} - {("Namespace", None, "agentops-system")} == {key(d) for d in off}


def test_a_single_webhook_replica_gets_no_disruption_budget(helm: Path) -> None:
    # minAvailable 1 of 1 would block every node drain forever.
    docs = helm_template(helm, {"webhook.replicas": "1"})
    assert "PodDisruptionBudget" not in {d["kind"] for d in docs}


def test_bundled_redis_is_what_the_components_use_by_default(helm: Path) -> None:
    docs = helm_template(helm)
    assert {("Service", "redis"), ("StatefulSet", "redis")} <= kinds(docs)
    controller = container(docs, "Deployment", "agentops-controller")
    assert env_of(controller)["AGENTOPS_REDIS_URL"] == f"redis://redis.{NAMESPACE}.svc:6379/0"
    assert "--redis-url=$(AGENTOPS_REDIS_URL)" in controller["args"]
    assert f"--keda-redis-address=redis.{NAMESPACE}.svc:6379" in controller["args"]


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("redis://redis.shared.svc:6380/2", "redis.shared.svc:6380"),
        ("rediss://:s3cret@cache.example.com/0", "cache.example.com:6379"),
    ],
)
def test_an_external_redis_replaces_the_bundled_one(helm: Path, url: str, address: str) -> None:
    docs = helm_template(helm, {"redis.external.url": url})
    assert not {("Service", "redis"), ("StatefulSet", "redis")} & kinds(docs)
    controller = container(docs, "Deployment", "agentops-controller")
    assert env_of(controller)["AGENTOPS_REDIS_URL"] == url
    assert f"--keda-redis-address={address}" in controller["args"]
    assert "redis.agentops-system.svc" not in yaml.safe_dump_all(docs)


def test_redis_persistence(helm: Path) -> None:
    def claim(values: dict[str, str]) -> dict[str, Any]:
        redis = find(helm_template(helm, values), "StatefulSet", "redis")["spec"]
        (template,) = redis["volumeClaimTemplates"]
        assert "volumes" not in redis["template"]["spec"]
        spec: dict[str, Any] = template["spec"]
        return spec

    default = claim({})
    assert default["resources"]["requests"]["storage"] == "5Gi"
    assert "storageClassName" not in default  # the cluster's default class
    sized = claim({"redis.persistence.size": "20Gi", "redis.persistence.storageClass": "fast-ssd"})
    assert (sized["resources"]["requests"]["storage"], sized["storageClassName"]) == ("20Gi", "fast-ssd")
    assert claim({"redis.persistence.storageClass": "-"})["storageClassName"] == ""

    ephemeral = find(helm_template(helm, {"redis.persistence.enabled": "false"}), "StatefulSet", "redis")
    assert "volumeClaimTemplates" not in ephemeral["spec"]
    assert ephemeral["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


def test_the_provider_secret_names_a_secret_and_never_holds_a_key(helm: Path) -> None:
    default = container(helm_template(helm), "Deployment", "agentops-controller")["args"]
    assert not [a for a in default if a.startswith(("--default-api-key-secret", "--offline-fallback"))]
    values = {
        "provider.apiKeySecret.name": "anthropic-api-key",
        "provider.apiKeySecret.key": "token",
        "provider.offlineFallback": "true",
    }
    args = container(helm_template(helm, values), "Deployment", "agentops-controller")["args"]
    assert "--default-api-key-secret=anthropic-api-key/token" in args
    assert "--offline-fallback" in args
    default_key = {"provider.apiKeySecret.name": "anthropic-api-key"}
    args = container(helm_template(helm, default_key), "Deployment", "agentops-controller")["args"]
    assert "--default-api-key-secret=anthropic-api-key/api-key" in args


def test_metrics(helm: Path) -> None:
    def annotations(values: dict[str, str]) -> dict[str, str]:
        pod = find(helm_template(helm, values), "Deployment", "agentops-webhook")["spec"]["template"]
        result: dict[str, str] = pod["metadata"].get("annotations", {})
        return result

    assert annotations({}) == {
        "prometheus.io/scrape": "true",
        "prometheus.io/scheme": "https",
        "prometheus.io/port": "8443",
        "prometheus.io/path": "/metrics",
    }
    assert annotations({"metrics.enabled": "false"}) == {}
    assert "ServiceMonitor" not in {d["kind"] for d in helm_template(helm)}

    docs = helm_template(
        helm, {"metrics.serviceMonitor.enabled": "true", "metrics.serviceMonitor.labels.release": "kps"}
    )
    monitor = find(docs, "ServiceMonitor", "agentops-webhook")
    assert monitor["metadata"]["labels"]["release"] == "kps"
    (endpoint,) = monitor["spec"]["endpoints"]
    service = find(docs, "Service", "agentops-webhook")
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
    assert (endpoint["scheme"], endpoint["path"]) == ("https", "/metrics")
    assert endpoint["tlsConfig"]["ca"]["secret"] == {"name": "agentops-webhook-tls", "key": "ca.crt"}


def test_resources_and_scheduling(helm: Path) -> None:
    values = {
        "webhook.resources.limits.memory": "512Mi",
        "controller.resources.requests.cpu": "200m",
        "redis.resources.limits.memory": "4Gi",
        "nodeSelector.kubernetes\\.io/os": "linux",
        "tolerations[0].key": "dedicated",
        "tolerations[0].operator": "Exists",
    }
    docs = helm_template(helm, values)
    assert container(docs, "Deployment", "agentops-webhook")["resources"]["limits"]["memory"] == "512Mi"
    assert container(docs, "Deployment", "agentops-controller")["resources"]["requests"]["cpu"] == "200m"
    assert container(docs, "StatefulSet", "redis")["resources"]["limits"]["memory"] == "4Gi"
    for kind, name in (
        ("Deployment", "agentops-webhook"),
        ("Deployment", "agentops-controller"),
        ("StatefulSet", "redis"),
    ):
        pod = find(docs, kind, name)["spec"]["template"]["spec"]
        assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
        assert pod["tolerations"] == [{"key": "dedicated", "operator": "Exists"}]


def test_another_namespace_is_followed_everywhere(helm: Path) -> None:
    """Args, Secret reference, Service references, the webhooks' and the audit trail policy's own
    exclusion, Redis URL."""
    docs = helm_template(helm, namespace="agents-infra", crds=False)
    assert "agentops-system" not in yaml.safe_dump_all(docs)
    for hook in hooks(docs):
        assert hook["clientConfig"]["service"]["namespace"] == "agents-infra"
        assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == ["agents-infra"]
    args = container(docs, "Deployment", "agentops-webhook")["args"]
    assert {"--namespace=agents-infra", "--secret=agents-infra/agentops-webhook-tls"} <= set(args)
    binding = find(docs, "ValidatingAdmissionPolicyBinding", "agentops-audit-trail")
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"][0]["values"] == [
        "agents-infra"
    ]
    cluster_scoped = {
        "ClusterRole", "ClusterRoleBinding",
        "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
        "ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding",
    }  # fmt: skip
    namespaced = [d for d in docs if d["kind"] not in cluster_scoped]
    assert {d["metadata"].get("namespace") for d in namespaced} == {"agents-infra"}


# --- security by default, whatever the values -----------------------------------------------------

VALUE_SETS = [
    {},
    {"redis.persistence.enabled": "false", "webhook.replicas": "1", "metrics.enabled": "false"},
    {"redis.external.url": "redis://redis.shared:6379/0", "provider.apiKeySecret.name": "key"},
]


@pytest.mark.parametrize("values", VALUE_SETS, ids=["defaults", "minimal", "external-redis"])
def test_every_workload_is_locked_down_and_rbac_has_no_wildcards(helm: Path, values: dict[str, str]) -> None:
    docs = helm_template(helm, values)
    assert {d["kind"] for d in docs} >= {"Deployment", "ClusterRole", "Role"}
    assert security_problems(docs) == []
