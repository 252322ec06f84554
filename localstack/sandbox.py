"""The node's namespaces and the one door into them: the API server's port on host loopback.

``python -m localstack.sandbox --listen PORT -- COMMAND...`` does, in one process:

1. binds ``127.0.0.1:PORT`` in the host's network namespace;
2. unshares a new network, mount and PID namespace (``unshare(2)``), so the socket bound in
   step 1 stays in the host's network namespace while everything this process connects to from
   now on is inside the new one;
3. forks ``COMMAND`` as PID 1 of the new PID namespace (:mod:`localstack.node`), tied to this
   process by a parent-death signal;
4. relays every connection accepted on the host port to the API server inside
   (``127.0.0.1:6443`` there), until the child exits or this process is told to stop.

Why one process does both: a socket keeps the network namespace it was created in, so the
relay needs neither a veth pair nor a route between the host and the node, and the node's
network can have no route off the machine at all.  Why the namespaces die with it: when PID 1
of a PID namespace exits, the kernel kills every process left in it (containers included), and
the network and mount namespaces, with every mount made in them, vanish with their last
process.  ``kill -9`` of this process, or of the pytest that started it, therefore leaves no
process, container, mount or namespace behind.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import os
import signal
import socket
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

_CLONE_NEWNS = 0x00020000
_CLONE_NEWPID = 0x20000000
_CLONE_NEWNET = 0x40000000
_PR_SET_PDEATHSIG = 1
_INSIDE_API = ("127.0.0.1", 6443)
_STOP_GRACE_SECONDS = 20.0


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def _unshare(flags: int) -> None:
    if _libc().unshare(flags) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"unshare: {os.strerror(errno)} (the real node needs root)")


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _relay(listener: socket.socket, child: int) -> int:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*_INSIDE_API)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, server_w), _pipe(server_r, client_w))

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    server = await asyncio.start_server(handle, sock=listener)
    # No thread may be started after unshare(CLONE_NEWPID): a pidfd says when the child exits.
    child_done: asyncio.Future[tuple[int, int]] = loop.create_future()
    pidfd = os.pidfd_open(child)

    def reap() -> None:
        loop.remove_reader(pidfd)
        os.close(pidfd)
        child_done.set_result(os.waitpid(child, 0))

    loop.add_reader(pidfd, reap)
    stopper: asyncio.Future[bool] = asyncio.ensure_future(stop.wait())
    waiting: set[asyncio.Future[Any]] = {child_done, stopper}
    await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
    server.close()
    if not child_done.done():
        # PID 1 of the node stops its components; the kernel kills what is left when it exits.
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(child_done), _STOP_GRACE_SECONDS)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            await child_done
    _, status = child_done.result()
    stopper.cancel()
    return os.waitstatus_to_exitcode(status) if not stop.is_set() else 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m localstack.sandbox", description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=int, required=True, help="host loopback port for the API server")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="PID 1 of the node, after --")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the node's command after --")

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.listen))
    listener.listen(128)
    listener.setblocking(False)

    _unshare(_CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWPID)
    prctl = _libc().prctl
    child = os.fork()
    if child == 0:
        try:
            listener.close()
            prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
            os.execvp(command[0], command)  # noqa: S606 - our own command line, no shell
        finally:
            os._exit(127)
    return asyncio.run(_relay(listener, child))


if __name__ == "__main__":
    sys.exit(main())
