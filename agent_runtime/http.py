"""The worker's HTTP face: ``/healthz`` (process and Redis), ``/readyz`` (last probe), ``/metrics``.

Starlette on uvicorn, served from the worker's own event loop.  uvicorn normally takes over SIGINT
and SIGTERM; here the worker owns them (it must drain in-flight tasks first), so signal capture is
switched off.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable, Generator
from typing import Any

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

log = logging.getLogger(__name__)

StatusProbe = Callable[[], Awaitable[tuple[bool, dict[str, Any]]]]


def build_app(*, health: StatusProbe, readiness: StatusProbe, registry: CollectorRegistry) -> Starlette:
    async def healthz(_: Request) -> Response:
        ok, body = await health()
        return JSONResponse(body, status_code=200 if ok else 503)

    async def readyz(_: Request) -> Response:
        ok, body = await readiness()
        return JSONResponse(body, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz, methods=["GET"]),
            Route("/readyz", readyz, methods=["GET"]),
            Route("/metrics", metrics, methods=["GET"]),
        ]
    )


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The worker handles SIGTERM itself (drain first); uvicorn must not swallow it.
        yield


class HttpServer:
    """uvicorn serving ``app`` on ``host:port`` (port 0: any free port, see :attr:`port`)."""

    def __init__(self, app: Starlette, *, host: str, port: int) -> None:
        config = uvicorn.Config(
            app, host=host, port=port, log_config=None, access_log=False, lifespan="off", log_level="warning"
        )
        self._server = _Server(config)
        self._host = host
        self.port = port

    async def serve(self) -> None:
        try:
            await self._server.serve()
        except SystemExit:
            # uvicorn exits the process when it cannot bind; inside a task that would tear the
            # event loop down.  It already logged why.
            raise OSError(f"cannot listen on {self._host}:{self.port}") from None

    @property
    def started(self) -> bool:
        return self._server.started

    def bound_port(self) -> int:
        for server in getattr(self._server, "servers", []):
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return self.port

    def stop(self) -> None:
        self._server.should_exit = True
