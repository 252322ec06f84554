"""Waiting for a state, never for a time: the one ``eventually`` of the tests, blocking and async.

Both forms share one rule: ``check`` is called until it returns something truthy, which is
returned (so a check that returns the state it waited for, or None, gives that state).  An
exception from ``check`` counts as "not yet" (a pod that is not there yet, a kubectl that lost a
race, a stream that does not exist yet); the last value or exception is quoted if ``within`` runs
out.  ``within`` only bounds how long a broken test waits: a passing one returns as soon as the
state is there.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


class _Deadline:
    """The bookkeeping both forms share: when to give up, and what to say when they do."""

    def __init__(self, what: str, within: float) -> None:
        self.what = what
        self.within = within
        self.end = time.monotonic() + within
        self.last = "never true"

    def failed(self, exc: Exception) -> None:
        self.last = f"{type(exc).__name__}: {exc}"

    def falsy(self, value: object) -> None:
        self.last = f"last value: {value!r}"

    def give_up_if_over(self) -> None:
        if time.monotonic() > self.end:
            raise AssertionError(f"not within {self.within:g} s: {self.what} ({self.last[-2000:]})")


def eventually(what: str, check: Callable[[], T | None], within: float = 60.0, interval: float = 0.25) -> T:
    """Call ``check`` until it returns something truthy, and return that (see the module docstring)."""
    deadline = _Deadline(what, within)
    while True:
        try:
            value = check()
        except Exception as exc:
            deadline.failed(exc)
        else:
            if value:
                return value
            deadline.falsy(value)
        deadline.give_up_if_over()
        time.sleep(interval)


@overload
async def eventually_async(
    what: str, check: Callable[[], Awaitable[T | None]], within: float = ..., interval: float = ...
) -> T: ...
@overload
async def eventually_async(
    what: str, check: Callable[[], T | None], within: float = ..., interval: float = ...
) -> T: ...
async def eventually_async(
    what: str,
    check: Callable[[], T | Awaitable[T | None] | None],
    within: float = 15.0,
    interval: float = 0.02,
) -> T:
    """:func:`eventually` on the event loop: ``check`` may be sync or return an awaitable.

    The defaults are shorter than the blocking form's: async tests wait on in-process things
    (Redis, a local server) that are cheap to ask and settle in milliseconds.
    """
    deadline = _Deadline(what, within)
    while True:
        try:
            outcome = check()
            value = await outcome if inspect.isawaitable(outcome) else outcome
        except Exception as exc:
            deadline.failed(exc)
        else:
            if value:
                return value
            deadline.falsy(value)
        deadline.give_up_if_over()
        await asyncio.sleep(interval)
