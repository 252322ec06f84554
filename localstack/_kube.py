"""Apply manifests to a cluster with server-side apply, the way ``kubectl apply --server-side`` does.

Used by the local stack and the test fixtures to install CRDs and samples without shelling
out to ``kubectl``.  The resource path of each object comes from the API server's discovery
document for its group/version, so any kind the server knows works, including our CRDs
right after they become Established.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

FIELD_MANAGER = "agentops-local"
CRD_API = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def api_client(kubeconfig: Path) -> client.ApiClient:
    """A Kubernetes API client authenticated by ``kubeconfig``."""
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    return api


def load_manifests(path: Path) -> list[dict[str, Any]]:
    """Every object in a YAML file (documents separated by ``---``; empty documents skipped)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if not isinstance(doc, dict) or "apiVersion" not in doc or "kind" not in doc:
            raise ValueError(f"{path}: every document must be a Kubernetes object with apiVersion and kind")
    return cast(list[dict[str, Any]], docs)


def request(
    api: client.ApiClient,
    method: str,
    path: str,
    body: Any = None,
    *,
    query: list[tuple[str, str]] | None = None,
    content_type: str | None = None,
) -> dict[str, Any]:
    """One raw API call returning the decoded JSON; raises ``ApiException`` on a non-2xx status."""
    headers = {"Accept": "application/json"}
    if content_type:
        headers["Content-Type"] = content_type
    elif body is not None:
        headers["Content-Type"] = "application/json"
    serialized = api.param_serialize(
        method,
        path,
        query_params=query or [],
        header_params=headers,
        body=body,
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*serialized)
    response.read()  # type: ignore[no-untyped-call]
    data: bytes = response.data or b""
    if not 200 <= response.status <= 299:
        raise ApiException.from_response(http_resp=response, body=data.decode(errors="replace"), data=None)
    result: dict[str, Any] = json.loads(data) if data else {}
    return result


def _get(api: client.ApiClient, path: str) -> dict[str, Any]:
    return request(api, "GET", path)


class _Discovery:
    """Kind -> (plural, namespaced) per group/version, asked of the server once each."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api
        self._by_group_version: dict[str, dict[str, tuple[str, bool]]] = {}

    def resource(self, api_version: str, kind: str) -> tuple[str, bool]:
        kinds = self._by_group_version.get(api_version)
        if kinds is None or kind not in kinds:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            listing = _get(self._api, base)
            kinds = {
                r["kind"]: (r["name"], bool(r["namespaced"]))
                for r in listing.get("resources", [])
                if "/" not in r["name"]  # subresources such as status and scale
            }
            self._by_group_version[api_version] = kinds
        if kind not in kinds:
            raise ValueError(f"the API server does not serve kind {kind} in {api_version}")
        return kinds[kind]

    def path(self, obj: dict[str, Any], namespace: str | None) -> str:
        api_version, kind = obj["apiVersion"], obj["kind"]
        plural, namespaced = self.resource(api_version, kind)
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        name = obj["metadata"]["name"]
        if namespaced:
            ns = obj["metadata"].get("namespace") or namespace or "default"
            return f"{base}/namespaces/{ns}/{plural}/{name}"
        return f"{base}/{plural}/{name}"


def apply(
    api: client.ApiClient, objects: Iterable[dict[str, Any]], *, namespace: str | None = None
) -> list[dict[str, Any]]:
    """Server-side apply each object (forcing conflicts, like a re-run of ``kubectl apply``)."""
    discovery = _Discovery(api)
    applied = []
    for obj in objects:
        path = discovery.path(obj, namespace)
        result = request(
            api,
            "PATCH",
            path,
            obj,
            query=[("fieldManager", FIELD_MANAGER), ("force", "true")],
            content_type="application/apply-patch+yaml",
        )
        applied.append(result)
    return applied


def _established(crd: dict[str, Any]) -> bool:
    conditions = (crd.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def install_crds(api: client.ApiClient, crds: Iterable[dict[str, Any]], *, timeout: float = 30.0) -> None:
    """Apply CustomResourceDefinitions and wait until the API server serves every one of them."""
    names = [c["metadata"]["name"] for c in apply(api, crds)]
    deadline = time.monotonic() + timeout
    pending = set(names)
    while pending:
        for name in sorted(pending):
            try:
                if _established(_get(api, f"{CRD_API}/{name}")):
                    pending.discard(name)
            except ApiException as exc:
                if exc.status != 404:
                    raise
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"CRDs not Established after {timeout:.0f}s: {', '.join(sorted(pending))}")
        if pending:
            time.sleep(0.1)
