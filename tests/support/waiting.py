"""Waiting for a state, never for a time: the one blocking ``eventually`` of the cluster tests."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(what: str, check: Callable[[], T], within: float = 60.0, interval: float = 0.25) -> T:
    """Call ``check`` until it returns something truthy, and return that.

    An exception from ``check`` counts as "not yet" (a pod that is not there yet, a kubectl that
    lost a race); the last one is quoted if ``within`` runs out.  ``within`` only bounds how long a
    broken test waits: a passing one returns as soon as the state is there.
    """
    deadline = time.monotonic() + within
    last: str = "never true"
    while True:
        try:
            value = check()
        except Exception as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if value:
                return value
            last = f"last value: {value!r}"
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within:.0f} s: {what} ({last[-2000:]})")
        time.sleep(interval)
