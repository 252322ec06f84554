"""Fixtures of the controller suite: the controller as a real subprocess, and the local launcher.

``controller`` starts ``python -m controller --namespace <test namespace>`` against the session's
control plane and Redis (offline fallback on, standalone, fast resync) and stops it after the
test; ``controller.kill()`` sends SIGKILL and ``controller.start()`` starts it again, for crash
tests.  ``local_agents`` runs :func:`localstack.agents.run_local_agents` in a thread, so agent
pods become real ``python -m agent_runtime`` processes whose readiness reaches Pod status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from localstack.agents import run_local_agents
from localstack.controlplane import ControlPlane


@dataclass
class ControllerProcess:
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = field(default=0)

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "controller already running"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self.argv, env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL: no cleanup, no finalizers, no flushing - a crash."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def controller_argv(namespace: str, redis_url: str, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "controller",
        "--namespace",
        namespace,
        "--redis-url",
        redis_url,
        "--offline-fallback",
        "--standalone",
        "--resync-seconds",
        "0.5",
        *extra,
    ]


@pytest.fixture
def controller(
    control_plane: ControlPlane, namespace: str, redis_url: str, tmp_path: Path
) -> Iterator[ControllerProcess]:
    env = {**os.environ, "KUBECONFIG": str(control_plane.kubeconfig)}
    env.pop("ANTHROPIC_API_KEY", None)
    proc = ControllerProcess(controller_argv(namespace, redis_url), env, tmp_path / "controller.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()
        # Shown by pytest only when the test failed.
        print("--- controller log (tail) ---")
        print(proc.output()[-6000:])


@pytest.fixture
def local_agents(control_plane: ControlPlane, namespace: str, tmp_path: Path) -> Iterator[None]:
    stop = threading.Event()
    thread = threading.Thread(
        target=run_local_agents,
        args=(control_plane.kubeconfig, namespace, tmp_path / "agents", stop),
        name="local-agents",
        daemon=True,
    )
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=30)
