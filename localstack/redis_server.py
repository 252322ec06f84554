"""A real ``redis-server`` (Debian's package) on a free loopback port, for tests and the local stack.

::

    redis = RedisServer(Path(".local/redis"))
    redis.start()             # returns when it answers PING
    redis.url                 # redis://127.0.0.1:PORT/0
    redis.stop(); redis.start()   # same port, same data: nothing is lost

The append-only file is on, and ``stop()`` sends SIGTERM, on which Redis writes everything
out before exiting: a restart keeps every stream entry, which the crash-safety tests rely on.
``fsync`` defaults to ``everysec`` (Redis' default): ``always`` would make every write wait for
the disk, which would distort the throughput benchmarks and is not needed for a clean stop.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Literal

import redis

from localstack import _process
from localstack._process import PidFile, StartError

__all__ = ["RedisServer", "StartError"]

#: Debian's location, for a PATH that lacks /usr/bin (e.g. a minimal service environment).
FALLBACK_BINARY = "/usr/bin/redis-server"
INSTALL_HINT = "install it with `apt-get install -y redis-server` (Debian/Ubuntu) and try again"


def redis_server_binary() -> str:
    found = shutil.which("redis-server") or (FALLBACK_BINARY if Path(FALLBACK_BINARY).exists() else None)
    if found is None:
        raise StartError(f"redis-server is not installed: {INSTALL_HINT}")
    return found


class RedisServer:
    """One ``redis-server`` process whose data and log live in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        *,
        fsync: Literal["always", "everysec", "no"] = "everysec",
        die_with_parent: bool = False,
    ) -> None:
        self.workdir = workdir.resolve()
        self._pid_file = PidFile(self.workdir / "redis.pid")
        self._state_file = self.workdir / "state.json"
        self._fsync = fsync
        self._die_with_parent = die_with_parent
        self._proc: subprocess.Popen[bytes] | None = None
        # A port chosen earlier (perhaps by another process) is kept, so restarts keep the URL.
        self._port: int | None = port if port is not None else self._saved_port()

    @property
    def log_file(self) -> Path:
        return self.workdir / "redis.log"

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("RedisServer has no port yet: call start() first")
        return self._port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def running(self) -> bool:
        return self._pid_file.alive_pid() is not None

    def _saved_port(self) -> int | None:
        try:
            port = json.loads(self._state_file.read_text())["port"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return int(port)

    def start(self, timeout: float = 20.0) -> None:
        """Start Redis (on the same port and data as before, if it ran here already)."""
        if self.running:
            raise StartError(f"redis-server is already running in {self.workdir} on port {self._port}")
        binary = redis_server_binary()
        if self._port is None:
            self._port = _process.free_port()
        elif not _process.port_is_free(self._port):
            raise StartError(
                f"port {self._port} on 127.0.0.1 is taken, so redis-server cannot start there: stop what "
                f"listens on it (`ss -ltnp 'sport = :{self._port}'` shows it) or choose another port"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({"port": self._port}))
        argv = [
            binary,
            "--bind", "127.0.0.1",
            "--port", str(self._port),
            "--dir", str(self.workdir),
            "--appendonly", "yes",
            "--appendfsync", self._fsync,
            # The append-only file is the persistence; RDB snapshots would only add pauses.
            "--save", "",
            "--daemonize", "no",
            "--protected-mode", "yes",
            "--logfile", str(self.log_file),
        ]  # fmt: skip
        self._proc = _process.spawn(
            argv,
            log=self.workdir / "redis.stdout",
            pid_file=self._pid_file,
            die_with_parent=self._die_with_parent,
        )
        proc = self._proc

        def alive() -> str | None:
            if proc.poll() is None:
                return None
            return (
                f"redis-server exited with status {proc.returncode}; the end of {self.log_file}:\n"
                + _process.tail(self.log_file)
            )

        try:
            _process.wait_until(self._ping, timeout=timeout, what="redis-server", alive=alive)
        except BaseException:
            self.stop()
            raise

    def _ping(self) -> bool:
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1, socket_connect_timeout=1)
        try:
            return bool(client.ping())
        finally:
            client.close()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes its append-only file and exits), SIGKILL after ``timeout``."""
        _process.stop(self._pid_file, timeout=timeout)
        if self._proc is not None:
            self._proc.wait(timeout=5)
            self._proc = None
