"""A reflector: one collection kept in memory by list, then watch, on an asyncio event loop.

:meth:`Reflector.run` lists the collection, then watches from the list's ``resourceVersion``
(with bookmarks, so a resumed watch starts from a recent version), resumes from the last version
seen when a watch ends, and lists again on ``410 Gone`` or on any error of unknown cause (which
may have skipped events), backing off 0.2 s to 10 s between failures.  With ``metadata_only`` the
objects arrive as ``PartialObjectMetadata``: the API server strips spec and status, which keeps
their content out of the process and the watch cheap.

Every change happens on the event loop, so a reader on that loop never sees half of one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kube.client import AsyncClient, WatchExpired

log = logging.getLogger(__name__)

INITIAL_BACKOFF = 0.2
MAX_BACKOFF = 10.0


def object_key(obj: Mapping[str, Any]) -> tuple[str, str]:
    """(namespace, name); the namespace is "" for cluster-scoped objects."""
    meta = obj.get("metadata") or {}
    return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))


@dataclass
class Reflector:
    """List+watch ``path`` into ``store`` (key -> ``convert(object)``), calling ``on_change`` after
    every change.

    ``convert`` may refuse an object by raising ``ValueError`` (pydantic's ValidationError is
    one): the object is left out of the store, and said so, rather than stopping the reflector.
    """

    client: AsyncClient
    path: str
    kind: str
    convert: Callable[[dict[str, Any]], Any]
    on_change: Callable[[], None]
    metadata_only: bool = False
    watch_timeout: int = 300
    store: dict[tuple[str, str], Any] = field(default_factory=dict)
    #: Set once the first list is in the store.
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    resource_version: str = ""
    #: How many lists were made (the first one, then one per relist).
    lists: int = 0

    def _put(self, obj: dict[str, Any]) -> None:
        try:
            value = self.convert(obj)
        except ValueError as exc:
            errors = getattr(exc, "error_count", None)
            log.error(
                "ignoring object the model rejects",
                extra={
                    "kind": self.kind,
                    "object": "/".join(object_key(obj)),
                    "errors": errors() if callable(errors) else str(exc),
                },
            )
            self.store.pop(object_key(obj), None)
            return
        self.store[object_key(obj)] = value

    async def list(self) -> None:
        body = await self.client.list_collection(self.path, metadata_only=self.metadata_only)
        self.lists += 1
        self.store.clear()
        for item in body.get("items") or []:
            self._put(item)
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self.on_change()
        self.synced.set()

    async def watch(self) -> None:
        """One watch request, from :attr:`resource_version` until the server ends it.

        Raises :class:`~kube.client.WatchExpired` when that version is too old to resume from.
        """
        async with self.client.watch(
            self.path,
            resource_version=self.resource_version,
            timeout_seconds=self.watch_timeout,
            metadata_only=self.metadata_only,
        ) as events:
            async for event in events:
                self._event(event)

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self.store.pop(object_key(obj), None)
        elif kind in ("ADDED", "MODIFIED"):
            self._put(obj)
        self.on_change()

    async def run(self, *, resume_from: str = "") -> None:
        """List and watch until cancelled.  ``resume_from`` skips the first list and watches from
        that version (a relist follows if it is too old)."""
        backoff = INITIAL_BACKOFF
        need_list = not resume_from
        if resume_from:
            self.resource_version = resume_from
        while True:
            try:
                if need_list:
                    await self.list()
                    need_list = False
                await self.watch()
                backoff = INITIAL_BACKOFF
            except WatchExpired:
                need_list = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning(
                    "watch interrupted; retrying",
                    extra={"kind": self.kind, "error": f"{type(exc).__name__}: {exc}", "retry_in": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)
                # A watch error of unknown cause may have skipped events: relist to be sure.
                need_list = True
