"""CustomResourceDefinitions generated from the shared model.

The API server needs a *structural* OpenAPI v3 schema: every node typed, no ``$ref``,
no ``anyOf`` over types.  Pydantic's JSON Schema is close; :func:`structural` inlines
references, turns ``X | None`` into an optional ``X`` and drops what Kubernetes does not
accept (titles, ``null`` defaults).  ``deploy/crds/*.yaml`` is this module's output
(``python -m localstack.crds``), and a test fails if the two differ.
"""

from __future__ import annotations

import copy
from typing import Any

from contracts import resources as models
from contracts.resources import GROUP, VERSION, Resource

_DROP_KEYS = frozenset({"title", "$defs", "additionalProperties"})


def structural(schema: dict[str, Any], defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """Convert one pydantic JSON Schema node into a structural Kubernetes schema node."""
    defs = schema.get("$defs", {}) if defs is None else defs
    if "$ref" in schema:
        target = defs[schema["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
        return structural(merged, defs)
    if "anyOf" in schema:
        branches = [b for b in schema["anyOf"] if b.get("type") != "null"]
        if len(branches) != 1:
            raise ValueError(f"cannot express a union of {branches} in a structural schema")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        return structural({**branches[0], **rest}, defs)
    if "const" in schema:
        schema = {**{k: v for k, v in schema.items() if k != "const"}, "enum": [schema["const"]]}

    out: dict[str, Any] = {k: copy.deepcopy(v) for k, v in schema.items() if k not in _DROP_KEYS}
    if out.get("default", 0) is None or out.get("default") in ({}, []):
        out.pop("default", None)
    if "properties" in schema:
        out["type"] = "object"
        out["properties"] = {name: structural(node, defs) for name, node in schema["properties"].items()}
    extra = schema.get("additionalProperties")
    if isinstance(extra, dict):
        out["type"] = "object"
        out["additionalProperties"] = structural(extra, defs)
    if "items" in schema:
        out["items"] = structural(schema["items"], defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    # JSON Schema 2020-12 (pydantic's `gt`/`lt`) gives the bound in exclusiveMinimum/Maximum;
    # Kubernetes' OpenAPI v3 wants the bound in minimum/maximum and a boolean flag.
    for exclusive, bound in (("exclusiveMinimum", "minimum"), ("exclusiveMaximum", "maximum")):
        value = out.get(exclusive)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[bound] = value
            out[exclusive] = True
    return out


def _spec_schema(resource: type[Resource], field: str) -> dict[str, Any]:
    annotation = resource.model_fields[field].annotation
    model = _model_of(annotation)
    return structural(model.model_json_schema(by_alias=True, mode="validation"))


def _model_of(annotation: Any) -> Any:
    args = getattr(annotation, "__args__", None)
    if args:
        return next(a for a in args if a is not type(None))
    return annotation


_PRINTER_COLUMNS: dict[str, list[dict[str, Any]]] = {
    "AgentDeployment": [
        {"name": "Model", "type": "string", "jsonPath": ".spec.model"},
        {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
        {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
        # The background scan's verdict (controller/scan.py): True while an Enforce policy is broken.
        {
            "name": "Violation",
            "type": "string",
            "jsonPath": '.status.conditions[?(@.type=="PolicyViolation")].status',
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "AgentPipeline": [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Steps", "type": "string", "jsonPath": ".status.progress"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "ClusterAgentPolicy": [
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "AgentPolicy": [
        {"name": "Mode", "type": "string", "jsonPath": ".spec.mode"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "AgentPolicyException": [
        {"name": "Agents", "type": "string", "jsonPath": ".spec.agents"},
        {"name": "Expires", "type": "date", "jsonPath": ".spec.expiresAt"},
        {"name": "Reason", "type": "string", "jsonPath": ".spec.reason"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
    "AgentPromptRevision": [
        {"name": "Agent", "type": "string", "jsonPath": ".spec.agent"},
        {"name": "Revision", "type": "integer", "jsonPath": ".spec.revision"},
        {"name": "Author", "type": "string", "jsonPath": ".spec.author.username"},
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ],
}

_IMMUTABLE = {"rule": "self == oldSelf", "message": "AgentPromptRevision is immutable"}


def crd(resource: type[Resource]) -> dict[str, Any]:
    """The CustomResourceDefinition of one resource class."""
    properties: dict[str, Any] = {"spec": _spec_schema(resource, "spec")}
    subresources: dict[str, Any] = {}
    if "status" in resource.model_fields:
        properties["status"] = _spec_schema(resource, "status")
        subresources["status"] = {}
    if resource is models.AgentDeployment:
        subresources["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
            "labelSelectorPath": ".status.selector",
        }
    if resource is models.AgentPromptRevision:
        properties["spec"]["x-kubernetes-validations"] = [_IMMUTABLE]
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "required": ["spec"],
                "properties": {
                    "apiVersion": {"type": "string"},
                    "kind": {"type": "string"},
                    "metadata": {"type": "object"},
                    **properties,
                },
            }
        },
        "additionalPrinterColumns": _PRINTER_COLUMNS[resource.KIND],
    }
    if subresources:
        version["subresources"] = subresources
    names: dict[str, Any] = {
        "kind": resource.KIND,
        "listKind": f"{resource.KIND}List",
        "plural": resource.PLURAL,
        "singular": resource.KIND.lower(),
        "categories": ["agentops"],
    }
    if resource.SHORT_NAMES:
        names["shortNames"] = list(resource.SHORT_NAMES)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Namespaced" if resource.NAMESPACED else "Cluster",
            "versions": [version],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(r) for r in models.RESOURCES]
