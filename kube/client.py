"""Requests to the API server: a blocking :class:`Client` and an asyncio :class:`AsyncClient`.

Both are httpx clients set up from one :class:`~kube.config.Connection` (server, TLS, a bearer
token asked for on every request), speak plain JSON dicts (camelCase, exactly what the API server
sends and what kopf hands to handlers), and raise :class:`ApiError` on any non-2xx answer.  Paths
are the API server's own (:func:`path` builds them), so any resource works without a generated
model.

The blocking client carries the write helpers (server-side apply with discovery, merge and JSON
patches, the status and scale subresources, Events, CRD installation); the async client carries
what an event loop needs: reads and watches (:mod:`kube.watch` builds the reflector on them).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import socket
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx

from kube.config import Connection

JSON = "application/json"
APPLY_PATCH = "application/apply-patch+yaml"
MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
#: Ask for ``PartialObjectMetadata``: the server strips spec and status (falls back to full JSON).
METADATA_ONLY = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1,application/json"
METADATA_ONLY_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
CRD_PATH = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
#: Recent Events whose count a process remembers (client-go's recorder keeps 4096 too).
EVENT_COUNT_CACHE = 4096
#: Answers the API server asks to be retried (``Retry-After``), as client-go retries them: at most
#: this many times per request, waiting what the server says, capped here.
MAX_RETRIES = 10
MAX_RETRY_AFTER = 10.0

Query = Mapping[str, str] | Sequence[tuple[str, str]]

# httpx logs every request at INFO; a controller makes thousands a minute and the lines add nothing
# an ApiError does not say.  A process that wants them sets the level itself.
if logging.getLogger("httpx").level == logging.NOTSET:
    logging.getLogger("httpx").setLevel(logging.WARNING)


class ApiError(Exception):
    """A non-2xx answer: the HTTP status and the API server's ``Status`` reason and message.

    ``message`` is the server's own explanation (which verb RBAC denied, which webhook refused and
    why); it can quote the request, so code handling Secrets logs ``status`` and ``reason`` only.
    """

    def __init__(self, status: int, reason: str, message: str, *, method: str = "", path: str = "") -> None:
        where = f"{method} {path}: ".lstrip() if method or path else ""
        super().__init__(f"{where}{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.method = method
        self.path = path

    @property
    def explanation(self) -> str:
        """``"403 <the server's message>"``: what to tell a user."""
        return f"{self.status} {self.message or self.reason}"


class WatchExpired(ApiError):
    """410 Gone: the resourceVersion to resume from is too old; list again."""


def _error(status: int, content: bytes, *, method: str, path: str, phrase: str = "") -> ApiError:
    reason, message = phrase, ""
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(content)
        reason = str(body.get("reason") or reason)
        message = str(body.get("message") or "")
    if not message:
        message = content[:200].decode(errors="replace").strip()
    cls = WatchExpired if status == 410 else ApiError
    return cls(status, reason or str(status), message, method=method, path=path)


def api_base(api_version: str) -> str:
    """``/api/v1`` for the core group, ``/apis/<group>/<version>`` for the others."""
    return "/api/v1" if api_version == "v1" else f"/apis/{api_version}"


def path(
    api_version: str,
    plural: str,
    name: str | None = None,
    *,
    namespace: str | None = None,
    subresource: str | None = None,
) -> str:
    """The URL path of a collection or object, e.g. ``path("v1", "secrets", "x", namespace="ns")``."""
    parts = [api_base(api_version)]
    if namespace:
        parts.append(f"namespaces/{namespace}")
    parts.append(plural)
    if name:
        parts.append(name)
    if subresource:
        parts.append(subresource)
    return "/".join(parts)


def _query(query: Query | None) -> list[tuple[str, str]]:
    return list(query.items()) if isinstance(query, Mapping) else list(query or ())


def _selectors(label_selector: str, field_selector: str) -> list[tuple[str, str]]:
    selectors = []
    if label_selector:
        selectors.append(("labelSelector", label_selector))
    if field_selector:
        selectors.append(("fieldSelector", field_selector))
    return selectors


def _watch_query(
    resource_version: str, timeout_seconds: int, label_selector: str, field_selector: str
) -> list[tuple[str, str]]:
    query = [("watch", "true"), ("allowWatchBookmarks", "true"), ("timeoutSeconds", str(timeout_seconds))]
    if resource_version:
        query.append(("resourceVersion", resource_version))
    return [*query, *_selectors(label_selector, field_selector)]


def _encode(body: Any) -> bytes | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        return body
    # JSON is YAML too, so apply patches are sent as JSON under the apply-patch+yaml type.
    return json.dumps(body, separators=(",", ":")).encode()


def _decode(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
    if not response.is_success:
        raise _error(
            response.status_code, response.content, method=method, path=path, phrase=response.reason_phrase
        )
    if not response.content:
        return {}
    data: dict[str, Any] = response.json()
    return data


def _event(line: str) -> dict[str, Any] | None:
    """One line of a watch stream; an ERROR event becomes the :class:`ApiError` it reports."""
    if not line.strip():
        return None
    event: dict[str, Any] = json.loads(line)
    if event.get("type") == "ERROR":
        status = event.get("object") or {}
        code = int(status.get("code") or 500)
        cls = WatchExpired if code == 410 else ApiError
        raise cls(code, str(status.get("reason") or code), str(status.get("message") or ""), method="WATCH")
    return event


class _Base:
    def __init__(self, connection: Connection, user_agent: str) -> None:
        self.connection = connection
        self._server = connection.server.rstrip("/")
        self._user_agent = user_agent
        self._extensions = (
            {"sni_hostname": connection.tls_server_name} if connection.tls_server_name else None
        )

    def _url(self, path: str, query: Sequence[tuple[str, str]] = ()) -> str:
        # One absolute URL string: httpx's base_url and params merging cost more client CPU per
        # request than the rest of our layer (measured: ~60 us of ~650 us for an apply).
        return f"{self._server}{path}?{urlencode(query)}" if query else f"{self._server}{path}"

    def _headers(self, accept: str, content_type: str | None) -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": self._user_agent, **self.connection.headers()}
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def _build(
        self, method: str, path: str, body: Any, query: Query | None, content_type: str | None, accept: str
    ) -> dict[str, Any]:
        """The keyword arguments of one httpx request, the same for the blocking and async clients."""
        content = _encode(body)
        if content is not None and content_type is None:
            content_type = JSON
        return {
            "method": method,
            "url": self._url(path, _query(query)),
            "content": content,
            "headers": self._headers(accept, content_type),
            "extensions": self._extensions,
        }


def retry_after(response: httpx.Response) -> float | None:
    """Seconds to wait before sending the request again, or None: not to be retried.

    As client-go, for every verb: a 429 (priority and fairness, or a cache still initialising:
    "storage is (re)initializing"), which the server refused without acting on it, or a 5xx that
    carries ``Retry-After`` (a create that did land meanwhile then answers 409, as in client-go)."""
    if response.status_code != 429 and response.status_code < 500:
        return None
    header = response.headers.get("Retry-After")
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:  # an HTTP date: the API server never sends one
        seconds = 1.0
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class WatchStream:
    """One open watch: iterate for events (``ERROR`` ones are raised as :class:`ApiError`)."""

    def __init__(self, response: httpx.Response) -> None:
        self._response = response
        self._interrupted = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for line in self._response.iter_lines():
                event = _event(line)
                if event is not None:
                    yield event
        except (httpx.HTTPError, OSError):
            if not self._interrupted:
                raise

    def interrupt(self) -> None:
        """Close the connection from another thread, ending a blocked iteration at once.

        Closing the response is not enough: a thread blocked in ``recv`` stays there until data
        or the server's timeout arrive, so the socket itself is shut down.
        """
        self._interrupted = True
        stream = self._response.extensions.get("network_stream")
        sock = stream.get_extra_info("socket") if stream is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                # socket.socket's own shutdown, not SSLSocket's, which would drop the TLS state
                # the blocked reader is still using.
                socket.socket.shutdown(sock, socket.SHUT_RDWR)


class Client(_Base):
    """The blocking client (thread-safe: one instance serves every thread of a process)."""

    def __init__(
        self,
        connection: Connection,
        *,
        user_agent: str = "agentops",
        timeout: float = 30.0,
        max_connections: int = 32,
    ) -> None:
        super().__init__(connection, user_agent)
        self._http = httpx.Client(
            verify=connection.ssl_context(),
            timeout=timeout,
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
            trust_env=False,
        )
        self._discovery = _Discovery()
        self._events_lock = threading.Lock()
        #: How often this process posted each recent Event (a PATCH sets the count; it cannot add).
        self._event_counts: OrderedDict[str, int] = OrderedDict()

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Query | None = None,
        content_type: str | None = None,
        accept: str = JSON,
    ) -> dict[str, Any]:
        """One API call; the decoded JSON answer, or :class:`ApiError`."""
        request = self._build(method, path, body, query, content_type, accept)
        response = self._http.request(**request)
        for _ in range(MAX_RETRIES):
            wait = retry_after(response)
            if wait is None:
                break
            time.sleep(wait)
            response = self._http.request(**request)
        return _decode(response, method, path)

    # --- reads ------------------------------------------------------------------------------

    def get(self, path: str, *, metadata_only: bool = False) -> dict[str, Any] | None:
        """The object, or None when it does not exist."""
        try:
            return self.request("GET", path, accept=METADATA_ONLY if metadata_only else JSON)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def list_items(
        self, path: str, *, label_selector: str = "", field_selector: str = "", metadata_only: bool = False
    ) -> list[dict[str, Any]]:
        """The items of a collection."""
        answer = self.request(
            "GET",
            path,
            query=_selectors(label_selector, field_selector),
            accept=METADATA_ONLY_LIST if metadata_only else JSON,
        )
        items: list[dict[str, Any]] = answer.get("items") or []
        return items

    @contextlib.contextmanager
    def watch(
        self,
        path: str,
        *,
        resource_version: str = "",
        timeout_seconds: int = 300,
        label_selector: str = "",
        field_selector: str = "",
        metadata_only: bool = False,
    ) -> Iterator[WatchStream]:
        """Watch a collection from ``resource_version`` (with bookmarks); ends after ``timeout_seconds``."""
        # A read timeout beyond the server-side one: a silently dead connection is noticed.
        timeout = httpx.Timeout(30.0, read=timeout_seconds + 60.0)
        with self._http.stream(
            "GET",
            self._url(path, _watch_query(resource_version, timeout_seconds, label_selector, field_selector)),
            headers=self._headers(METADATA_ONLY if metadata_only else JSON, None),
            timeout=timeout,
            extensions=self._extensions,
        ) as response:
            if not response.is_success:
                response.read()
                raise _error(response.status_code, response.content, method="WATCH", path=path)
            yield WatchStream(response)

    # --- writes -----------------------------------------------------------------------------

    def create(self, path: str, body: Mapping[str, Any], *, exist_ok: bool = False) -> dict[str, Any] | None:
        """POST to a collection; with ``exist_ok``, None when an object of that name exists (409)."""
        try:
            return self.request("POST", path, body)
        except ApiError as exc:
            if exist_ok and exc.status == 409:
                return None
            raise

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT: conditional on ``metadata.resourceVersion`` when the body carries one (409 if moved)."""
        return self.request("PUT", path, body)

    def delete(self, path: str, *, propagation: str | None = None) -> bool:
        """Delete; False when it did not exist."""
        body = {"propagationPolicy": propagation} if propagation else None
        try:
            self.request("DELETE", path, body)
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def merge_patch(self, path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """JSON merge patch (lists, such as conditions, are replaced whole)."""
        return self.request("PATCH", path, patch, content_type=MERGE_PATCH)

    def json_patch(self, path: str, operations: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        return self.request("PATCH", path, list(operations), content_type=JSON_PATCH)

    def patch_status(self, path: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Merge-patch the status subresource of the object at ``path``."""
        return self.merge_patch(f"{path}/status", {"status": status})

    def scale(self, path: str, replicas: int) -> dict[str, Any]:
        """Set replicas through the scale subresource, so admission sees it like any other change."""
        return self.merge_patch(f"{path}/scale", {"spec": {"replicas": replicas}})

    def object_path(self, obj: Mapping[str, Any], *, namespace: str | None = None) -> str:
        """Where ``obj`` lives, from its apiVersion, kind and name (discovery says plural and scope)."""
        api_version, kind = str(obj["apiVersion"]), str(obj["kind"])
        resource = self._discovery.get(api_version, kind)
        if resource is None:
            listing = self.request("GET", api_base(api_version))
            resource = self._discovery.learn(api_version, listing, kind)
        plural, namespaced = resource
        meta = obj.get("metadata") or {}
        ns = (meta.get("namespace") or namespace or self.connection.namespace) if namespaced else None
        return path(api_version, plural, str(meta["name"]), namespace=ns)

    def apply(
        self,
        obj: Mapping[str, Any],
        *,
        field_manager: str,
        force: bool = True,
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """Server-side apply: creates a missing object or brings a drifted one back, in one call.

        ``force`` takes over fields another manager set (a re-run of ``kubectl apply
        --server-side --force-conflicts``); a namespaced object without a namespace goes to
        ``namespace``, else the connection's default.
        """
        query = [("fieldManager", field_manager)] + ([("force", "true")] if force else [])
        return self.request(
            "PATCH", self.object_path(obj, namespace=namespace), obj, query=query, content_type=APPLY_PATCH
        )

    def post_event(
        self, involved: Mapping[str, Any], type_: str, reason: str, message: str, *, component: str
    ) -> None:
        """A core/v1 Event about ``involved`` (an object's JSON).  An Event is a courtesy: a failure
        to post one is swallowed, never allowed to fail the work it reports on.

        Repeats aggregate the way client-go's recorder does: the same object, reason and message
        name the same Event, so a second post (a retry, or two reconciliations racing) raises its
        ``count`` and ``lastTimestamp`` (``kubectl describe`` shows "x2 over 5s") instead of
        adding a line.
        """
        body = event_body(involved, type_, reason, message, component)
        name, namespace = body["metadata"]["name"], body["metadata"]["namespace"]
        with contextlib.suppress(ApiError, httpx.HTTPError):
            try:
                self.request("POST", path("v1", "events", namespace=namespace), body)
                count = 1
            except ApiError as exc:
                if exc.status != 409:
                    raise
                with self._events_lock:
                    count = self._event_counts.get(name, 1) + 1
                self.merge_patch(path("v1", "events", name, namespace=namespace),
                                 {"count": count, "lastTimestamp": body["lastTimestamp"]})  # fmt: skip
            with self._events_lock:
                self._event_counts[name] = count
                self._event_counts.move_to_end(name)
                while len(self._event_counts) > EVENT_COUNT_CACHE:
                    self._event_counts.popitem(last=False)

    # --- CRDs -------------------------------------------------------------------------------

    def install_crds(
        self, crds: Iterable[Mapping[str, Any]], *, field_manager: str, timeout: float = 30.0
    ) -> list[str]:
        """Apply CustomResourceDefinitions and wait until the API server serves every one."""
        names = [str(self.apply(crd, field_manager=field_manager)["metadata"]["name"]) for crd in crds]
        self.wait_for_crds(names, timeout=timeout)
        return names

    def wait_for_crds(self, names: Iterable[str], *, timeout: float = 30.0) -> None:
        """Block until each CRD is Established (its resources are served); TimeoutError otherwise."""
        deadline = time.monotonic() + timeout
        pending = set(names)
        while pending:
            pending = {name for name in pending if not established(self.get(f"{CRD_PATH}/{name}"))}
            if not pending:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"CRDs not Established after {timeout:.0f}s: {', '.join(sorted(pending))}")
            time.sleep(0.1)


class AsyncClient(_Base):
    """The asyncio client: reads and watches on the caller's event loop."""

    def __init__(
        self, connection: Connection, *, user_agent: str = "agentops", timeout: float = 30.0
    ) -> None:
        super().__init__(connection, user_agent)
        self._http = httpx.AsyncClient(verify=connection.ssl_context(), timeout=timeout, trust_env=False)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        query: Query | None = None,
        content_type: str | None = None,
        accept: str = JSON,
    ) -> dict[str, Any]:
        request = self._build(method, path, body, query, content_type, accept)
        response = await self._http.request(**request)
        for _ in range(MAX_RETRIES):
            wait = retry_after(response)
            if wait is None:
                break
            await asyncio.sleep(wait)
            response = await self._http.request(**request)
        return _decode(response, method, path)

    async def get(self, path: str, *, metadata_only: bool = False) -> dict[str, Any] | None:
        try:
            return await self.request("GET", path, accept=METADATA_ONLY if metadata_only else JSON)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    async def list_collection(
        self, path: str, *, label_selector: str = "", field_selector: str = "", metadata_only: bool = False
    ) -> dict[str, Any]:
        """The whole List (``items`` and ``metadata.resourceVersion``, to watch from)."""
        return await self.request(
            "GET",
            path,
            query=_selectors(label_selector, field_selector),
            accept=METADATA_ONLY_LIST if metadata_only else JSON,
        )

    @contextlib.asynccontextmanager
    async def watch(
        self,
        path: str,
        *,
        resource_version: str = "",
        timeout_seconds: int = 300,
        label_selector: str = "",
        field_selector: str = "",
        metadata_only: bool = False,
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """:meth:`Client.watch` on the event loop: ``async for event in stream``."""
        timeout = httpx.Timeout(30.0, read=timeout_seconds + 60.0)
        async with self._http.stream(
            "GET",
            self._url(path, _watch_query(resource_version, timeout_seconds, label_selector, field_selector)),
            headers=self._headers(METADATA_ONLY if metadata_only else JSON, None),
            timeout=timeout,
            extensions=self._extensions,
        ) as response:
            if not response.is_success:
                await response.aread()
                raise _error(response.status_code, response.content, method="WATCH", path=path)
            yield _async_events(response)


async def _async_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    async for line in response.aiter_lines():
        event = _event(line)
        if event is not None:
            yield event


class _Discovery:
    """Kind -> (plural, namespaced) per group/version, asked of the server once each (and again
    for a kind it did not serve yet: a CRD installed since)."""

    def __init__(self) -> None:
        self._kinds: dict[str, dict[str, tuple[str, bool]]] = {}
        self._lock = threading.Lock()

    def get(self, api_version: str, kind: str) -> tuple[str, bool] | None:
        return self._kinds.get(api_version, {}).get(kind)

    def learn(self, api_version: str, listing: Mapping[str, Any], kind: str) -> tuple[str, bool]:
        kinds = {
            r["kind"]: (r["name"], bool(r["namespaced"]))
            for r in listing.get("resources", [])
            if "/" not in r["name"]  # subresources such as status and scale
        }
        with self._lock:
            self._kinds[api_version] = kinds
        if kind not in kinds:
            raise ApiError(404, "NotFound", f"the API server does not serve kind {kind} in {api_version}")
        return kinds[kind]


def established(crd: Mapping[str, Any] | None) -> bool:
    conditions = ((crd or {}).get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions)


def event_body(
    involved: Mapping[str, Any], type_: str, reason: str, message: str, component: str
) -> dict[str, Any]:
    meta = involved.get("metadata") or {}
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    message = message[:1024]
    # One name per (object, type, reason, message, source): what makes two Events "the same".
    key = "\0".join(str(part) for part in (meta.get("uid"), type_, reason, message, component))
    # Cut so that name + ".<16 hex>" stays a DNS subdomain (253 at most, no label ending in - or .).
    prefix = str(meta.get("name", "agentops"))[:200].rstrip(".-")
    name = f"{prefix}.{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": name, "namespace": meta["namespace"]},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": meta.get("name"),
            "namespace": meta.get("namespace"),
            "uid": meta.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message,
        "source": {"component": component},
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
    }
