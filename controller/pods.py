"""Why an agent's pods are not running, in words its owner can act on.

A Deployment's status counts replicas but never says why they are not ready: a missing image, a
missing Secret key or a crash loop show up only on the pods.  When an agent has no ready replica,
the controller reads its pods (``list``, nothing else) and puts the first such reason into the
agent's ``Ready`` condition, so ``kubectl get agdep``/``describe`` answer the question without a
trip through ``kubectl get pods`` and ``describe pod``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

#: Waiting reasons of a container that will not start by itself, each with the condition reason
#: it becomes and what to do.  Reasons not listed here (ContainerCreating, PodInitializing) are
#: ordinary progress.
STUCK: dict[str, tuple[str, str]] = {
    "ErrImagePull": ("ImagePullFailed", "IMAGE"),
    "ImagePullBackOff": ("ImagePullFailed", "IMAGE"),
    "ErrImageNeverPull": ("ImagePullFailed", "IMAGE"),
    "InvalidImageName": ("ImagePullFailed", "IMAGE"),
    "CreateContainerConfigError": ("PodConfigError", "CONFIG"),
    "CreateContainerError": ("PodConfigError", "CONFIG"),
    "RunContainerError": ("PodStartFailed", "CRASH"),
    "CrashLoopBackOff": ("PodCrashLooping", "CRASH"),
}

_ADVICE = {
    "IMAGE": (
        "build or load the image into the nodes' container runtime (or push it to a registry they can "
        "reach), or correct the image the controller gives agents (its --runtime-image flag; in "
        "the Helm chart, image.repository and image.tag)"
    ),
    "CONFIG": "check the Secret and ConfigMap the agent's pods read (spec.credentials.secretRef)",
    "CRASH": "see `kubectl logs` of the pod; the agent's configuration or its provider is at fault",
}

#: The kubelet's messages can be long (a registry's whole error): the condition keeps this much.
MAX_DETAIL = 300


class Stuck(NamedTuple):
    """The condition an agent gets: ``reason`` (CamelCase) and ``message``."""

    reason: str
    message: str


def _waiting(pod: Mapping[str, Any]) -> Iterable[tuple[Mapping[str, Any], Mapping[str, Any]]]:
    status = pod.get("status") or {}
    for key in ("initContainerStatuses", "containerStatuses"):
        for container in status.get(key) or ():
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason"):
                yield container, waiting


def _unschedulable(pod: Mapping[str, Any]) -> str | None:
    for condition in (pod.get("status") or {}).get("conditions") or ():
        if condition.get("type") == "PodScheduled" and condition.get("reason") == "Unschedulable":
            return str(condition.get("message") or "no node fits the pod")
    return None


def diagnose(pods: Iterable[Mapping[str, Any]]) -> Stuck | None:
    """The first reason one of ``pods`` cannot become ready without a change, or None."""
    for pod in pods:
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            continue
        name = (pod.get("metadata") or {}).get("name", "?")
        for container, waiting in _waiting(pod):
            known = STUCK.get(str(waiting["reason"]))
            if known is None:
                continue
            reason, advice = known
            detail = str(waiting.get("message") or "").strip()[:MAX_DETAIL]
            image = container.get("image", "")
            what = f'image "{image}" cannot be pulled' if advice == "IMAGE" else "its container cannot start"
            message = f"pod {name}: {what} ({waiting['reason']}"
            message += f": {detail})" if detail else ")"
            return Stuck(reason, f"{message}; {_ADVICE[advice]}")
        unschedulable = _unschedulable(pod)
        if unschedulable is not None:
            return Stuck("Unschedulable", f"pod {name} cannot be scheduled: {unschedulable[:MAX_DETAIL]}")
    return None
