"""Injecting the CA bundle into the webhook configurations, once, and without fighting.

The API server verifies the webhook's serving certificate against ``clientConfig.caBundle`` of
each webhook in the Mutating/ValidatingWebhookConfiguration.  For each configuration we:

1. read it; if every webhook already carries the bundle, stop: no write, so its
   ``resourceVersion`` does not move however many replicas run this every cycle;
2. ask ``confirm`` (when given) whether the bundle is still the current one.  Replicas confirm
   against the shared Secret *after* reading the configuration, so a replica holding a bundle
   that another replica has since replaced never writes it back over the newer one;
3. send one JSON patch that sets ``caBundle`` on every webhook that lacks it and also sets
   ``metadata.resourceVersion`` to the version read in step 1, which makes the API server apply it
   only if nobody changed the configuration in between (409 Conflict otherwise; we then start
   again at step 1).

Together: whoever writes last read the configuration, then confirmed its bundle was current, and
wrote with nothing in between, so racing replicas converge on the Secret's latest bundle with at
most one write each time it changes, and never flip the configuration back and forth.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import kube

ADMISSION = "admissionregistration.k8s.io/v1"

log = logging.getLogger(__name__)

#: Rounds of read -> confirm -> conditional patch per configuration before giving up for this cycle.
MAX_ATTEMPTS = 5


class StaleBundle(RuntimeError):
    """The bundle being injected is no longer the current one: re-read it and start over."""


class InjectionConflict(RuntimeError):
    """A configuration kept changing under us for :data:`MAX_ATTEMPTS` rounds."""


def ca_bundle_patch(configuration: Mapping[str, Any], ca_bundle_pem: bytes) -> list[dict[str, Any]]:
    """JSON patch operations that set ``caBundle`` on every webhook that lacks this bundle.

    Empty when nothing is missing.  Otherwise the first operation pins the ``resourceVersion``
    that was read (the API server treats it as a precondition), and each webhook's entry is
    guarded by a ``test`` of its name, so the index-based paths can only hit the entries we saw.
    """
    encoded = base64.b64encode(ca_bundle_pem).decode()
    ops: list[dict[str, Any]] = []
    for index, webhook in enumerate(configuration.get("webhooks") or []):
        if (webhook.get("clientConfig") or {}).get("caBundle") == encoded:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook["name"]})
        ops.append({"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded})
    if not ops:
        return []
    version = configuration["metadata"]["resourceVersion"]
    return [{"op": "replace", "path": "/metadata/resourceVersion", "value": version}, *ops]


def carries_ca_bundle(configuration: Mapping[str, Any], ca_bundle_pem: bytes) -> bool:
    """True when every webhook of the configuration already trusts exactly this bundle."""
    return not ca_bundle_patch(configuration, ca_bundle_pem)


def inject_ca_bundle(
    api: kube.Client,
    ca_bundle_pem: bytes,
    *,
    mutating: Sequence[str] = (),
    validating: Sequence[str] = (),
    confirm: Callable[[], bool] | None = None,
) -> list[str]:
    """Set ``caBundle`` on the named configurations; returns the ones this call patched.

    ``confirm`` is
    called before each patch (see the module docstring); when it returns False,
    :class:`StaleBundle` is raised and nothing more is written.  A configuration that does not
    exist (yet) is skipped with a warning: the webhook may start before the configurations are
    applied, and the rotation loop injects them on a later cycle.
    """
    patched: list[str] = []
    kinds = (
        ("MutatingWebhookConfiguration", "mutatingwebhookconfigurations", mutating),
        ("ValidatingWebhookConfiguration", "validatingwebhookconfigurations", validating),
    )
    for kind, plural, names in kinds:
        for name in names:
            if _inject_one(api, kind, kube.path(ADMISSION, plural, name), ca_bundle_pem, confirm):
                patched.append(f"{kind}/{name}")
    return patched


def _inject_one(
    api: kube.Client, kind: str, path: str, ca_bundle_pem: bytes, confirm: Callable[[], bool] | None
) -> bool:
    """One configuration: True when this call wrote it."""
    name = path.rsplit("/", 1)[-1]
    for _attempt in range(MAX_ATTEMPTS):
        current = api.get(path)
        if current is None:
            log.warning("webhook configuration not found; caBundle not injected yet",
                        extra={"kind": kind, "configuration": name})  # fmt: skip
            return False
        ops = ca_bundle_patch(current, ca_bundle_pem)
        if not ops:
            return False
        if confirm is not None and not confirm():
            raise StaleBundle(f"the certificate bundle changed while injecting it into {kind}/{name}")
        try:
            api.json_patch(path, ops)
        except kube.ApiError as exc:
            # 409: the configuration changed since we read it (another replica injected, or it was
            # re-applied); 422: a name test failed (webhooks reordered).  Both: read again.
            if exc.status not in (409, 422):
                raise
            log.info("webhook configuration changed while injecting caBundle; re-reading",
                     extra={"kind": kind, "configuration": name})  # fmt: skip
            continue
        log.info("caBundle injected", extra={"kind": kind, "configuration": name})
        return True
    raise InjectionConflict(
        f"{kind}/{name} changed on every one of {MAX_ATTEMPTS} attempts to inject caBundle"
    )
