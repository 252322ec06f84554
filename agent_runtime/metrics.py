"""Prometheus metrics of one worker, in a registry of its own (several workers can share a process)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

if TYPE_CHECKING:
    from agent_runtime.budget import Budget

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class RuntimeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.tasks = Counter("agentops_tasks", "Tasks finished, by result status.", ["status"], registry=r)
        self.tokens = Counter(
            "agentops_tokens",
            "Tokens reported by the provider (tasks and probes).",
            ["direction"],
            registry=r,
        )
        self.cost = Counter("agentops_cost_usd", "USD spent according to the price table.", registry=r)
        self.latency = Histogram(
            "agentops_task_duration_seconds",
            "Time from reading a task to writing its result.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("agentops_tasks_in_flight", "Tasks being worked on now.", registry=r)
        self.provider_retries = Counter(
            "agentops_provider_retries", "Provider calls retried after 429/5xx/overloaded.", registry=r
        )
        self.budget_remaining_tokens = Gauge(
            "agentops_budget_remaining_tokens",
            "Token headroom of the budget (NaN: no token budget).",
            registry=r,
        )
        self.budget_remaining_cost = Gauge(
            "agentops_budget_remaining_cost_usd",
            "USD headroom of the budget (NaN: no USD budget).",
            registry=r,
        )
        self.probe_healthy = Gauge("agentops_probe_healthy", "1 if the last probe passed.", registry=r)
        self.probe_last_run = Gauge(
            "agentops_probe_last_run_timestamp_seconds", "Unix time of the last probe.", registry=r
        )
        self.redis_up = Gauge("agentops_redis_up", "1 if the last Redis command succeeded.", registry=r)
        self.budget_remaining_tokens.set(float("nan"))
        self.budget_remaining_cost.set(float("nan"))

    def show_budget(self, budget: Budget) -> None:
        """Copy the budget's last known remainders to the gauges (a disabled budget has none)."""
        if budget.remaining_tokens is not None:
            self.budget_remaining_tokens.set(budget.remaining_tokens)
        if budget.remaining_cost_usd is not None:
            self.budget_remaining_cost.set(budget.remaining_cost_usd)
