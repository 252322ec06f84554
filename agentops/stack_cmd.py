"""``agentops up|down|status``: the local stack, the same as ``python -m localstack up|down|status``.

``localstack`` assembles every package and nothing imports it, so the CLI runs it as a module in
a child process of the same interpreter instead of importing it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from typing import Any

_COMMANDS = {
    "up": "start the local stack (control plane, Redis, components, samples) in the background",
    "down": "stop the local stack; leaves no process behind",
    "status": "say which parts of the local stack are running",
}


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands; each sets ``func(args) -> int``."""
    for name, help_text in _COMMANDS.items():
        parser = subparsers.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--state-dir", default=None, help="default: .local/ in the checkout")
        if name == "up":
            parser.add_argument("--no-samples", action="store_true", help="do not apply deploy/samples/")
        parser.set_defaults(func=_run, stack_command=name)


def _run(args: argparse.Namespace) -> int:
    argv = [sys.executable, "-m", "localstack"]
    if args.state_dir:
        argv += ["--state-dir", args.state_dir]
    argv.append(args.stack_command)
    if getattr(args, "no_samples", False):
        argv.append("--no-samples")
    return subprocess.run(argv, check=False).returncode
