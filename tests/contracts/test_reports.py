"""The policy report model (contracts/reports.py) and the OpenReports CRD we ship agree.

1. Every field of the model is in the hand-written CRD (``deploy/crds/openreports.yaml``) with the
   same type and enum, so nothing we write is pruned or refused.
2. A report with every field set, written to the real API server, is stored unchanged and read
   back by the model to the same thing.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

import kube
from contracts import reports
from contracts.crd import structural
from contracts.reports import Report

CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "crds" / "openreports.yaml"


def crd() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(CRD_FILE.read_text())
    return loaded


def crd_schema() -> dict[str, Any]:
    schema: dict[str, Any] = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def _check(model_node: dict[str, Any], crd_node: dict[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    if model_node.get("type") != crd_node.get("type"):
        problems.append(
            f"{where}: type {model_node.get('type')} in the model, {crd_node.get('type')} in the CRD"
        )
    # The model may be stricter than the CRD (LabelSelector operators), never looser.
    if "enum" in crd_node and not set(model_node.get("enum", ["(any)"])) <= set(crd_node["enum"]):
        problems.append(f"{where}: enum {model_node.get('enum')} in the model, {crd_node['enum']} in the CRD")
    for name, child in (model_node.get("properties") or {}).items():
        if name == "metadata":
            continue
        target = (crd_node.get("properties") or {}).get(name)
        if target is None:
            problems.append(f"{where}.{name}: in the model, not in the CRD (the API server would prune it)")
        else:
            problems += _check(child, target, f"{where}.{name}")
    if "items" in model_node:
        problems += _check(model_node["items"], crd_node.get("items") or {}, f"{where}[]")
    extra = model_node.get("additionalProperties")
    if isinstance(extra, dict):
        problems += _check(extra, crd_node.get("additionalProperties") or {}, f"{where}{{}}")
    return problems


def test_every_model_field_is_in_the_crd_with_its_type() -> None:
    model = structural(Report.model_json_schema(by_alias=True, mode="serialization"))
    model["properties"]["apiVersion"] = {"type": "string"}  # Literal in the model, plain in the CRD
    model["properties"]["kind"] = {"type": "string"}
    assert _check(model, crd_schema(), "Report") == []


def test_the_crd_is_upstreams_report() -> None:
    spec = crd()["spec"]
    assert spec["group"] == reports.GROUP
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == reports.KIND
    assert spec["names"]["plural"] == reports.PLURAL
    assert spec["names"]["shortNames"] == ["reps"]
    version = spec["versions"][0]
    assert version["name"] == reports.VERSION
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Kind", "Name", "Pass", "Fail", "Warn", "Error", "Skip", "Age",
    ]  # fmt: skip
    result = crd_schema()["properties"]["results"]["items"]
    assert result["required"] == ["policy"]
    assert result["properties"]["timestamp"]["required"] == ["nanos", "seconds"]
    assert result["properties"]["result"]["enum"] == list(reports.RESULTS)
    assert crd_schema()["properties"]["configuration"]["required"] == ["limits"]


def full_report(namespace: str) -> Report:
    return Report.model_validate(
        {
            "metadata": {
                "name": f"r-{uuid.uuid4().hex[:8]}",
                "namespace": namespace,
                "labels": reports.LABELS,
            },
            "source": reports.SOURCE,
            "scope": {"apiVersion": "v1", "kind": "Namespace", "name": namespace},
            "configuration": {"limits": {"maxResults": 1, "statusFilter": ["fail", "warn"]}},
            "summary": {"pass": 0, "fail": 1, "warn": 0, "error": 0, "skip": 0},
            "results": [
                {
                    "source": reports.SOURCE,
                    "policy": "ClusterAgentPolicy/org-defaults",
                    "rule": "limits.maxTokensPerCall",
                    "category": "agentops",
                    "severity": "high",
                    "timestamp": {"seconds": 1767225600, "nanos": 5000},
                    "result": "fail",
                    "scored": True,
                    "resources": [
                        {
                            "apiVersion": "agentops.agentops.io/v1alpha1",
                            "kind": "AgentDeployment",
                            "name": "a",
                            "namespace": namespace,
                            "uid": "u-1",
                            "resourceVersion": "7",
                            "fieldPath": "spec.limits",
                        }
                    ],
                    "resourceSelector": {
                        "matchLabels": {"team": "a"},
                        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["x"]}],
                    },
                    "message": "spec.limits.maxTokensPerCall: 8000 exceeds 4000 set by "
                    "ClusterAgentPolicy/org-defaults",
                    "properties": {"field": "spec.limits.maxTokensPerCall", "value": "8000", "limit": "4000"},
                }
            ],
        }
    )


@pytest.mark.parametrize("field", ["results", "summary", "scope", "configuration", "source"])
def test_a_full_report_is_stored_unchanged(k8s_api: kube.Client, namespace: str, field: str) -> None:
    report = full_report(namespace)
    written = report.to_k8s()
    path = kube.path(reports.API_VERSION, reports.PLURAL, namespace=namespace)
    stored = k8s_api.request("POST", path, written)
    assert stored[field] == written[field]
    assert Report.model_validate(stored).to_k8s()[field] == written[field]


def test_the_model_refuses_what_upstream_refuses() -> None:
    good = full_report("ns").to_k8s()
    for bad in ({"result": "failed"}, {"severity": "urgent"}, {"policy": ""}):
        broken = {**good, "results": [{**good["results"][0], **bad}]}
        with pytest.raises(ValidationError, match=next(iter(bad))):
            Report.model_validate(broken)


def test_summary_counts_each_result_and_refuses_unknown_ones() -> None:
    summary = reports.summarize(["pass", "fail", "fail", "skip"])
    assert summary.to_k8s() == {"pass": 1, "fail": 2, "warn": 0, "error": 0, "skip": 1}
    with pytest.raises(ValidationError, match="maybe"):
        reports.summarize(["maybe"])
