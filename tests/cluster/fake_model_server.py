"""A stand-in OpenAI-compatible model endpoint (``POST /v1/chat/completions``) for the fault tests.

It runs inside a pod of the product image (``python /app/server.py``, standard library only) so
that agents in real pods can be given a model that is slow or wrong on demand, which the offline
provider (instant and always right) cannot be:

- a prompt asking to "reply with exactly one word: X" (a semantic probe) gets ``X``, unless the
  caller's pod IP is a line of ``/state/sick``, which gets ``UNHEALTHY``: one pod's probe fails
  while its siblings' pass;
- any other prompt gets ``fake: <prompt>``, after sleeping the seconds a ``[delay=S]`` in the
  prompt asks for, so a task stays in flight long enough to kill its worker.

``GET /healthz`` is its readiness.  Nothing is logged per request.
"""

from __future__ import annotations

import json
import re
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SICK_FILE = Path("/state/sick")
ONE_WORD = re.compile(r"exactly one word:\s*(\S+)", re.IGNORECASE)
DELAY = re.compile(r"\[delay=([0-9.]+)\]")
PORT = 8080


def sick_callers() -> set[str]:
    try:
        return {line.strip() for line in SICK_FILE.read_text().splitlines() if line.strip()}
    except FileNotFoundError:
        return set()


def answer(prompt: str, caller: str) -> str:
    word = ONE_WORD.search(prompt)
    if word:
        return "UNHEALTHY" if caller in sick_callers() else word.group(1).strip(".!\"'")
    delay = DELAY.search(prompt)
    if delay:
        time.sleep(float(delay.group(1)))
    return f"fake: {prompt}"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _reply(self, status: int, body: dict[str, object]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/healthz":
            self._reply(200, {"ok": True})
        else:
            self._reply(404, {"error": {"message": f"no such path {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        request = json.loads(self.rfile.read(length) or b"{}")
        if not self.path.endswith("/chat/completions"):
            self._reply(404, {"error": {"message": f"no such path {self.path}"}})
            return
        prompt = str(request["messages"][-1]["content"])
        text = answer(prompt, self.client_address[0])
        self._reply(
            200,
            {
                "model": request.get("model", "fake"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": len(prompt.split()), "completion_tokens": len(text.split())},
            },
        )

    def log_message(self, format: str, *args: object) -> None:
        return None


if __name__ == "__main__":
    # On every address of the pod: agents reach it through its Service.
    ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()  # noqa: S104
