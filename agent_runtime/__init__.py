"""The worker inside every agent pod: a crash-safe Redis Streams consumer.

Owns: task consumption within ``maxConcurrentTasks``, providers (Anthropic, OpenAI-compatible,
offline), deadlines and retries, atomic budgets, semantic probes, health endpoints and metrics.

May import: :mod:`policies` only (shared models, task protocol, runtime config, prices).
"""
