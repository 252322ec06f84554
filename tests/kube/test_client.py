"""The blocking client against the real API server: apply, reads, errors, subresources, Events,
CRDs, and a watch that can be interrupted from another thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import kube
from tests.kube.objects import MANAGER, agent, agent_path
from tests.support.waiting import eventually


def test_apply_creates_then_updates_and_get_reads_back(k8s_api: kube.Client, namespace: str) -> None:
    created = k8s_api.apply(agent("a1", namespace), field_manager=MANAGER)
    assert created["metadata"]["uid"]
    changed = agent("a1", namespace, replicas=3)
    k8s_api.apply(changed, field_manager=MANAGER)
    stored = k8s_api.get(agent_path(namespace, "a1"))
    assert stored is not None
    assert stored["spec"]["replicas"] == 3
    assert stored["metadata"]["uid"] == created["metadata"]["uid"]
    managers = {entry["manager"] for entry in stored["metadata"]["managedFields"]}
    assert MANAGER in managers
    # Core kinds resolve through discovery too; a namespaced object without one gets the given namespace.
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"k": "v"}}
    k8s_api.apply(config_map, field_manager=MANAGER, namespace=namespace)
    assert (k8s_api.get(kube.path("v1", "configmaps", "c", namespace=namespace)) or {})["data"] == {"k": "v"}


def test_missing_objects_conflicts_and_refusals_are_typed(k8s_api: kube.Client, namespace: str) -> None:
    assert k8s_api.get(agent_path(namespace, "nobody")) is None
    assert k8s_api.delete(agent_path(namespace, "nobody")) is False
    assert k8s_api.create(agent_path(namespace), agent("a1", namespace)) is not None
    assert k8s_api.create(agent_path(namespace), agent("a1", namespace), exist_ok=True) is None
    with pytest.raises(kube.ApiError) as conflict:
        k8s_api.create(agent_path(namespace), agent("a1", namespace))
    assert conflict.value.status == 409
    assert conflict.value.reason == "AlreadyExists"
    assert '"a1" already exists' in conflict.value.message

    invalid = agent("a2", namespace)
    invalid["spec"]["replicas"] = "many"
    with pytest.raises(kube.ApiError) as refused:
        k8s_api.create(agent_path(namespace), invalid)
    assert refused.value.status == 422
    assert "spec.replicas" in refused.value.message
    assert refused.value.explanation.startswith("422 ")

    # A replace carrying an old resourceVersion loses to the write that moved it.
    stored = k8s_api.get(agent_path(namespace, "a1"))
    assert stored is not None
    k8s_api.merge_patch(agent_path(namespace, "a1"), {"metadata": {"labels": {"moved": "yes"}}})
    with pytest.raises(kube.ApiError) as stale:
        k8s_api.replace(agent_path(namespace, "a1"), stored)
    assert stale.value.status == 409


def test_status_and_scale_subresources(k8s_api: kube.Client, namespace: str) -> None:
    k8s_api.apply(agent("a1", namespace), field_manager=MANAGER)
    path = agent_path(namespace, "a1")
    k8s_api.patch_status(path, {"replicas": 1, "readyReplicas": 0, "selector": "app=a1"})
    k8s_api.scale(path, 4)
    stored = k8s_api.get(path)
    assert stored is not None
    assert stored["status"]["readyReplicas"] == 0
    assert stored["status"]["selector"] == "app=a1"
    assert stored["spec"]["replicas"] == 4
    scale = k8s_api.get(f"{path}/scale")
    assert scale is not None
    assert scale["kind"] == "Scale"
    assert scale["spec"]["replicas"] == 4


def test_metadata_only_reads_carry_no_spec(k8s_api: kube.Client, namespace: str) -> None:
    k8s_api.apply(agent("a1", namespace), field_manager=MANAGER)
    one = k8s_api.get(agent_path(namespace, "a1"), metadata_only=True)
    assert one is not None
    assert one["kind"] == "PartialObjectMetadata"
    assert one["metadata"]["labels"] == {"team": "blue"}
    assert "spec" not in one
    items = k8s_api.list_items(agent_path(namespace), metadata_only=True, label_selector="team=blue")
    assert [i["metadata"]["name"] for i in items] == ["a1"]
    assert "PROMPT" not in repr(items)
    assert k8s_api.list_items(agent_path(namespace), label_selector="team=red") == []


def test_post_event_lands_on_the_object(k8s_api: kube.Client, namespace: str) -> None:
    created = k8s_api.apply(agent("a1", namespace), field_manager=MANAGER)
    k8s_api.post_event(created, "Warning", "TestReason", "x" * 2000, component=MANAGER)
    events = k8s_api.list_items(
        kube.path("v1", "events", namespace=namespace), field_selector="involvedObject.name=a1"
    )
    assert [(e["reason"], e["type"], len(e["message"])) for e in events] == [("TestReason", "Warning", 1024)]
    assert events[0]["involvedObject"]["uid"] == created["metadata"]["uid"]
    # The same Event again aggregates into one, counted; a different message is a new Event.
    k8s_api.post_event(created, "Warning", "TestReason", "x" * 2000, component=MANAGER)
    k8s_api.post_event(created, "Warning", "TestReason", "x" * 2000, component=MANAGER)
    k8s_api.post_event(created, "Warning", "TestReason", "y", component=MANAGER)
    events = k8s_api.list_items(
        kube.path("v1", "events", namespace=namespace), field_selector="involvedObject.name=a1"
    )
    assert sorted((e["message"][0], e["count"]) for e in events) == [("x", 3), ("y", 1)]
    # Posting about something in a namespace that does not exist fails, and is swallowed.
    k8s_api.post_event({"metadata": {"name": "x", "namespace": "no-such-namespace"}}, "Normal", "R", "m",
                       component=MANAGER)  # fmt: skip


@pytest.fixture
def widget_crd(k8s_api: kube.Client) -> Iterator[str]:
    group = f"t{uuid.uuid4().hex[:8]}.agentops.io"
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"widgets.{group}"},
        "spec": {
            "group": group,
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object", "x-kubernetes-preserve-unknown-fields": True}}}],
        },
    }  # fmt: skip
    names = k8s_api.install_crds([crd], field_manager=MANAGER)
    try:
        yield group
    finally:
        for name in names:
            k8s_api.delete(f"{kube.client.CRD_PATH}/{name}")


def test_installed_crds_are_served_at_once(k8s_api: kube.Client, namespace: str, widget_crd: str) -> None:
    widget = {"apiVersion": f"{widget_crd}/v1", "kind": "Widget", "metadata": {"name": "w"}, "size": 3}
    applied = k8s_api.apply(widget, field_manager=MANAGER, namespace=namespace)
    assert applied["size"] == 3
    assert applied["metadata"]["namespace"] == namespace
    with pytest.raises(kube.ApiError, match="does not serve kind Gadget"):
        k8s_api.apply({**widget, "kind": "Gadget"}, field_manager=MANAGER, namespace=namespace)
    with pytest.raises(TimeoutError, match=r"widgets\.nowhere\.agentops\.io"):
        k8s_api.wait_for_crds(["widgets.nowhere.agentops.io"], timeout=0.3)


def test_watch_sees_added_modified_deleted_and_stops_when_interrupted(
    k8s_api: kube.Client, namespace: str
) -> None:
    listed = k8s_api.request("GET", agent_path(namespace))
    seen: list[tuple[str, str]] = []
    streams: list[kube.client.WatchStream] = []
    done = threading.Event()

    def follow() -> None:
        with k8s_api.watch(
            agent_path(namespace), resource_version=listed["metadata"]["resourceVersion"], timeout_seconds=120
        ) as stream:
            streams.append(stream)
            for event in stream:
                if event["type"] != "BOOKMARK":
                    seen.append((event["type"], event["object"]["metadata"]["name"]))
        done.set()

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    eventually("the watch is open", lambda: streams, within=10)
    k8s_api.apply(agent("a1", namespace), field_manager=MANAGER)
    k8s_api.scale(agent_path(namespace, "a1"), 2)
    k8s_api.delete(agent_path(namespace, "a1"))
    expected = [("ADDED", "a1"), ("MODIFIED", "a1"), ("DELETED", "a1")]
    eventually("every change is seen", lambda: seen == expected, within=10)

    started = time.monotonic()
    streams[0].interrupt()
    assert done.wait(5), "an interrupted watch must end long before its server-side timeout"
    assert time.monotonic() - started < 5


def test_watching_from_a_version_too_old_raises_watch_expired(k8s_api: kube.Client, namespace: str) -> None:
    # The API server's watch cache for a CRD starts when the CRD is established, long after
    # version 1: resuming from there is "too old" (410 Gone), which callers answer with a relist.
    def first_event() -> dict[str, Any] | None:
        with k8s_api.watch(agent_path(namespace), resource_version="1", timeout_seconds=5) as stream:
            return next(iter(stream), None)

    with pytest.raises(kube.WatchExpired) as expired:
        first_event()
    assert expired.value.status == 410
