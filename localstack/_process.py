"""Background processes for the local control plane, Redis and the local stack.

Every process we start runs in its own session (so its process group id is its pid and a
signal to the group reaches anything it forked), writes its output to a log file, and is
recorded in a pid file.  The pid file holds the pid and the process's start time from
``/proc``, so a later ``stop`` - possibly from another process, such as ``python -m localstack
down`` - never signals an unrelated process that happens to reuse the pid.

Test fixtures ask for ``die_with_parent``: the kernel then sends SIGKILL to the child when
the test process dies, even by SIGKILL, so a killed pytest leaves nothing behind.  (Only from
the main thread: the kernel ties the signal to the forking thread, and a process started from
a worker thread must not die when that thread ends.)  The local
stack does not, because its processes must outlive the command that started them.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

_PR_SET_PDEATHSIG = 1


class StartError(RuntimeError):
    """A process failed to start or become ready; the message says what to do."""


def free_port() -> int:
    """A loopback TCP port that was free a moment ago (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now.

    SO_REUSEADDR as the servers we start bind: TIME_WAIT sockets left by a stopped server's
    clients must not block its restart on the same port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@contextlib.contextmanager
def exclusive_lock(path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path``; ``on_wait`` tells the user when another process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_wait()
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), or None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
    fields = stat[stat.rfind(")") + 2 :].split()
    if fields and fields[0] == "Z":
        return None  # a zombie has exited; only its parent's wait() is missing
    return fields[19] if len(fields) > 19 else None


def _parent_death_signal_setter() -> Callable[[], None]:
    # libc is loaded here, in the parent: loading a library between fork and exec can deadlock.
    prctl = ctypes.CDLL(None, use_errno=True).prctl

    def set_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)

    return set_signal


@dataclass(frozen=True, slots=True)
class PidFile:
    """Where one background process is recorded: ``<pid> <start-time>``."""

    path: Path

    def write(self, pid: int) -> None:
        start = _process_start_time(pid) or "?"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid} {start}\n")

    def read(self) -> tuple[int, str] | None:
        try:
            pid_text, start = self.path.read_text().split()
            return int(pid_text), start
        except (OSError, ValueError):
            return None

    def alive_pid(self) -> int | None:
        """The recorded pid if that very process still runs, else None."""
        record = self.read()
        if record is None:
            return None
        pid, start = record
        if _process_start_time(pid) != start:
            return None
        return pid

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)


def spawn(
    argv: Sequence[str],
    *,
    log: Path,
    pid_file: PidFile,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session with stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    # The kernel sends the signal when the *thread* that forked the child exits, so only the
    # main thread may ask for it: a helper thread would take the process down with it.
    tie = die_with_parent and threading.current_thread() is threading.main_thread()
    full_env = dict(os.environ)
    if env:
        full_env.update(env)
    with open(log, "ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=full_env,
                cwd=cwd,
                start_new_session=True,
                # prctl must run in the child between fork and exec; nothing else can set it.
                preexec_fn=_parent_death_signal_setter() if tie else None,
            )
        except FileNotFoundError as exc:
            raise StartError(f"cannot run {argv[0]!r}: {exc.strerror}") from None
    pid_file.write(proc.pid)
    return proc


def stop(pid_file: PidFile, *, timeout: float = 10.0) -> bool:
    """SIGTERM the recorded process group, SIGKILL it after ``timeout``; True if something ran."""
    pid = pid_file.alive_pid()
    if pid is None:
        pid_file.remove()
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _reap(pid)
        if _process_start_time(pid) is None and not _group_exists(pid):
            break
        time.sleep(0.05)
    else:
        _signal_group(pid, signal.SIGKILL)
        kill_deadline = time.monotonic() + 5
        while time.monotonic() < kill_deadline and (_process_start_time(pid) or _group_exists(pid)):
            _reap(pid)
            time.sleep(0.05)
    _reap(pid)
    pid_file.remove()
    return True


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _group_exists(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # killpg(.., 0) also succeeds for zombies: only count group members that still run.
    return any(p.group == pgid and p.state != "Z" for p in process_table())


@dataclass(frozen=True, slots=True)
class ProcessStat:
    """The fields of ``/proc/PID/stat`` the local stack looks at."""

    pid: int
    state: str
    parent: int
    group: int


def process_table() -> Iterator[ProcessStat]:
    """Every process visible in this mount's ``/proc``; ones that exit while being read are skipped."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name (field 2) may contain spaces and parentheses; fields after it are plain.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2:
            yield ProcessStat(int(entry.name), fields[0], int(fields[1]), int(fields[2]))


def _reap(pid: int) -> None:
    """Collect the exit status if ``pid`` is our own child, so it does not linger as a zombie."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def wait_until(
    check: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    alive: Callable[[], str | None] | None = None,
    interval: float = 0.1,
) -> None:
    """Poll ``check`` until it is true; ``alive`` returns an error text when waiting is pointless."""
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and (problem := alive()) is not None:
            raise StartError(problem)
        with contextlib.suppress(Exception):
            if check():
                return
        if time.monotonic() > deadline:
            raise StartError(f"{what} was not ready after {timeout:.0f}s")
        time.sleep(interval)


def tail(path: Path, lines: int = 15) -> str:
    """The end of a log file, for error messages."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:])
