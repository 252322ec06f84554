"""The reflector against the real API server: first list, every change, a 410 relist, metadata only."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest

import kube
from kube.watch import Reflector
from tests.kube.objects import MANAGER, agent, agent_path
from tests.support.waiting import eventually_async


@pytest.fixture
async def async_api(control_plane: Any) -> AsyncIterator[kube.AsyncClient]:
    api = kube.AsyncClient(kube.config.from_kubeconfig(control_plane.kubeconfig))
    try:
        yield api
    finally:
        await api.aclose()


@contextlib.asynccontextmanager
async def running(reflector: Reflector, resume_from: str = "") -> AsyncIterator[Reflector]:
    task = asyncio.create_task(reflector.run(resume_from=resume_from))
    try:
        yield reflector
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _spec_or_labels(obj: dict[str, Any]) -> Any:
    return {"spec": obj.get("spec"), "labels": obj["metadata"].get("labels") or {}}


async def test_the_store_follows_adds_changes_and_deletes(
    async_api: kube.AsyncClient, k8s_api: kube.Client, namespace: str
) -> None:
    k8s_api.apply(agent("before", namespace), field_manager=MANAGER)
    changes: list[int] = []
    reflector = Reflector(
        async_api, agent_path(namespace), "AgentDeployment", _spec_or_labels, lambda: changes.append(1)
    )
    async with running(reflector):
        await eventually_async("the first list", reflector.synced.is_set)
        assert set(reflector.store) == {(namespace, "before")}
        assert reflector.store[(namespace, "before")]["spec"]["systemPrompt"] == "PROMPT"

        await asyncio.to_thread(k8s_api.apply, agent("a1", namespace), field_manager=MANAGER)
        await eventually_async("ADDED", lambda: (namespace, "a1") in reflector.store)
        await asyncio.to_thread(k8s_api.scale, agent_path(namespace, "a1"), 5)
        await eventually_async(
            "MODIFIED", lambda: reflector.store[(namespace, "a1")]["spec"]["replicas"] == 5
        )
        await asyncio.to_thread(k8s_api.delete, agent_path(namespace, "a1"))
        await eventually_async("DELETED", lambda: (namespace, "a1") not in reflector.store)
    assert reflector.lists == 1
    assert len(changes) >= 4  # the list, then one per event


async def test_a_version_too_old_to_resume_from_is_answered_by_a_relist(
    async_api: kube.AsyncClient, k8s_api: kube.Client, namespace: str
) -> None:
    k8s_api.apply(agent("a1", namespace), field_manager=MANAGER)
    reflector = Reflector(async_api, agent_path(namespace), "AgentDeployment", _spec_or_labels, lambda: None)
    # Version 1 predates the API server's watch cache for this CRD: the watch gets 410 Gone.
    async with running(reflector, resume_from="1"):
        await eventually_async("the relist", reflector.synced.is_set)
        assert reflector.lists == 1
        assert set(reflector.store) == {(namespace, "a1")}
        assert reflector.resource_version not in ("", "1")
        # And it watches on from the relisted version.
        await asyncio.to_thread(k8s_api.apply, agent("a2", namespace), field_manager=MANAGER)
        await eventually_async("watching after the relist", lambda: (namespace, "a2") in reflector.store)
    assert reflector.lists == 1


async def test_metadata_only_objects_have_no_spec(
    async_api: kube.AsyncClient, k8s_api: kube.Client, namespace: str
) -> None:
    seen: list[dict[str, Any]] = []

    def keep(obj: dict[str, Any]) -> dict[str, Any]:
        seen.append(obj)
        return obj

    k8s_api.apply(agent("listed", namespace), field_manager=MANAGER)
    reflector = Reflector(
        async_api, agent_path(namespace), "AgentDeployment", keep, lambda: None, metadata_only=True
    )
    async with running(reflector):
        await eventually_async("the first list", reflector.synced.is_set)
        await asyncio.to_thread(k8s_api.apply, agent("watched", namespace), field_manager=MANAGER)
        await eventually_async("the watch", lambda: (namespace, "watched") in reflector.store)
    assert {o["metadata"]["name"] for o in seen} == {"listed", "watched"}
    assert all("spec" not in o and "status" not in o for o in seen)
    assert "PROMPT" not in repr(seen)
    assert reflector.store[(namespace, "watched")]["metadata"]["labels"] == {"team": "blue"}


async def test_an_object_convert_rejects_is_left_out(
    async_api: kube.AsyncClient, k8s_api: kube.Client, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    def only_blue(obj: dict[str, Any]) -> str:
        if obj["metadata"]["name"].startswith("bad"):
            raise ValueError("not for this store")
        return str(obj["metadata"]["name"])

    k8s_api.apply(agent("good", namespace), field_manager=MANAGER)
    k8s_api.apply(agent("bad", namespace), field_manager=MANAGER)
    reflector = Reflector(async_api, agent_path(namespace), "AgentDeployment", only_blue, lambda: None)
    async with running(reflector):
        await eventually_async("the first list", reflector.synced.is_set)
    assert reflector.store == {(namespace, "good"): "good"}
    assert any(r.getMessage() == "ignoring object the model rejects" for r in caplog.records)
