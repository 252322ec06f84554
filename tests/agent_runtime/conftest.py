"""The runtime suite's fixtures: the fake LLM server and Redis client of :mod:`tests.support.runtime`."""

from tests.support.runtime import fake_llm_server, llm, ns, rdb

__all__ = ["fake_llm_server", "llm", "ns", "rdb"]
