"""The webhook's in-memory view of the cluster, fed by list+watch: no API call per admission.

Four reflectors run as asyncio tasks on the server's event loop:

=========================  ==================================  ==================================
resource                   kept                                used for
=========================  ==================================  ==================================
ClusterAgentPolicy         the parsed model                    every decision
AgentPolicy                the parsed model                    every decision
AgentDeployment            namespace, name, labels (metadata   ``known_agents`` (pipeline steps)
                           only: prompts never reach us here)  and Scale requests' target labels
Namespace                  labels (metadata only)              ClusterAgentPolicy namespaceSelector
=========================  ==================================  ==================================

Each reflector lists, then watches from the list's ``resourceVersion`` (with bookmarks), resumes
from the last seen version when a watch times out, and relists on ``410 Gone``.  Because every
update happens on the event loop that also serves admissions, readers never see a half-applied
change.  After each change a new immutable :class:`Snapshot` is built (with a new
:class:`~policies.engine.PolicySet` when a policy changed), so a decision in flight keeps the
snapshot it started with.

``synced`` turns true once every reflector has completed its first list; ``/readyz`` reports it.
AgentDeployments and Namespaces are fetched as ``PartialObjectMetadata``: the API server strips
spec and status, which keeps system prompts out of this process's memory and the watch cheap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx
import pydantic

from contracts.resources import GROUP, VERSION, AgentPolicy, ClusterAgentPolicy
from policies.engine import PolicySet

log = logging.getLogger(__name__)

_METADATA_ONLY = "application/json;as=PartialObjectMetadata{list};g=meta.k8s.io;v=v1,application/json"


@dataclass(frozen=True)
class Snapshot:
    """What one admission decision reads; never mutated after it is built.

    ``policies`` carries no ``known_agents``: a PolicySet caches effective policies per instance,
    and agents come and go far more often than policies, so folding the agent list into it would
    throw those caches away on every agent create.  Only pipeline validation needs the agent
    list; :meth:`policies_for` adds it, once per snapshot.
    """

    policies: PolicySet
    namespace_labels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    agent_labels: Mapping[tuple[str, str], Mapping[str, str]] = field(default_factory=dict)
    _with_agents: list[PolicySet] = field(default_factory=list, init=False, repr=False, compare=False)

    def policies_for(self, kind: str) -> PolicySet:
        """The policy set to decide a request for ``kind`` with."""
        if kind != "AgentPipeline":
            return self.policies
        if not self._with_agents:
            # Benign race: two threads may both build it; either result is equivalent.
            self._with_agents.append(
                dataclasses.replace(self.policies, known_agents=frozenset(self.agent_labels))
            )
        return self._with_agents[0]


class PolicySource(Protocol):
    """What the app needs from a cache: a snapshot and whether it is complete."""

    @property
    def synced(self) -> bool: ...

    def snapshot(self) -> Snapshot: ...

    def sizes(self) -> Mapping[str, int]: ...


class StaticPolicySource:
    """A fixed snapshot: for tests of the HTTP layer and for benchmarks without a cluster."""

    def __init__(self, snapshot: Snapshot, *, synced: bool = True) -> None:
        self._snapshot = snapshot
        self._synced = synced

    @property
    def synced(self) -> bool:
        return self._synced

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def sizes(self) -> Mapping[str, int]:
        return {
            "ClusterAgentPolicy": len(self._snapshot.policies.cluster),
            "AgentPolicy": len(self._snapshot.policies.namespaced),
            "AgentDeployment": len(self._snapshot.agent_labels),
            "Namespace": len(self._snapshot.namespace_labels),
        }


# --- talking to the API server -------------------------------------------------------------------


class KubeHTTP:
    """An ``httpx.AsyncClient`` set up from a ``kubernetes.client.Configuration``.

    The generated kubernetes client is synchronous; watches need a streaming async client on the
    server's event loop, so we reuse only the client library's kubeconfig/in-cluster loading
    (server URL, CA, client certificate, bearer token with refresh).
    """

    def __init__(self, configuration: Any) -> None:
        self._cfg = configuration
        if configuration.verify_ssl:
            ctx = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
        else:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if configuration.cert_file:
            ctx.load_cert_chain(configuration.cert_file, configuration.key_file)
        self.client = httpx.AsyncClient(
            base_url=str(configuration.host),
            verify=ctx,
            timeout=httpx.Timeout(30.0, read=None),
        )

    def headers(self, accept: str = "application/json") -> dict[str, str]:
        headers = {"Accept": accept, "User-Agent": "agentops-webhook"}
        # Called per request so an in-cluster projected token is re-read after rotation.  The
        # client's own auth_settings() names the header: the key it stores the token under has
        # changed between client releases ("authorization", then "BearerToken").
        for setting in self._cfg.auth_settings().values():
            if setting.get("in") == "header" and setting.get("value"):
                headers[setting["key"].title()] = setting["value"]
        return headers

    async def aclose(self) -> None:
        await self.client.aclose()


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (410 Gone): relist."""


@dataclass
class Reflector:
    """List+watch one resource into ``store`` (key -> value), calling ``on_change`` after changes."""

    http: KubeHTTP
    path: str
    kind: str
    convert: Callable[[dict[str, Any]], Any]
    on_change: Callable[[], None]
    metadata_only: bool = False
    watch_timeout: int = 300
    store: dict[tuple[str, str], Any] = field(default_factory=dict)
    synced: asyncio.Event = field(default_factory=asyncio.Event)
    resource_version: str = ""

    @staticmethod
    def key(obj: Mapping[str, Any]) -> tuple[str, str]:
        meta = obj.get("metadata") or {}
        return (str(meta.get("namespace") or ""), str(meta.get("name") or ""))

    def _put(self, obj: dict[str, Any]) -> None:
        try:
            value = self.convert(obj)
        except pydantic.ValidationError as exc:
            # The CRD schema is generated from the same model, so this means version skew; the
            # object is left out (and said so) rather than crashing the cache.
            log.error(
                "ignoring object the shared model rejects",
                extra={"kind": self.kind, "object": "/".join(self.key(obj)), "errors": exc.error_count()},
            )
            self.store.pop(self.key(obj), None)
            return
        self.store[self.key(obj)] = value

    async def list(self) -> None:
        accept = _METADATA_ONLY.format(list="List") if self.metadata_only else "application/json"
        response = await self.http.client.get(self.path, headers=self.http.headers(accept))
        response.raise_for_status()
        body = response.json()
        self.store.clear()
        for item in body.get("items") or []:
            self._put(item)
        self.resource_version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        self.on_change()
        self.synced.set()

    async def watch(self) -> None:
        accept = _METADATA_ONLY.format(list="") if self.metadata_only else "application/json"
        params = {
            "watch": "1",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(self.watch_timeout),
        }
        # A read timeout beyond the server-side watch timeout: a silently dead connection is noticed.
        timeout = httpx.Timeout(30.0, read=self.watch_timeout + 60.0)
        async with self.http.client.stream(
            "GET", self.path, params=params, headers=self.http.headers(accept), timeout=timeout
        ) as response:
            if response.status_code == 410:
                raise WatchExpired
            response.raise_for_status()
            async for line in response.aiter_lines():
                if line.strip():
                    self._event(json.loads(line))

    def _event(self, event: Mapping[str, Any]) -> None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise WatchExpired
            raise RuntimeError(f"watch of {self.kind} failed: {obj.get('message')}")
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if kind == "BOOKMARK":
            return
        if kind == "DELETED":
            self.store.pop(self.key(obj), None)
        elif kind in ("ADDED", "MODIFIED"):
            self._put(obj)
        self.on_change()

    async def run(self) -> None:
        backoff = 0.2
        need_list = True
        while True:
            try:
                if need_list:
                    await self.list()
                    need_list = False
                await self.watch()
                backoff = 0.2
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
                backoff = min(backoff * 2, 10.0)
                # A watch error of unknown cause may have skipped events: relist to be sure.
                need_list = True


def _labels(obj: Mapping[str, Any]) -> dict[str, str]:
    return dict((obj.get("metadata") or {}).get("labels") or {})


class ClusterPolicyCache:
    """The real :class:`PolicySource`: four reflectors over one API connection."""

    def __init__(
        self, configuration: Any, *, on_change: Callable[[Mapping[str, int]], None] | None = None
    ) -> None:
        self._http = KubeHTTP(configuration)
        self._on_change = on_change
        base = f"/apis/{GROUP}/{VERSION}"
        self._cluster = Reflector(
            self._http, f"{base}/clusteragentpolicies", "ClusterAgentPolicy",
            ClusterAgentPolicy.from_k8s, self._rebuild_policies,
        )  # fmt: skip
        self._namespaced = Reflector(
            self._http, f"{base}/agentpolicies", "AgentPolicy", AgentPolicy.from_k8s, self._rebuild_policies
        )
        self._agents = Reflector(
            self._http, f"{base}/agentdeployments", "AgentDeployment", _labels, self._rebuild_agents,
            metadata_only=True,
        )  # fmt: skip
        self._namespaces = Reflector(
            self._http,
            "/api/v1/namespaces",
            "Namespace",
            _labels,
            self._rebuild_namespaces,
            metadata_only=True,
        )
        self._reflectors = (self._cluster, self._namespaced, self._agents, self._namespaces)
        self._snapshot = Snapshot(PolicySet())
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def synced(self) -> bool:
        return all(r.synced.is_set() for r in self._reflectors)

    def snapshot(self) -> Snapshot:
        return self._snapshot

    def sizes(self) -> Mapping[str, int]:
        return {r.kind: len(r.store) for r in self._reflectors}

    def _rebuild_policies(self) -> None:
        policies = PolicySet(
            cluster=tuple(self._cluster.store.values()), namespaced=tuple(self._namespaced.store.values())
        )
        self._snapshot = Snapshot(policies, self._snapshot.namespace_labels, self._snapshot.agent_labels)
        self._changed()

    def _rebuild_agents(self) -> None:
        # The PolicySet object is kept (see Snapshot): its effective-policy caches stay warm.
        self._snapshot = Snapshot(
            self._snapshot.policies, self._snapshot.namespace_labels, dict(self._agents.store)
        )
        self._changed()

    def _rebuild_namespaces(self) -> None:
        labels = {name: labels for (_, name), labels in self._namespaces.store.items()}
        self._snapshot = Snapshot(self._snapshot.policies, labels, self._snapshot.agent_labels)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change(self.sizes())

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(r.run(), name=f"watch-{r.kind}") for r in self._reflectors]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self._http.aclose()
