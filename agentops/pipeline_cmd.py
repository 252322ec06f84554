"""Placeholder: the owning component registers its subcommands here."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands; each sets ``func(args) -> int``."""
