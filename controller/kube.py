"""The controller's few Kubernetes calls, as plain-dict functions over the official client.

The kubernetes client is synchronous; :mod:`controller.agents` and :mod:`controller.pipelines`
call these through ``asyncio.to_thread`` so kopf's event loop never blocks.  Children are written
with **server-side apply** (field manager ``agentops-controller``, forced): one idempotent call
creates a missing object or brings a drifted one back, which is what makes reconciliation
level-based.  Reads return the API server's JSON as dicts (camelCase), the same shape kopf hands
to handlers, so one code path serves both.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from contracts.resources import GROUP, VERSION
from controller.render import FIELD_MANAGER

APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"


class Kube:
    """Thin wrapper over one ``ApiClient``; every method is blocking (run it in a thread)."""

    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.apps = client.AppsV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.ext = client.ApiextensionsV1Api(api_client)

    @staticmethod
    def _json(response: Any) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(response.data)
        return data

    # --- children (server-side apply) -------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        kind = obj["kind"]
        ns = obj["metadata"]["namespace"]
        name = obj["metadata"]["name"]
        common: dict[str, Any] = {
            "field_manager": FIELD_MANAGER,
            "force": True,
            "_content_type": APPLY,
            "_preload_content": False,
        }
        resp: Any
        if kind == "Deployment":
            resp = self.apps.patch_namespaced_deployment(name, ns, obj, **common)
        elif kind == "ConfigMap":
            resp = self.core.patch_namespaced_config_map(name, ns, obj, **common)
        elif kind == "Service":
            resp = self.core.patch_namespaced_service(name, ns, obj, **common)
        else:
            group, version = obj["apiVersion"].split("/")
            plural = kind.lower() + "s"
            resp = self.custom.patch_namespaced_custom_object(group, version, ns, plural, name, obj, **common)
        return self._json(resp)

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json(self.apps.read_namespaced_deployment(name, namespace, _preload_content=False))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def secret_exists(self, namespace: str, name: str) -> bool:
        """Whether the Secret exists (a field-selected list, so a missing one is not an error)."""
        resp = self.core.list_namespaced_secret(
            namespace, field_selector=f"metadata.name={name}", _preload_content=False
        )
        # Only the count is kept; the Secret's data is never logged or stored.
        return bool(self._json(resp).get("items"))

    # --- our resources ----------------------------------------------------------------------

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._json(
                self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, plural, name, _preload_content=False
                )
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Merge-patch ``status`` (lists such as conditions and steps are replaced whole)."""
        self.custom.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": status},
            _content_type=MERGE,
            _preload_content=False,
        )

    def scale_agent(self, namespace: str, name: str, replicas: int) -> None:
        """Scale through the scale subresource, so admission sees the change like any other."""
        self.custom.patch_namespaced_custom_object_scale(
            GROUP,
            VERSION,
            namespace,
            "agentdeployments",
            name,
            {"spec": {"replicas": replicas}},
            _content_type=MERGE,
            _preload_content=False,
        )

    def list_custom(self, plural: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        data = self._json(
            self.custom.list_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, label_selector=label_selector, _preload_content=False
            )
        )
        items: list[dict[str, Any]] = data.get("items", [])
        return items

    def create_custom(self, plural: str, namespace: str, body: dict[str, Any]) -> bool:
        """Create; False when an object of that name already exists (deterministic names = done)."""
        try:
            self.custom.create_namespaced_custom_object(
                GROUP, VERSION, namespace, plural, body, _preload_content=False
            )
        except ApiException as exc:
            if exc.status == 409:
                return False
            raise
        return True

    def ensure_peering(self, name: str, namespaces: tuple[str, ...]) -> None:
        """Create kopf's peering object(s) unless they exist: a ClusterKopfPeering for a
        cluster-wide controller, else a KopfPeering in each watched namespace.

        Shipping the object beside its CRD would make ``kubectl apply -k`` fail on a fresh
        cluster (kubectl maps every kind before the CRD is established), so the controller
        creates it, once, the first time any replica starts."""
        body = {"apiVersion": "kopf.dev/v1", "metadata": {"name": name}}
        try:
            if not namespaces:
                self.custom.create_cluster_custom_object(
                    "kopf.dev", "v1", "clusterkopfpeerings", {**body, "kind": "ClusterKopfPeering"}
                )
            for namespace in namespaces:
                with contextlib.suppress(ApiException):
                    self.custom.create_namespaced_custom_object(
                        "kopf.dev", "v1", namespace, "kopfpeerings", {**body, "kind": "KopfPeering"}
                    )
        except ApiException as exc:
            if exc.status != 409:
                raise

    def crd_exists(self, name: str) -> bool:
        try:
            self.ext.read_custom_resource_definition(name, _preload_content=False)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    # --- events -----------------------------------------------------------------------------

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on ``involved`` (an object's JSON); failures to post are not fatal."""
        meta = involved.get("metadata", {})
        now = datetime.now(UTC)
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{meta.get('name', 'agentops')}.", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": FIELD_MANAGER},
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "count": 1,
        }
        # An Event is a courtesy; never fail a reconciliation because it could not be posted.
        with contextlib.suppress(ApiException):
            self.core.create_namespaced_event(meta["namespace"], body, _preload_content=False)  # type: ignore[arg-type]
