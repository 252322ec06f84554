"""The worker inside every agent pod: a crash-safe Redis Streams consumer.

Owns: task consumption within ``maxConcurrentTasks``, providers (Anthropic, OpenAI-compatible,
offline), deadlines and retries, atomic budgets, semantic probes, health endpoints and metrics.

May import: :mod:`contracts` only (the task and result messages, Redis keys, budgets, the runtime
environment, prices, the log line).  Never the policy engine, the webhook or the controller.
"""
