"""Keeping the webhook's certificates valid: load, decide, renew, publish, inject.

:class:`CertManager` is what the webhook (or ``python -m certs``) runs: :meth:`CertManager.ensure`
once at start-up and then every ``interval`` seconds from a background thread.  One cycle:

1. read the current bundle from the Secret when one is configured (cluster), else from the
   certificate directory (local stack);
2. :func:`certs.authority.plan` decides whether anything must be renewed;
3. a renewed bundle is written to the Secret first (optimistic concurrency: on a conflict the
   other replica's bundle is adopted instead), then ``caBundle`` is injected into the webhook
   configurations, and only then is the serving pair written to the directory, which the TLS
   server reloads.  Publishing the CA before serving a certificate it signed means the API server
   never sees a certificate it cannot verify.  After a CA change we wait ``settle`` seconds so
   the API server's webhook-configuration watch has caught up.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certs.authority import CertBundle, CertificateError, Hosts, Lifetimes, plan
from certs.inject import inject_ca_bundle
from certs.store import SecretConflict, SecretRef, load_dir, read_secret, write_dir, write_secret

log = logging.getLogger(__name__)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class CertManager:
    """Owns the certificate lifecycle of one webhook instance."""

    cert_dir: Path
    hosts: Hosts
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    secret: SecretRef | None = None
    core_v1: Any = None
    admission_api: Any = None
    mutating: Sequence[str] = ()
    validating: Sequence[str] = ()
    settle_seconds: float = 2.0
    clock: Callable[[], dt.datetime] = utcnow

    def __post_init__(self) -> None:
        if self.secret is not None and self.core_v1 is None:
            raise ValueError("a Secret needs a CoreV1Api client")
        if (self.mutating or self.validating) and self.admission_api is None:
            raise ValueError("caBundle injection needs an AdmissionregistrationV1Api client")

    def _load(self) -> tuple[CertBundle | None, str]:
        if self.secret is not None:
            try:
                return read_secret(self.core_v1, self.secret)
            except CertificateError as exc:
                # Corrupt material is replaced rather than served; the reason is logged.
                log.warning("certificate Secret unusable, regenerating", extra={"reason": str(exc)})
                return None, self._secret_version()
        try:
            return load_dir(self.cert_dir), ""
        except CertificateError as exc:
            log.warning("certificate directory unusable, regenerating", extra={"reason": str(exc)})
            return None, ""

    def _secret_version(self) -> str:
        assert self.secret is not None
        return str(
            self.core_v1.read_namespaced_secret(
                self.secret.name, self.secret.namespace
            ).metadata.resource_version
        )

    def ensure(self) -> CertBundle:
        """One rotation cycle; returns the bundle now in force (see the module docstring)."""
        for _attempt in range(5):
            existing, version = self._load()
            bundle, reasons = plan(existing, self.hosts, self.clock(), self.lifetimes)
            ca_changed = existing is not None and existing.trusted_pem != bundle.trusted_pem
            if reasons and self.secret is not None:
                try:
                    write_secret(self.core_v1, self.secret, bundle, version)
                except SecretConflict:
                    log.info("another replica renewed the certificates first; adopting its bundle")
                    continue
            if reasons:
                log.info(
                    "certificates renewed",
                    extra={"reasons": reasons, "not_after": bundle.serving.not_after.isoformat()},
                )
            self._publish(bundle, ca_changed=ca_changed)
            return bundle
        raise RuntimeError(f"could not update Secret {self.secret} after 5 attempts (constant conflicts)")

    def _publish(self, bundle: CertBundle, *, ca_changed: bool) -> None:
        patched: list[str] = []
        if self.mutating or self.validating:
            patched = inject_ca_bundle(
                self.admission_api, bundle.trusted_pem, mutating=self.mutating, validating=self.validating
            )
        if patched and ca_changed and self.settle_seconds > 0:
            time.sleep(self.settle_seconds)
        current = _safe_load_dir(self.cert_dir)
        if current != bundle:
            write_dir(bundle, self.cert_dir)

    def run(self, interval: float, stop: threading.Event) -> None:
        """Call :meth:`ensure` every ``interval`` seconds until ``stop`` is set; errors are logged."""
        while not stop.wait(interval):
            try:
                self.ensure()
            except Exception as exc:
                # The current certificate stays in use; the next cycle retries.
                log.error("certificate rotation cycle failed; retrying next cycle", extra=describe_error(exc))

    def start(self, interval: float) -> tuple[threading.Thread, threading.Event]:
        stop = threading.Event()
        thread = threading.Thread(target=self.run, args=(interval, stop), name="cert-rotation", daemon=True)
        thread.start()
        return thread, stop


def describe_error(exc: BaseException) -> dict[str, Any]:
    """What to log about a failure: an API error's status and reason, never its body.

    The body of a failed Secret request may echo what was sent (key material); a network or
    file error's message is safe and says what went wrong.
    """
    if hasattr(exc, "body") and hasattr(exc, "status"):
        return {
            "error_type": type(exc).__name__,
            "status": exc.status,
            "reason": getattr(exc, "reason", None),
        }
    return {"error_type": type(exc).__name__, "error": str(exc)}


def _safe_load_dir(directory: Path) -> CertBundle | None:
    try:
        return load_dir(directory)
    except (CertificateError, OSError):
        return None
