"""``agentops task`` runs against a real worker: it needs the runtime tests' fake model and Redis."""

from tests.agent_runtime.conftest import fake_llm_server, llm, ns, rdb

__all__ = ["fake_llm_server", "llm", "ns", "rdb"]
