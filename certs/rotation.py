"""Keeping the webhook's certificates valid: load, decide, renew, publish, inject, follow.

:class:`CertManager` is what the webhook (or ``python -m certs``) runs: :meth:`CertManager.ensure`
once at start-up, then :meth:`CertManager.start` keeps it current from background threads.

One cycle (:meth:`CertManager.ensure`):

1. read the current bundle from the Secret when one is configured (cluster), else from the
   certificate directory (local stack);
2. :func:`certs.authority.plan` decides whether anything must be renewed;
3. a renewed bundle is written to the Secret with the ``resourceVersion`` it was read at, so of
   several replicas deciding at once exactly one wins; the others get 409 Conflict, re-read, and
   adopt the winner's bundle (their own freshly generated keys are thrown away unused);
4. ``caBundle`` is injected into the webhook configurations (:mod:`certs.inject`: no write when it
   is already there; conditional writes that re-confirm against the Secret, so replicas never put
   an older bundle back);
5. only then is the serving pair written to ``cert_dir``, which the TLS server reloads.  When the
   new serving certificate comes from a different CA than the one being served, we first wait
   ``settle_seconds`` so the API server's watch of the configurations has caught up with the
   ``caBundle`` that trusts it.  During a CA rotation that bundle carries the old and the new CA,
   so certificates still being served by slower replicas stay trusted too.

Between cycles (:meth:`CertManager.run`) a replica sleeps until the bundle's next renewal or CA
expiry (:func:`certs.authority.next_change`), at most ``interval`` seconds, and is woken early by a
watch on the Secret (:meth:`CertManager.follow_secret`): when another replica renews, this one
picks the new certificate up at once.  A watch the RBAC does not allow degrades to re-reading
every ``interval`` seconds, with a warning saying what to grant.
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

import kube
from certs.authority import CertBundle, CertificateError, Hosts, Lifetimes, next_change, plan
from certs.inject import StaleBundle, inject_ca_bundle
from certs.store import (
    SecretConflict,
    SecretRef,
    SecretSnapshot,
    load_dir,
    load_secret,
    write_dir,
    write_secret,
)

log = logging.getLogger(__name__)

#: Read-decide-write rounds per cycle; each lost round means another replica made progress.
MAX_ATTEMPTS = 5
#: Shortest sleep between cycles, so a clock oddity can never turn the loop into a busy loop.
MIN_DELAY = 0.1
#: Server-side timeout of one Secret watch request; the watch is then resumed from where it was.
WATCH_TIMEOUT = 120


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Rotation:
    """The background threads of a running :class:`CertManager` (see :meth:`CertManager.start`)."""

    threads: list[threading.Thread]
    stopping: threading.Event
    manager: CertManager

    def stop(self) -> None:
        self.stopping.set()
        self.manager.wake.set()
        self.manager.interrupt_watch()


@dataclass
class CertManager:
    """Owns the certificate lifecycle of one webhook instance."""

    cert_dir: Path
    hosts: Hosts
    lifetimes: Lifetimes = field(default_factory=Lifetimes)
    secret: SecretRef | None = None
    #: Needed for a Secret and for caBundle injection; a local stack without either runs without.
    api: kube.Client | None = None
    mutating: Sequence[str] = ()
    validating: Sequence[str] = ()
    settle_seconds: float = 2.0
    clock: Callable[[], dt.datetime] = utcnow
    #: The bundle the last successful cycle put in force.
    current: CertBundle | None = field(default=None, init=False)
    #: Set to run a cycle now (a Secret change, or stopping).
    wake: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _seen_version: str = field(default="", init=False, repr=False)
    _watch_stream: kube.client.WatchStream | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.secret is not None and self.api is None:
            raise ValueError("a Secret needs a Kubernetes client")
        if (self.mutating or self.validating) and self.api is None:
            raise ValueError("caBundle injection needs a Kubernetes client")

    def _client(self) -> kube.Client:
        assert self.api is not None, "checked in __post_init__"
        return self.api

    # --- one cycle --------------------------------------------------------------------------------

    def _read_secret(self) -> SecretSnapshot:
        assert self.secret is not None
        snapshot = load_secret(self._client(), self.secret)
        if snapshot.problem is not None:
            # Corrupt material is replaced rather than served; the reason (never the data) is logged.
            log.warning("certificate Secret unusable, regenerating", extra={"reason": snapshot.problem})
        self._seen_version = snapshot.resource_version
        return snapshot

    def _read_dir(self) -> CertBundle | None:
        try:
            return load_dir(self.cert_dir)
        except CertificateError as exc:
            log.warning("certificate directory unusable, regenerating", extra={"reason": str(exc)})
            return None

    def ensure(self) -> CertBundle:
        """One rotation cycle; returns the bundle now in force (see the module docstring)."""
        for _attempt in range(MAX_ATTEMPTS):
            snapshot = self._read_secret() if self.secret is not None else None
            existing = snapshot.bundle if snapshot is not None else self._read_dir()
            bundle, reasons = plan(existing, self.hosts, self.clock(), self.lifetimes)
            if reasons and snapshot is not None:
                assert self.secret is not None
                try:
                    self._seen_version = write_secret(
                        self._client(), self.secret, bundle, snapshot.resource_version, read=snapshot
                    )
                except SecretConflict:
                    log.info("another replica renewed the certificates first; adopting its bundle")
                    continue
            if reasons:
                log.info(
                    "certificates renewed",
                    extra={
                        "reasons": reasons,
                        "serial": f"{bundle.serving.certificate.serial_number:x}",
                        "not_after": bundle.serving.not_after.isoformat(),
                    },
                )
            try:
                self._publish(bundle)
            except StaleBundle:
                log.info("the Secret changed while publishing; adopting its newer bundle")
                continue
            self.current = bundle
            return bundle
        raise RuntimeError(
            f"could not settle on a certificate bundle in {MAX_ATTEMPTS} attempts: Secret {self.secret}"
            " or the webhook configurations kept changing (another writer fighting over them?)"
        )

    def _trust_is_current(self, trusted_pem: bytes) -> bool:
        """Whether the Secret still holds this trusted bundle (read now, after the configuration)."""
        snapshot = self._read_secret()
        return snapshot.bundle is not None and snapshot.bundle.trusted_pem == trusted_pem

    def _publish(self, bundle: CertBundle) -> None:
        injecting = bool(self.mutating or self.validating)
        if injecting:
            confirm = None
            if self.secret is not None:

                def confirm() -> bool:
                    return self._trust_is_current(bundle.trusted_pem)

            inject_ca_bundle(
                self._client(),
                bundle.trusted_pem,
                mutating=self.mutating,
                validating=self.validating,
                confirm=confirm,
            )
        served = _safe_load_dir(self.cert_dir)
        if served == bundle:
            return
        if injecting and served is not None and served.ca != bundle.ca and self.settle_seconds > 0:
            # The configurations now trust the new CA, but the API server applies them through
            # its own watch: give it a moment before anything signed by that CA is served.
            log.info("serving certificate from a new CA; waiting for the API server to trust it",
                     extra={"seconds": self.settle_seconds})  # fmt: skip
            time.sleep(self.settle_seconds)
        write_dir(bundle, self.cert_dir)

    # --- between cycles ---------------------------------------------------------------------------

    def next_delay(self, interval: float, failures: int = 0) -> float:
        """Seconds until the next cycle: the bundle's next change, capped at ``interval``.

        After failed cycles it backs off 1, 2, 4 ... seconds (still capped), so an unreachable API
        server is retried soon when a renewal is due but never hammered.
        """
        if failures:
            return max(MIN_DELAY, min(interval, 2.0 ** min(failures - 1, 10)))
        if self.current is None:
            return max(MIN_DELAY, interval)
        # A hair past the renewal moment, so the cycle that wakes then finds it due.
        due = (next_change(self.current) - self.clock()).total_seconds() + 0.05
        return max(MIN_DELAY, min(interval, due))

    def run(self, interval: float, stop: threading.Event) -> None:
        """Run cycles (see :meth:`next_delay`) until ``stop`` is set; errors are logged and retried."""
        failures = 0
        while not stop.is_set():
            self.wake.wait(self.next_delay(interval, failures))
            self.wake.clear()
            if stop.is_set():
                return
            try:
                self.ensure()
                failures = 0
            except Exception as exc:
                # The current certificate stays in use; the next cycle retries.
                failures += 1
                log.error("certificate rotation cycle failed; retrying", extra=describe_error(exc))

    def follow_secret(self, stop: threading.Event) -> None:
        """Watch the Secret and wake :meth:`run` whenever it changes, until ``stop`` is set.

        The watch is restricted to the one name (``fieldSelector=metadata.name=...``), which RBAC
        authorizes as a request for that resource name: ``watch`` with ``resourceNames`` suffices.
        It resumes from the last version seen, so a change made while it reconnects still wakes
        the loop; when that version is too old (410) the loop is woken anyway and a fresh watch
        starts from the current version.
        """
        assert self.secret is not None
        version = self._seen_version
        failures = 0
        while not stop.is_set():
            try:
                version = self._watch_once(version, stop)
                failures = 0
            except _WatchForbidden:
                log.warning(
                    "not allowed to watch the certificate Secret; re-reading it every rotation"
                    " interval instead (grant verb 'watch' on this Secret by resourceNames)",
                    extra={"secret": str(self.secret)},
                )
                return
            except Exception as exc:
                if stop.is_set():
                    return
                failures += 1
                log.warning("certificate Secret watch interrupted; resuming", extra=describe_error(exc))
                stop.wait(min(30.0, 2.0 ** min(failures - 1, 5)))

    def _watch_once(self, version: str, stop: threading.Event) -> str:
        """One watch request; returns the version to resume from ("" to start afresh)."""
        assert self.secret is not None
        api = self._client()
        if not version:
            version = str(api.request("GET", self.secret.path)["metadata"]["resourceVersion"])
        try:
            with api.watch(
                kube.path("v1", "secrets", namespace=self.secret.namespace),
                field_selector=f"metadata.name={self.secret.name}",
                resource_version=version,
                timeout_seconds=WATCH_TIMEOUT,
            ) as stream:
                self._watch_stream = stream
                if stop.is_set():  # stopped while connecting: interrupt_watch may have missed this one
                    return version
                for event in stream:
                    if stop.is_set():
                        break
                    obj = event.get("object") or {}
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    if event.get("type") != "BOOKMARK" and version != self._seen_version:
                        self.wake.set()
        except kube.WatchExpired:
            # Our version is too old to resume from: re-read now, and watch afresh.
            self.wake.set()
            return ""
        except kube.ApiError as exc:
            if exc.status == 403:
                raise _WatchForbidden from exc
            raise
        finally:
            self._watch_stream = None
        return version

    def interrupt_watch(self) -> None:
        """Close the Secret watch's connection now (stopping), instead of at its server-side timeout."""
        stream = self._watch_stream
        if stream is not None:
            stream.interrupt()

    def start(self, interval: float) -> Rotation:
        """Run :meth:`run` (and, with a Secret, :meth:`follow_secret`) on daemon threads."""
        stopping = threading.Event()
        threads = [
            threading.Thread(target=self.run, args=(interval, stopping), name="cert-rotation", daemon=True)
        ]
        if self.secret is not None:
            threads.append(
                threading.Thread(target=self.follow_secret, args=(stopping,), name="cert-watch", daemon=True)
            )
        for thread in threads:
            thread.start()
        return Rotation(threads, stopping, self)


class _WatchForbidden(Exception):
    """RBAC does not allow watching the Secret."""


def describe_error(exc: BaseException) -> dict[str, Any]:
    """What to log about a failure: an API error's status and reason, never its body.

    The body of a failed Secret request may echo what was sent (key material); a network or
    file error's message is safe and says what went wrong.
    """
    if isinstance(exc, kube.ApiError):
        return {"error_type": type(exc).__name__, "status": exc.status, "reason": exc.reason}
    return {"error_type": type(exc).__name__, "error": str(exc)}


def _safe_load_dir(directory: Path) -> CertBundle | None:
    try:
        return load_dir(directory)
    except (CertificateError, OSError):
        return None
