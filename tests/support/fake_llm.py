"""A fake model server on loopback: the Anthropic Messages API and OpenAI chat completions.

Used by the runtime's tests and the CLI's ``task`` tests; the real SDKs talk to it.  Behaviour is
chosen by the prompt, so concurrent tasks in one test can each ask for something different:

- ``hold: <rest>``          the reply waits until the test calls :meth:`FakeLLM.release` (or the next
  :meth:`FakeLLM.reset`), then ``<rest>`` is handled like any prompt; after ``release()`` no call
  of the test is held any more;
- ``sleep:<seconds> ...``   reply after a delay;
- ``fail:<status>x<n> ...`` the first ``n`` calls with this exact prompt fail with ``status``
  (429 carries ``retry-after: 0.2``; 529 is Anthropic's ``overloaded_error``);
- ``always:<status> ...``   every call fails with ``status``;
- the probe prompt (:data:`PROBE_PROMPT`) gets :attr:`FakeLLM.probe_reply`, where ``!500`` means an
  error and ``!sleep`` a reply slower than any test timeout.

Anything else gets ``echo: <prompt>``.  Usage: input tokens = words of system + prompt, output
tokens = words of the reply.  The server measures what the tests assert on: every call, and the
highest number of calls in progress at once.

Tests wait for the server's state rather than for time: :meth:`FakeLLM.wait_held` returns once
``n`` calls are held, so a test that kills, stops or times out a worker "while calls are in flight"
knows they are, and they stay so until it releases them.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from tests.support.waiting import eventually, eventually_async

PROBE_PROMPT = "Reply with exactly one word: HEALTHY"
#: A held call that nobody releases replies after this long anyway, so no handler lives forever.
HOLD_LIMIT_SECONDS = 120.0
_HOLD = re.compile(r"^hold:\s*")
_SLEEP = re.compile(r"^sleep:([0-9.]+)\b")
_FAIL = re.compile(r"^fail:(\d{3})x(\d+)\b")
_ALWAYS = re.compile(r"^always:(\d{3})\b")
_ERROR_TYPES = {
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
    400: "invalid_request_error",
}


@dataclass
class Call:
    prompt: str
    system: str | None
    max_tokens: int
    api_key: str | None
    at: float


@dataclass
class FakeLLM:
    probe_reply: str = "HEALTHY"
    calls: list[Call] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    #: Calls of this test waiting in a ``hold:`` for :meth:`release`.
    held: int = 0
    generation: int = 0
    _failures: Counter[str] = field(default_factory=Counter)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    #: One gate per generation with held calls; set (from any thread) to let them reply.
    _gates: dict[int, asyncio.Event] = field(default_factory=dict)
    _released: bool = False
    _server_loop: asyncio.AbstractEventLoop | None = None
    url: str = ""

    def reset(self) -> None:
        with self._lock:
            self.probe_reply = "HEALTHY"
            self.calls.clear()
            self.generation += 1  # calls still running from an earlier test no longer count
            self.in_flight = 0
            self.max_in_flight = 0
            self.held = 0
            self._failures.clear()
            self._released = False
            gates = list(self._gates.values())  # an earlier test's held calls: let them go
            self._gates.clear()
        self._open(gates)

    def release(self) -> None:
        """Let every held call of this test reply; later ``hold:`` calls of this test do not wait."""
        with self._lock:
            self._released = True
            gates = list(self._gates.values())
        self._open(gates)

    def _open(self, gates: list[asyncio.Event]) -> None:
        if self._server_loop is None:
            return
        for gate in gates:
            with contextlib.suppress(RuntimeError):  # the server's loop is already closed
                self._server_loop.call_soon_threadsafe(gate.set)

    async def wait_held(self, count: int, within: float = 15.0) -> None:
        """Until at least ``count`` calls of this test are held at the server."""
        await eventually_async(
            f"{count} held calls at the fake LLM server", lambda: self.held >= count, within
        )

    async def _hold(self, generation: int) -> None:
        """Wait for :meth:`release` (or :meth:`reset`) of ``generation``, at most HOLD_LIMIT_SECONDS."""
        with self._lock:
            if generation != self.generation or self._released:
                return
            gate = self._gates.get(generation)
            if gate is None:
                self._server_loop = asyncio.get_running_loop()
                gate = self._gates[generation] = asyncio.Event()
            self.held += 1
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(gate.wait(), HOLD_LIMIT_SECONDS)
        finally:
            with self._lock:
                if generation == self.generation:
                    self.held -= 1

    def task_calls(self) -> list[Call]:
        """Calls other than probes."""
        return [c for c in self.calls if c.prompt != PROBE_PROMPT]

    async def _behave(self, prompt: str, generation: int) -> tuple[int, str, dict[str, str]]:
        """(status, reply text or error message, headers)."""
        if m := _HOLD.match(prompt):
            await self._hold(generation)
            prompt = prompt[m.end() :]
        if prompt == PROBE_PROMPT:
            if self.probe_reply == "!500":
                return 500, "internal error while probing", {}
            if self.probe_reply == "!sleep":
                await asyncio.sleep(30)
            return 200, self.probe_reply, {}
        if m := _SLEEP.match(prompt):
            await asyncio.sleep(float(m.group(1)))
        if m := _FAIL.match(prompt):
            status, times = int(m.group(1)), int(m.group(2))
            with self._lock:
                self._failures[prompt] += 1
                failing = self._failures[prompt] <= times
            if failing:
                return status, f"simulated {status}", ({"retry-after": "0.2"} if status == 429 else {})
        if m := _ALWAYS.match(prompt):
            status = int(m.group(1))
            return status, "Overloaded" if status == 529 else f"simulated {status}", {}
        return 200, f"echo: {prompt[:60]}", {}

    async def _enter(self, prompt: str, system: str | None, max_tokens: int, api_key: str | None) -> int:
        with self._lock:
            self.calls.append(Call(prompt, system, max_tokens, api_key, time.time()))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            return self.generation

    def _leave(self, generation: int) -> None:
        with self._lock:
            if generation == self.generation:
                self.in_flight -= 1

    async def messages(self, request: Request) -> JSONResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        system = body.get("system")
        # Older SDKs send x-api-key, newer ones a bearer token.
        key = request.headers.get("x-api-key") or request.headers.get("authorization", "").removeprefix(
            "Bearer "
        )
        generation = await self._enter(prompt, system, body["max_tokens"], key or None)
        try:
            status, text, headers = await self._behave(prompt, generation)
        finally:
            self._leave(generation)
        if status != 200:
            error = {"type": _ERROR_TYPES.get(status, "api_error"), "message": text}
            return JSONResponse({"type": "error", "error": error}, status_code=status, headers=headers)
        words = len(prompt.split()) + len((system or "").split())
        return JSONResponse(
            {
                "id": "msg_fake",
                "type": "message",
                "role": "assistant",
                "model": body["model"],
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn",
                "stop_sequence": None,
                "usage": {"input_tokens": words, "output_tokens": len(text.split())},
            }
        )

    async def chat_completions(self, request: Request) -> JSONResponse:
        body = await request.json()
        prompt = body["messages"][-1]["content"]
        system = next((m["content"] for m in body["messages"] if m["role"] == "system"), None)
        auth = request.headers.get("authorization", "")
        generation = await self._enter(
            prompt, system, body["max_tokens"], auth.removeprefix("Bearer ") or None
        )
        try:
            status, text, headers = await self._behave(prompt, generation)
        finally:
            self._leave(generation)
        if status != 200:
            return JSONResponse({"error": {"message": text}}, status_code=status, headers=headers)
        words = len(prompt.split()) + len((system or "").split())
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "model": body["model"],
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": words, "completion_tokens": len(text.split())},
            }
        )


class FakeLLMServer:
    """Runs :class:`FakeLLM` on uvicorn in a thread of its own, on a free loopback port."""

    def __init__(self) -> None:
        self.llm = FakeLLM()
        app = Starlette(
            routes=[
                Route("/v1/messages", self.llm.messages, methods=["POST"]),
                Route("/v1/chat/completions", self.llm.chat_completions, methods=["POST"]),
            ]
        )
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        port = self._sock.getsockname()[1]
        self.llm.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="off",
            ws="none",
            log_level="warning",
            timeout_graceful_shutdown=1,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )

    def start(self) -> FakeLLM:
        self._thread.start()
        eventually("the fake LLM server to start", lambda: self._server.started, within=10, interval=0.01)
        return self.llm

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(10)
        self._sock.close()


def usage_words(text: str) -> int:
    return len(text.split())


__all__ = ["HOLD_LIMIT_SECONDS", "PROBE_PROMPT", "Call", "FakeLLM", "FakeLLMServer", "usage_words"]
