"""Pure tests of the queue-depth arithmetic and the scale-down cool-down."""

from __future__ import annotations

from contracts.resources import Autoscaling
from controller.autoscale import QueueDepth, ScaleMemory, desired_replicas, next_replicas

SPEC = Autoscaling(min_replicas=1, max_replicas=8, target_pending_per_replica=5, cooldown_seconds=30)


def test_desired_is_ceil_of_depth_over_target_clamped_to_range_and_ceiling() -> None:
    assert desired_replicas(QueueDepth(0, 0), SPEC, None) == 1
    assert desired_replicas(QueueDepth(11, 0), SPEC, None) == 3
    assert desired_replicas(QueueDepth(9, 2), SPEC, None) == 3
    assert desired_replicas(QueueDepth(1000, 0), SPEC, None) == 8
    assert desired_replicas(QueueDepth(1000, 0), SPEC, 4) == 4
    assert desired_replicas(QueueDepth(0, 0), SPEC, 0) == 0


def test_scale_up_is_immediate_scale_down_waits_for_the_cooldown() -> None:
    memory = ScaleMemory()
    assert next_replicas(2, 5, SPEC, memory, now=100.0) == 5
    assert next_replicas(5, 1, SPEC, memory, now=101.0) is None
    assert next_replicas(5, 1, SPEC, memory, now=120.0) is None
    assert next_replicas(5, 1, SPEC, memory, now=131.0) == 1


def test_a_refill_during_the_cooldown_restarts_it() -> None:
    memory = ScaleMemory()
    assert next_replicas(5, 1, SPEC, memory, now=0.0) is None
    assert next_replicas(5, 5, SPEC, memory, now=20.0) is None
    assert next_replicas(5, 1, SPEC, memory, now=40.0) is None
    assert next_replicas(5, 1, SPEC, memory, now=69.0) is None
    assert next_replicas(5, 1, SPEC, memory, now=71.0) == 1
