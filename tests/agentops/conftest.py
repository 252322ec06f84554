"""``agentops task`` runs against a real worker: the fixtures of :mod:`tests.support.runtime`."""

from tests.support.runtime import fake_llm_server, llm, ns, rdb

__all__ = ["fake_llm_server", "llm", "ns", "rdb"]
