"""The two install paths install the same thing.

``kubectl kustomize deploy/`` and ``helm template agentops deploy/chart --include-crds`` with default
values must be the same objects (kind, namespace, name) with the same content.  What may differ is
normalised here and nowhere else, explicitly:

- the kustomize base creates the Namespace; the chart does not (Helm stores its release in the
  namespace before rendering anything, so a chart cannot own it: ``--create-namespace`` makes it);
- the chart adds Helm's two conventional labels, ``helm.sh/chart`` and
  ``app.kubernetes.io/managed-by``, to the top-level metadata of every object it templates (CRDs
  in ``crds/`` are copied verbatim and carry none); every other label is the same on both sides.

The local cluster's overlay (``localstack/overlays/node``: Redis on an emptyDir) must likewise equal
the chart with ``redis.persistence.enabled=false`` and ``provider.offlineFallback=true``.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.render import (
    CHART,
    DEPLOY,
    LOCAL_OVERLAY,
    NAMESPACE,
    Key,
    by_key,
    helm_template,
    kustomize,
)

HELM_LABELS = ("helm.sh/chart", "app.kubernetes.io/managed-by")


def chart_version() -> str:
    chart: dict[str, Any] = yaml.safe_load((CHART / "Chart.yaml").read_text())
    return f"{chart['name']}-{chart['version']}"


def without_helm_labels(doc: dict[str, Any]) -> dict[str, Any]:
    """The object without Helm's two labels, which every templated object must carry."""
    doc = copy.deepcopy(doc)
    labels = doc["metadata"].get("labels") or {}
    if doc["kind"] == "CustomResourceDefinition":
        assert not set(HELM_LABELS) & labels.keys(), "CRDs in crds/ are copies; they carry no Helm labels"
        return doc
    expected = {"helm.sh/chart": chart_version(), "app.kubernetes.io/managed-by": "Helm"}
    assert {k: labels.get(k) for k in expected} == expected, f"{doc['kind']}/{doc['metadata']['name']}"
    for label in expected:
        del labels[label]
    return doc


def without_namespace_object(docs: dict[Key, dict[str, Any]]) -> dict[Key, dict[str, Any]]:
    namespace_key: Key = ("Namespace", None, NAMESPACE)
    assert namespace_key in docs, "the kustomize base creates the namespace it installs into"
    return {k: v for k, v in docs.items() if k != namespace_key}


def differences(kustomized: dict[Key, dict[str, Any]], templated: dict[Key, dict[str, Any]]) -> list[str]:
    found = []
    for only_in, keys in (
        ("kustomize", kustomized.keys() - templated.keys()),
        ("helm", templated.keys() - kustomized.keys()),
    ):
        found += [f"only in {only_in}: {'/'.join(filter(None, k))}" for k in sorted(keys, key=str)]
    for k in sorted(kustomized.keys() & templated.keys(), key=str):
        if kustomized[k] != templated[k]:
            diff = difflib.unified_diff(
                yaml.safe_dump(kustomized[k]).splitlines(),
                yaml.safe_dump(templated[k]).splitlines(),
                "kustomize",
                "helm",
                lineterm="",
            )
            found.append(f"{'/'.join(filter(None, k))} differs:\n" + "\n".join(diff))
    return found


def compare(kustomize_dir: Path, helm: Path, values: dict[str, str]) -> list[str]:
    kustomized = without_namespace_object(by_key(kustomize(kustomize_dir)))
    templated = {k: without_helm_labels(v) for k, v in by_key(helm_template(helm, values)).items()}
    return differences(kustomized, templated)


def test_the_base_lists_every_crd_and_manifest() -> None:
    kustomization: dict[str, Any] = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {str(p.relative_to(DEPLOY)) for d in ("crds", "manifests") for p in (DEPLOY / d).glob("*.yaml")}
    assert files - listed == set(), "add these to deploy/kustomization.yaml"
    assert listed - files == set(), "deploy/kustomization.yaml lists files that do not exist"


def test_kustomize_base_and_default_chart_render_the_same_objects(helm: Path) -> None:
    assert compare(DEPLOY, helm, {}) == []


def test_local_overlay_and_chart_without_persistence_agree(helm: Path) -> None:
    local = {"redis.persistence.enabled": "false", "provider.offlineFallback": "true"}
    assert compare(LOCAL_OVERLAY, helm, local) == []


def test_local_overlay_runs_redis_on_an_empty_dir() -> None:
    (redis,) = [d for d in kustomize(LOCAL_OVERLAY) if d["kind"] == "StatefulSet"]
    assert "volumeClaimTemplates" not in redis["spec"]
    assert redis["spec"]["template"]["spec"]["volumes"] == [{"name": "data", "emptyDir": {}}]


@pytest.mark.parametrize(
    "values",
    [{"webhook.replicas": "3"}, {"redis.persistence.size": "1Gi"}, {"image.tag": "0.2.0"}],
    ids=["replicas", "storage-size", "image"],
)
def test_the_comparison_sees_a_difference(helm: Path, values: dict[str, str]) -> None:
    """The normalisation hides nothing but what it names: any other change is reported."""
    assert compare(DEPLOY, helm, values) != []
