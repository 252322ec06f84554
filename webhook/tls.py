"""Serving TLS with certificates that can be replaced while the server runs.

uvicorn takes one :class:`ssl.SSLContext` at start-up.  We hand it a *front* context whose SNI
callback runs at the start of every handshake (OpenSSL calls it even when the client sends no
server name, as Go does for ``https://127.0.0.1``) and switches the connection to the *current*
context.  Reloading builds a complete new context off to the side and swaps one reference, so:

- a handshake in flight keeps the context it started with;
- a handshake that starts after the swap uses the new certificate;
- a half-written pair (``tls.key`` already new, ``tls.crt`` still old) fails to load into the side
  context and is simply retried on the next poll; the live context is never touched.

A daemon thread polls the two files' ``(mtime, size, inode)`` every ``poll_interval`` seconds.
Polling instead of inotify keeps this working on Kubernetes Secret volumes, whose files change
by an atomic symlink swap that inotify watchers on the file path do not see.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

log = logging.getLogger(__name__)

Signature = tuple[tuple[int, int, int], tuple[int, int, int]]


def _stat(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class ReloadingTLS:
    """A server-side TLS configuration that follows ``cert_file``/``key_file`` on disk."""

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        poll_interval: float = 1.0,
        on_reload: Callable[[x509.Certificate], None] | None = None,
        on_handshake: Callable[[], None] | None = None,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.poll_interval = poll_interval
        self.on_reload = on_reload
        self.on_handshake = on_handshake
        self.reloads = 0
        self._signature: Signature | None = None
        self._current = self._build()
        self._front = self._new_context()
        self._front.sni_callback = self._select
        # The front context also carries the certificate, so a TLS stack that skipped the
        # callback would still complete the handshake (with the start-up certificate).
        self._front.load_cert_chain(cert_file, key_file)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _new_context() -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        # HTTP/1.1 only: uvicorn does not speak h2, and the API server falls back to 1.1 anyway.
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    def _build(self) -> ssl.SSLContext:
        before = (_stat(self.cert_file), _stat(self.key_file))
        ctx = self._new_context()
        ctx.load_cert_chain(self.cert_file, self.key_file)
        after = (_stat(self.cert_file), _stat(self.key_file))
        if before != after:
            # The files changed while we read them: the pair may be mixed; try again next poll.
            raise ssl.SSLError("certificate files changed while loading")
        self._signature = after
        return ctx

    def _select(
        self, sslobj: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        sslobj.context = self._current
        if self.on_handshake is not None:
            self.on_handshake()
        return None

    @property
    def context(self) -> ssl.SSLContext:
        """The context to give the server (uvicorn's ``ssl_context_factory`` returns this)."""
        return self._front

    def current_certificate(self) -> x509.Certificate:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes())

    def check(self) -> bool:
        """Reload if the files changed since the last successful load; True when reloaded."""
        try:
            signature = (_stat(self.cert_file), _stat(self.key_file))
        except FileNotFoundError:
            return False
        if signature == self._signature:
            return False
        try:
            fresh = self._build()
        except (ssl.SSLError, OSError, ValueError) as exc:
            log.warning("new certificate not loaded yet; keeping the current one", extra={"reason": str(exc)})
            return False
        self._current = fresh  # one reference assignment: atomic for concurrent handshakes
        self.reloads += 1
        cert = self.current_certificate()
        log.info("serving certificate reloaded", extra={"not_after": cert.not_valid_after_utc.isoformat()})
        if self.on_reload is not None:
            self.on_reload(cert)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.check()
            except Exception:
                log.exception("certificate reload check failed")

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="tls-reload", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
