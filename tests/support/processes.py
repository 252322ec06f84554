"""Finding processes a test left behind."""

from __future__ import annotations

from pathlib import Path


def processes_using(path: Path) -> list[str]:
    """``pid: command line`` of every live (non-zombie) process whose command line mentions ``path``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if str(path) in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found
