"""controller.pods: which pod states are reported on the agent, and in what words."""

from __future__ import annotations

from typing import Any

import pytest

from controller.pods import MAX_DETAIL, diagnose


def pod(name: str, *, waiting: dict[str, str] | None = None, **status: Any) -> dict[str, Any]:
    containers = [
        {"name": "runtime", "image": "agentops:1", "state": {"waiting": waiting} if waiting else {}}
    ]
    return {"metadata": {"name": name}, "status": {"containerStatuses": containers, **status}}


def test_progress_is_not_a_problem() -> None:
    assert diagnose([]) is None
    assert diagnose([pod("a-1", waiting={"reason": "ContainerCreating"})]) is None
    assert diagnose([pod("a-1")]) is None


@pytest.mark.parametrize(
    "reason", ["ErrImagePull", "ImagePullBackOff", "ErrImageNeverPull", "InvalidImageName"]
)
def test_an_image_that_cannot_be_pulled_names_the_image_and_what_to_do(reason: str) -> None:
    stuck = diagnose([pod("a-1", waiting={"reason": reason, "message": 'pull "agentops:1" failed'})])
    assert stuck is not None
    assert stuck.reason == "ImagePullFailed"
    assert stuck.message.startswith(
        f'pod a-1: image "agentops:1" cannot be pulled ({reason}: pull "agentops:1"'
    )
    assert "--runtime-image" in stuck.message


def test_configuration_and_crash_loops_say_where_to_look() -> None:
    config = diagnose(
        [pod("a-1", waiting={"reason": "CreateContainerConfigError", "message": 'secret "x" not found'})]
    )
    assert config is not None
    assert config.reason == "PodConfigError"
    assert 'secret "x" not found' in config.message
    assert "secretRef" in config.message
    crash = diagnose([pod("a-2", waiting={"reason": "CrashLoopBackOff"})])
    assert crash is not None
    assert crash.reason == "PodCrashLooping"
    assert crash.message.startswith("pod a-2: its container cannot start (CrashLoopBackOff);")
    assert "kubectl logs" in crash.message


def test_an_unschedulable_pod_says_why() -> None:
    unscheduled = {
        "metadata": {"name": "a-1"},
        "status": {
            "conditions": [{"type": "PodScheduled", "reason": "Unschedulable", "message": "0/1 nodes"}]
        },
    }
    stuck = diagnose([unscheduled])
    assert stuck is not None
    assert stuck == ("Unschedulable", "pod a-1 cannot be scheduled: 0/1 nodes")


def test_terminating_pods_are_ignored_and_the_first_stuck_pod_wins() -> None:
    leaving = pod("a-0", waiting={"reason": "CrashLoopBackOff"})
    leaving["metadata"]["deletionTimestamp"] = "2026-12-03T00:00:00Z"
    stuck = diagnose([leaving, pod("a-1"), pod("a-2", waiting={"reason": "ErrImagePull"})])
    assert stuck is not None
    assert stuck.message.startswith("pod a-2:")


def test_long_kubelet_messages_are_cut() -> None:
    stuck = diagnose([pod("a-1", waiting={"reason": "ErrImagePull", "message": "x" * 5000})])
    assert stuck is not None
    assert "x" * MAX_DETAIL in stuck.message
    assert "x" * (MAX_DETAIL + 1) not in stuck.message
