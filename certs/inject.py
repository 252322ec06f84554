"""Injecting the CA bundle into the webhook configurations.

The API server verifies the webhook's serving certificate against ``clientConfig.caBundle`` of
each webhook in the Mutating/ValidatingWebhookConfiguration.  We read each configuration and send
one JSON patch that sets ``caBundle`` on every webhook whose bundle differs, guarded by a ``test``
of that webhook's name so a concurrent reordering makes the patch fail instead of writing the
bundle into the wrong entry.  Nothing is patched when the bundle is already in place, so the
rotation loop can call this every cycle.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from typing import Any

log = logging.getLogger(__name__)


def _webhooks(configuration: Any) -> list[Any]:
    return list(getattr(configuration, "webhooks", None) or [])


def ca_bundle_patch(configuration: Any, ca_bundle_pem: bytes) -> list[dict[str, Any]]:
    """JSON patch operations that set ``caBundle`` on every webhook that lacks this bundle."""
    encoded = base64.b64encode(ca_bundle_pem).decode()
    ops: list[dict[str, Any]] = []
    for index, webhook in enumerate(_webhooks(configuration)):
        current = webhook.client_config.ca_bundle
        if isinstance(current, bytes):
            current = current.decode()
        if current == encoded:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook.name})
        ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded})
    return ops


def inject_ca_bundle(
    admission_api: Any,
    ca_bundle_pem: bytes,
    *,
    mutating: Sequence[str] = (),
    validating: Sequence[str] = (),
) -> list[str]:
    """Set ``caBundle`` on the named configurations; returns the ones that were patched.

    ``admission_api`` is a ``kubernetes.client.AdmissionregistrationV1Api``.  A configuration
    that does not exist (yet) is skipped with a warning: the webhook may start before the
    configurations are applied, and the rotation loop injects them on its next cycle.
    """
    patched: list[str] = []
    kinds = (
        ("MutatingWebhookConfiguration", mutating, admission_api.read_mutating_webhook_configuration,
         admission_api.patch_mutating_webhook_configuration),
        ("ValidatingWebhookConfiguration", validating, admission_api.read_validating_webhook_configuration,
         admission_api.patch_validating_webhook_configuration),
    )  # fmt: skip
    for kind, names, read, patch in kinds:
        for name in names:
            try:
                current = read(name)
            except Exception as exc:
                if getattr(exc, "status", None) != 404:
                    raise
                log.warning("webhook configuration not found; caBundle not injected yet",
                            extra={"kind": kind, "configuration": name})  # fmt: skip
                continue
            ops = ca_bundle_patch(current, ca_bundle_pem)
            if not ops:
                continue
            patch(name, ops, _content_type="application/json-patch+json")
            log.info("caBundle injected", extra={"kind": kind, "configuration": name})
            patched.append(f"{kind}/{name}")
    return patched
