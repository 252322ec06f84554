"""Every Redis key and stream name the components share, in one place.

The runtime writes, the controller and the CLI read: a name computed two ways would be a
silent protocol break, so every ``agentops:...`` name is built here and nowhere else.
All names start with ``agentops:<namespace>:`` (budgets: ``agentops:budget:<namespace>:``), so
a namespace's keys can be found, and deleted, with one pattern.
"""

from __future__ import annotations

from contracts.budgets import budget_period_id

STREAM_PREFIX = "agentops"
DEAD_LETTER_SUFFIX = "dead"


def task_stream(namespace: str, agent: str) -> str:
    """The stream an agent's workers consume."""
    return f"{STREAM_PREFIX}:{namespace}:{agent}:tasks"


def dead_letter_stream(namespace: str, agent: str) -> str:
    """Where tasks that exhausted their deliveries are copied for inspection."""
    return f"{STREAM_PREFIX}:{namespace}:{agent}:{DEAD_LETTER_SUFFIX}"


def client_results_stream(namespace: str, client: str) -> str:
    """A reply stream for ad-hoc callers such as ``agentops task submit``."""
    return f"{STREAM_PREFIX}:{namespace}:client:{client}:results"


def done_key(namespace: str, agent: str, task_id: str) -> str:
    """Short-lived marker a worker sets, in the same MULTI as the result, once ``task_id`` is finished.

    Its value is the finished result as JSON, so a duplicate submission of the same ``task_id`` is
    answered without a second provider call.
    """
    return f"{STREAM_PREFIX}:{namespace}:{agent}:done:{task_id}"


def budget_key(scope: str, namespace: str, agent: str, period: str, now: float) -> str:
    """The Redis hash holding one budget's spend for the period containing ``now``.

    Scope ``Agent``: ``agentops:budget:<namespace>:<agent>:<period-id>``; scope ``Namespace``:
    ``agentops:budget:<namespace>:<period-id>`` (shared by every agent of the namespace).
    Hash fields, all decimal strings, absent meaning 0:

    - ``tokens``, ``cost_usd``: settled spend (real usage reported by the provider);
    - ``reserved_tokens``, ``reserved_cost_usd``: held by calls in flight (their maximum possible
      usage), released when they settle.

    Spend visible to a status reader is ``tokens`` (+ ``reserved_tokens`` for a conservative view).
    The key expires shortly after its period ends.
    """
    period_id = budget_period_id(period, now)
    if scope == "Agent":
        return f"{STREAM_PREFIX}:budget:{namespace}:{agent}:{period_id}"
    if scope == "Namespace":
        return f"{STREAM_PREFIX}:budget:{namespace}:{period_id}"
    raise ValueError(f"unknown budget scope {scope!r}: expected 'Agent' or 'Namespace'")


def pipeline_results_stream(namespace: str, pipeline: str) -> str:
    """The reply stream of one pipeline: the controller consumes it with a consumer group."""
    return f"{STREAM_PREFIX}:{namespace}:pipeline:{pipeline}:results"


def pipeline_step_output_key(namespace: str, pipeline: str, step: str) -> str:
    """The whole output of one pipeline step (status keeps only a truncated copy)."""
    return f"{STREAM_PREFIX}:{namespace}:pipeline:{pipeline}:step:{step}:output"


def pipeline_output_key(namespace: str, pipeline: str) -> str:
    """The whole rendered ``spec.output`` of a finished pipeline."""
    return f"{STREAM_PREFIX}:{namespace}:pipeline:{pipeline}:output"


def pipeline_submitted_key(namespace: str, pipeline: str) -> str:
    """The set of task ids the controller has submitted for one pipeline (submit-once guard)."""
    return f"{STREAM_PREFIX}:{namespace}:pipeline:{pipeline}:submitted"


def pipeline_entries_key(namespace: str, pipeline: str) -> str:
    """Task id -> ``<stream>|<entry id>`` of each submitted step, so an unstarted one can be withdrawn."""
    return f"{STREAM_PREFIX}:{namespace}:pipeline:{pipeline}:entries"
