"""Go programs the local stack builds from pinned Go modules, once, into a shared cache.

A :class:`GoTool` names a Go module in this repository (``go.mod``, ``go.sum`` and its ``*.go``
files) and the package to build from it.  :meth:`GoTool.ensure` returns the cached binary
``<cache>/<name>-<hash>``, where the hash covers the module's files, the package and the link
flags, so a new pin builds a new binary and an unchanged one is reused.  Concurrent callers (two
test sessions, a test session and ``make up``) share one build through a file lock.

The cache is ``$AGENTOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/agentops``, else
``~/.cache/agentops``; Go's own module and build caches make a rebuild after a small change a
relink rather than a cold build.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from localstack import _process
from localstack._process import StartError

__all__ = ["GoTool", "Progress", "cache_dir", "find_go"]

#: Where Go's official tarball and Debian's golang package put `go` when it is not on PATH.
GO_FALLBACKS: tuple[str, ...] = ("/usr/local/go/bin/go", "/usr/lib/go/bin/go")

Progress = Callable[[str], None]


def _stderr(message: str) -> None:
    print(f"[build] {message}", file=sys.stderr, flush=True)


def cache_dir() -> Path:
    """``$AGENTOPS_CACHE_DIR``, else ``$XDG_CACHE_HOME/agentops``, else ``~/.cache/agentops``."""
    if explicit := os.environ.get("AGENTOPS_CACHE_DIR"):
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "agentops"


def find_go() -> str:
    found = shutil.which("go") or next((p for p in GO_FALLBACKS if Path(p).exists()), None)
    if found is None:
        raise StartError(
            "the Go toolchain is needed once to build the local cluster's programs, and `go` is not "
            "on PATH: install Go >= 1.24 (https://go.dev/doc/install, or `apt-get install -y "
            "golang-go` if your distribution ships >= 1.24) and run the command again"
        )
    return found


@dataclass(frozen=True)
class GoTool:
    """One binary built from a Go module of this repository."""

    #: Cache file prefix and the name used in messages (``kcp``, ``coredns``, ``helm``).
    name: str
    #: The Go module: a directory with ``go.mod`` and ``go.sum``.
    source_dir: Path
    #: What to build, relative to the module (``.``) or a package path of a dependency.
    package: str = "."
    ldflags: str = ""
    #: False for binaries that go into an image built ``FROM scratch``: no libc to link against.
    cgo: bool = True
    #: What the binary is, for the progress message of a build.
    describe: str = ""

    def source_hash(self) -> str:
        digest = hashlib.sha256()
        files = [
            self.source_dir / "go.mod",
            self.source_dir / "go.sum",
            *sorted(self.source_dir.glob("*.go")),
        ]
        for path in files:
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
        digest.update(self.ldflags.encode())
        # Kept out of the hash when they are the defaults, so existing caches stay valid.
        if self.package != ".":
            digest.update(b"package\0" + self.package.encode())
        if not self.cgo:
            digest.update(b"cgo=0")
        return digest.hexdigest()

    def path(self) -> Path:
        return cache_dir() / f"{self.name}-{self.source_hash()[:16]}"

    def ensure(self, progress: Progress = _stderr) -> Path:
        """The cached binary, built first if the module changed since the last build."""
        target = self.path()
        if target.exists():
            return target
        waiting = f"another process is building {self.name}; waiting for it"
        with _process.exclusive_lock(target.parent / f"{self.name}.lock", lambda: progress(waiting)):
            if target.exists():  # the other process finished the build while we waited
                return target
            self._build(target, progress)
        return target

    def _build(self, target: Path, progress: Progress) -> None:
        go = find_go()
        log_path = target.parent / f"{self.name}-build.log"
        partial = target.with_suffix(".partial")
        progress(
            f"building {self.describe or self.name} into {target}; a cold build takes minutes, "
            "later builds reuse Go's cache"
        )
        # -buildvcs=false: a source tarball or a checkout git cannot read must still build.
        argv = [go, "build", "-v", "-buildvcs=false", f"-ldflags={self.ldflags}", "-o", str(partial)]
        argv.append(self.package)
        env = {**os.environ, "CGO_ENABLED": "1" if self.cgo else "0"}
        started = time.monotonic()
        compiled = 0
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                argv,
                cwd=self.source_dir,
                env=env,
                stdout=log,
                stderr=subprocess.PIPE,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            assert proc.stderr is not None
            done = threading.Event()

            def report() -> None:
                while not done.wait(20):
                    elapsed = time.monotonic() - started
                    progress(
                        f"still building {self.name}: {compiled} packages compiled, {elapsed:.0f}s elapsed"
                    )

            threading.Thread(target=report, daemon=True).start()
            try:
                # `go build -v` names each package as it compiles it: a cheap progress counter.
                for line in proc.stderr:
                    log.write(line)
                    compiled += 1
                status = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                partial.unlink(missing_ok=True)
                raise
            finally:
                done.set()
        if status != 0:
            partial.unlink(missing_ok=True)
            raise StartError(
                f"building {self.name} failed (go build exit {status}); see {log_path}:\n"
                + _process.tail(log_path)
            )
        partial.replace(target)
        # Older builds are large and never used again; running processes keep their inode.
        for old in target.parent.glob(f"{self.name}-*"):
            if old != target and old.suffix == "" and old.name != log_path.name and old.is_file():
                old.unlink(missing_ok=True)
        progress(f"built {target.name} in {time.monotonic() - started:.0f}s")
