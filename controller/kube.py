"""The controller's few Kubernetes calls, named for what the controller does with them.

Every call goes through one blocking :class:`kube.Client`; :mod:`controller.agents` and
:mod:`controller.pipelines` call these through ``asyncio.to_thread`` so kopf's event loop never
blocks.  Children are written with **server-side apply** (field manager ``agentops-controller``,
forced): one idempotent call creates a missing object or brings a drifted one back, which is what
makes reconciliation level-based.  Reads return the API server's JSON as dicts (camelCase), the
same shape kopf hands to handlers, so one code path serves both.  Failures raise
:class:`kube.ApiError`.
"""

from __future__ import annotations

import contextlib
from typing import Any

import kube
from contracts import reports
from contracts.resources import GROUP, VERSION
from controller.render import FIELD_MANAGER

OURS = f"{GROUP}/{VERSION}"


class Kube:
    """The controller's calls over one :class:`kube.Client`; every method blocks (run it in a thread)."""

    def __init__(self, api: kube.Client) -> None:
        self.api = api

    # --- children (server-side apply) -------------------------------------------------------

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        return self.api.apply(obj, field_manager=FIELD_MANAGER, force=True)

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.api.get(kube.path("apps/v1", "deployments", name, namespace=namespace))

    def secret_exists(self, namespace: str, name: str) -> bool:
        """Whether the Secret exists (a field-selected list, so a missing one is not an error)."""
        # Metadata only: the Secret's data never reaches this process.
        found = self.api.list_items(
            kube.path("v1", "secrets", namespace=namespace),
            field_selector=f"metadata.name={name}",
            metadata_only=True,
        )
        return bool(found)

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        path = kube.path("v1", "pods", namespace=namespace)
        return self.api.list_items(path, label_selector=label_selector)

    # --- our resources ----------------------------------------------------------------------

    def get_custom(self, plural: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.api.get(kube.path(OURS, plural, name, namespace=namespace))

    def patch_status(self, plural: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """Merge-patch ``status`` (lists such as conditions and steps are replaced whole); the
        status as stored afterwards."""
        stored = self.api.patch_status(kube.path(OURS, plural, name, namespace=namespace), status)
        return dict(stored.get("status") or {})

    def scale_agent(self, namespace: str, name: str, replicas: int) -> None:
        """Scale through the scale subresource, so admission sees the change like any other."""
        self.api.scale(kube.path(OURS, "agentdeployments", name, namespace=namespace), replicas)

    def list_custom(self, plural: str, namespace: str, label_selector: str = "") -> list[dict[str, Any]]:
        return self.api.list_items(
            kube.path(OURS, plural, namespace=namespace), label_selector=label_selector
        )

    def create_custom(self, plural: str, namespace: str, body: dict[str, Any]) -> bool:
        """Create; False when an object of that name already exists (deterministic names = done)."""
        return self.api.create(kube.path(OURS, plural, namespace=namespace), body, exist_ok=True) is not None

    def ensure_peering(self, name: str, namespaces: tuple[str, ...]) -> None:
        """Create kopf's peering object(s) unless they exist: a ClusterKopfPeering for a
        cluster-wide controller, else a KopfPeering in each watched namespace.

        Shipping the object beside its CRD would make ``kubectl apply -k`` fail on a fresh
        cluster (kubectl maps every kind before the CRD is established), so the controller
        creates it, once, the first time any replica starts."""
        body = {"apiVersion": "kopf.dev/v1", "metadata": {"name": name}}
        if not namespaces:
            self.api.create(
                kube.path("kopf.dev/v1", "clusterkopfpeerings"),
                {**body, "kind": "ClusterKopfPeering"},
                exist_ok=True,
            )
        for namespace in namespaces:
            # A namespace that does not exist (yet) gets its peering on a later start.
            with contextlib.suppress(kube.ApiError):
                self.api.create(
                    kube.path("kopf.dev/v1", "kopfpeerings", namespace=namespace),
                    {**body, "kind": "KopfPeering"},
                    exist_ok=True,
                )

    # --- policy reports (OpenReports) -------------------------------------------------------

    def get_report(self, namespace: str) -> dict[str, Any] | None:
        return self.api.get(
            kube.path(reports.API_VERSION, reports.PLURAL, reports.REPORT_NAME, namespace=namespace)
        )

    def delete_report(self, namespace: str) -> None:
        self.api.delete(
            kube.path(reports.API_VERSION, reports.PLURAL, reports.REPORT_NAME, namespace=namespace)
        )

    def crd_exists(self, name: str) -> bool:
        return self.api.get(f"{kube.client.CRD_PATH}/{name}", metadata_only=True) is not None

    # --- events -----------------------------------------------------------------------------

    def post_event(self, involved: dict[str, Any], type_: str, reason: str, message: str) -> None:
        """A core/v1 Event on ``involved`` (an object's JSON); failures to post are not fatal."""
        self.api.post_event(involved, type_, reason, message, component=FIELD_MANAGER)
