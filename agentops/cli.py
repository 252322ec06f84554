"""Entry point of ``agentops`` / ``kubectl agentops``: one subcommand module per concern."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from agentops import history_cmd, pipeline_cmd, policy_cmd, stack_cmd, task_cmd, uninstall_cmd
from kube.config import ConfigError

COMMAND_MODULES = (policy_cmd, task_cmd, history_cmd, pipeline_cmd, stack_cmd, uninstall_cmd)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="agentops",
        description=(
            "Operate AI agents on Kubernetes: policies, tasks, prompt history, pipelines, uninstall."
        ),
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in COMMAND_MODULES:
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Each subcommand sets ``func(args) -> int``; its return value is the exit status."""
    args = build_parser().parse_args(argv)
    try:
        status: int = args.func(args)
    except KeyboardInterrupt:
        return 130
    except ConfigError as exc:  # no cluster given: the message says how to give one
        print(f"agentops {args.command}: {exc}", file=sys.stderr)
        return 2
    return status


if __name__ == "__main__":
    sys.exit(main())
