"""The Mutating/ValidatingWebhookConfigurations, built in one place.

``deploy/manifests/webhook-configurations.yaml`` holds the in-cluster form (a Service reference,
``caBundle`` injected at run time); a test checks it against :func:`configurations`, so the rules
here and in the manifests cannot drift.  The local stack and the end-to-end tests register the
URL form (``https://127.0.0.1:PORT``) with :func:`register`.

Choices (see docs/webhook.md for the reasoning):

- rules match only our group, CREATE and UPDATE.  Validation matches every kind of ours
  (``contracts.resources.RESOURCES``, so a new kind cannot be left ungated) plus
  ``agentdeployments/scale``; AgentPolicyExceptions go through it like the rest: policy decides
  whether one may exist.  Mutation matches only the kinds the engine changes
  (``policies.engine.MUTATED_KINDS``: AgentDeployments, not their Scales): any other match would
  be a network hop that always answers "allowed, unchanged".  ``status`` is not matched: it is
  the controller's, and gating it would only add latency;
- ``matchPolicy: Equivalent``, ``sideEffects: None`` (a dry run changes nothing anywhere),
  ``timeoutSeconds: 5``, ``admissionReviewVersions: [v1]``;
- both webhooks ``failurePolicy: Fail``: validation because it is the enforcement point, mutation
  because it fills the mandatory limits and stamps the prompt audit trail, which must not be
  skipped silently;
- ``reinvocationPolicy: IfNeeded``: if another mutating webhook changes the object after ours,
  ours runs again so limits and stamps reflect the final object;
- the webhook's own namespace is excluded, so the operator can always repair it.

``scope_label`` restricts both configurations to namespaces (and cluster-scoped objects) carrying
that label: the tests share one API server with other suites and must gate only their own objects.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import kube
from contracts.resources import GROUP, RESOURCE_BY_PLURAL, VERSION, Resource
from policies.engine import MUTATED_KINDS

log = logging.getLogger(__name__)

DEFAULT_NAME = "agentops-admission"
SYSTEM_NAMESPACE = "agentops-system"
MUTATING_WEBHOOK = f"mutate.{GROUP}"
VALIDATING_WEBHOOK = f"validate.{GROUP}"
TIMEOUT_SECONDS = 5


def _resources(namespaced: bool, *, mutating: bool = False) -> list[str]:
    out: list[str] = []
    for plural, resource in sorted(RESOURCE_BY_PLURAL.items()):
        if _is_namespaced(resource) != namespaced:
            continue
        if mutating:
            if resource.KIND in MUTATED_KINDS:
                out.append(plural)
            continue
        out.append(plural)
        if plural == "agentdeployments":
            out.append("agentdeployments/scale")
    return out


def _is_namespaced(resource: type[Resource]) -> bool:
    return resource.NAMESPACED


def rules(scope: str = "*", *, mutating: bool = False) -> list[dict[str, Any]]:
    """Admission rules for our resources (``mutating``: the mutating webhook's); ``scope``
    Namespaced/Cluster splits them, ``*`` is all.  Empty when nothing in ``scope`` is matched."""
    if scope == "*":
        resources = _resources(True, mutating=mutating) + _resources(False, mutating=mutating)
    else:
        resources = _resources(scope == "Namespaced", mutating=mutating)
    if not resources:
        return []
    return [
        {
            "apiGroups": [GROUP],
            "apiVersions": [VERSION],
            "operations": ["CREATE", "UPDATE"],
            "resources": resources,
            "scope": scope,
        }
    ]


@dataclass(frozen=True)
class ClientConfig:
    """Either ``url`` (local stack, tests) or a Service reference (cluster)."""

    url: str | None = None
    service_name: str | None = None
    service_namespace: str = SYSTEM_NAMESPACE
    service_port: int = 443
    ca_bundle: bytes | None = None

    def to_k8s(self, path: str) -> dict[str, Any]:
        config: dict[str, Any]
        if self.url is not None:
            config = {"url": self.url.rstrip("/") + path}
        elif self.service_name is not None:
            config = {
                "service": {
                    "name": self.service_name,
                    "namespace": self.service_namespace,
                    "path": path,
                    "port": self.service_port,
                }
            }
        else:
            raise ValueError("a webhook client config needs a url or a service name")
        if self.ca_bundle:
            config["caBundle"] = base64.b64encode(self.ca_bundle).decode()
        return config


def _webhooks(
    base_name: str, path: str, client: ClientConfig, scope_label: tuple[str, str] | None, mutating: bool
) -> list[dict[str, Any]]:
    common: dict[str, Any] = {
        "clientConfig": client.to_k8s(path),
        "failurePolicy": "Fail",
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": TIMEOUT_SECONDS,
        "admissionReviewVersions": ["v1"],
    }
    if mutating:
        common["reinvocationPolicy"] = "IfNeeded"
    exclude_system = {
        "matchExpressions": [
            {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": [SYSTEM_NAMESPACE]}
        ]
    }
    if scope_label is None:
        return [
            {
                "name": base_name,
                **common,
                "rules": rules("*", mutating=mutating),
                "namespaceSelector": exclude_system,
            }
        ]
    key, value = scope_label
    # namespaceSelector does not apply to cluster-scoped objects, so those are scoped by their
    # own labels in a second webhook entry (when any is matched).
    selector = {"matchLabels": {key: value}, **exclude_system}
    hooks = [
        {
            "name": base_name,
            **common,
            "rules": rules("Namespaced", mutating=mutating),
            "namespaceSelector": selector,
        }
    ]
    if cluster := rules("Cluster", mutating=mutating):
        hooks.append(
            {
                "name": f"cluster-{base_name}",
                **common,
                "rules": cluster,
                "objectSelector": {"matchLabels": {key: value}},
            }
        )
    return hooks


def configurations(
    client: ClientConfig, *, name: str = DEFAULT_NAME, scope_label: tuple[str, str] | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(MutatingWebhookConfiguration, ValidatingWebhookConfiguration)`` as plain dicts."""
    labels = {"app.kubernetes.io/name": "agentops-webhook", "app.kubernetes.io/part-of": "agentops"}
    mutating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels},
        "webhooks": _webhooks(MUTATING_WEBHOOK, "/mutate", client, scope_label, mutating=True),
    }
    validating = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": name, "labels": labels},
        "webhooks": _webhooks(VALIDATING_WEBHOOK, "/validate", client, scope_label, mutating=False),
    }
    return mutating, validating


_PLURALS = {
    "MutatingWebhookConfiguration": "mutatingwebhookconfigurations",
    "ValidatingWebhookConfiguration": "validatingwebhookconfigurations",
}


def _path(kind: str, name: str | None = None) -> str:
    return kube.path("admissionregistration.k8s.io/v1", _PLURALS[kind], name)


def register(api: kube.Client, configs: tuple[Mapping[str, Any], Mapping[str, Any]]) -> None:
    """Create or replace both configurations."""
    for body in configs:
        kind, name = body["kind"], body["metadata"]["name"]
        current = api.get(_path(kind, name))
        if current is None:
            api.create(_path(kind), body)
            log.info("webhook configuration created", extra={"kind": kind, "configuration": name})
            continue
        updated = {
            **body,
            "metadata": {**body["metadata"], "resourceVersion": current["metadata"]["resourceVersion"]},
        }
        api.replace(_path(kind, name), updated)
        log.info("webhook configuration updated", extra={"kind": kind, "configuration": name})


def unregister(api: kube.Client, name: str = DEFAULT_NAME) -> None:
    """Delete both configurations; missing ones are fine."""
    for kind in _PLURALS:
        api.delete(_path(kind, name))


def parse_label(value: str) -> tuple[str, str]:
    key, sep, val = value.partition("=")
    if not sep or not key:
        raise ValueError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def webhook_names(configs: tuple[Mapping[str, Any], Mapping[str, Any]]) -> tuple[str, str]:
    return configs[0]["metadata"]["name"], configs[1]["metadata"]["name"]
