"""Debouncing: let a burst of watch events settle into one piece of work (a scan, a regeneration)."""

from __future__ import annotations

import asyncio
import time


async def settle(wake: asyncio.Event, quiet: float, longest: float) -> None:
    """Return once ``wake`` has stayed unset for ``quiet`` seconds, or after ``longest`` at most
    (a steady trickle of changes, such as ``kubectl apply`` of a directory, must not starve the work)."""
    end = time.monotonic() + longest
    while True:
        wake.clear()
        remaining = end - time.monotonic()
        if remaining <= 0:
            return
        try:
            await asyncio.wait_for(wake.wait(), timeout=min(quiet, remaining))
        except TimeoutError:
            return
