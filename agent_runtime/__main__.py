"""``python -m agent_runtime``: run one worker with the pod's environment until SIGTERM.

Exit status: 0 after a clean stop, 2 when the environment is incomplete (the message names the
variable), 1 on an unexpected error.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from agent_runtime.settings import Settings
from agent_runtime.worker import Worker
from contracts import logline
from contracts.runtime_env import ConfigError

log = logging.getLogger("agent_runtime")


async def _run(settings: Settings) -> None:
    worker = Worker(settings)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.stop)
    await worker.run()


#: httpx logs every request line at INFO; uvicorn's access log would duplicate /metrics scrapes.
QUIET = ("httpx", "httpx2", "httpcore", "anthropic", "uvicorn.access")


def main() -> int:
    logline.configure(quiet=QUIET)
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        # A log line like every other, so the pod's log stays one format.
        log.error("environment incomplete; exiting: %s", exc)
        return 2
    try:
        asyncio.run(_run(settings))
    except Exception:
        log.exception("worker crashed")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
