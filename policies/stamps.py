"""Prompt-change audit stamps: what the mutating webhook writes and the validating one checks.

On CREATE, and on UPDATE when ``spec.systemPrompt`` changed, the stamps are computed from the
request alone: sha256 of the prompt's UTF-8 bytes, the previous prompt's sha256 (computed from
``oldObject``, not read from its annotations), the author from ``userInfo`` and the time the
caller passes.  When the prompt did not change, the stamps are copied from ``oldObject``.  In
both cases whatever the client sent under those keys is replaced, so a forged or edited stamp
never survives; the validating webhook recomputes the same values and refuses an object whose
stamps disagree (the mutating webhook was bypassed, reordered or another webhook rewrote them).

The one value that cannot be recomputed exactly is the time: the API server may call the
mutating webhook again (``reinvocationPolicy: IfNeeded``) and calls the validating webhook
later, each with its own clock reading.  A stamp time within :data:`STAMP_TIME_TOLERANCE` of the
request's time (and at most :data:`CLOCK_SKEW` ahead of it) is therefore accepted and kept.
The price is that a client can shift its own change time by at most that window.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, TypeGuard

from contracts.resources import (
    PROMPT_CHANGED_AT,
    PROMPT_CHANGED_BY,
    PROMPT_CHANGED_BY_GROUPS,
    PROMPT_CHANGED_BY_UID,
    PROMPT_PREVIOUS_SHA256,
    PROMPT_SHA256,
    PROMPT_STAMPS,
    prompt_sha256,
)

_STAMPS_BUT_TIME = tuple(key for key in PROMPT_STAMPS if key != PROMPT_CHANGED_AT)
STAMP_TIME_TOLERANCE = timedelta(seconds=30)
CLOCK_SKEW = timedelta(seconds=5)
#: The stamp time format (what Kubernetes uses for timestamps): ``2026-01-02T03:04:05Z``.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, testing for a plain dict first: objects come from JSON, so
    that is nearly always the answer, and the ABC check costs ~10x a type comparison."""
    return type(value) is dict or isinstance(value, Mapping)


#: The last (time, formatted) pair: one admission formats its request time two or three times,
#: and requests arriving within the same second share the formatted value.
_last_formatted: tuple[datetime, str] | None = None
_NO_TIME, _ONE_SECOND = timedelta(0), timedelta(seconds=1)


def format_time(now: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, to the second (what Kubernetes uses for timestamps)."""
    global _last_formatted
    last = _last_formatted  # one read: another thread may replace the pair meanwhile
    if now.tzinfo is UTC:  # what the webhook passes: the text depends on the second alone
        # last[0] is then a whole second (replace costs ~1 us, a subtraction ~0.1 us).
        if last is not None and last[0].tzinfo is UTC and _NO_TIME <= now - last[0] < _ONE_SECOND:
            return last[1]
        key = now.replace(microsecond=0)
    else:  # by identity only: equal naive or zoned times may still format differently (fold)
        key = now
        if last is not None and last[0] is now:
            return last[1]
    utc = key.replace(tzinfo=UTC) if key.tzinfo is None else key  # naive is taken to be UTC
    # isoformat is ~10x cheaper than strftime; [:19] drops the "+00:00" (the year is 4 digits).
    text = utc.astimezone(UTC).isoformat(timespec="seconds")[:19] + "Z"
    _last_formatted = (key, text)
    return text


def time_is_fresh(stamp: str | None, now: datetime) -> bool:
    """Whether ``stamp`` is a well-formed stamp time close enough to ``now`` to be ours."""
    if stamp is None:
        return False
    if stamp == format_time(now):  # the common case, this very second: no parsing needed
        return True
    try:
        at = datetime.fromisoformat(stamp)
    except ValueError:
        return False
    if at.tzinfo is None or format_time(at) != stamp:  # only our exact format counts as a stamp
        return False
    reference = now if now.tzinfo is not None else now.replace(tzinfo=UTC)
    return reference - STAMP_TIME_TOLERANCE <= at <= reference + CLOCK_SKEW


def system_prompt(obj: Mapping[str, Any] | None) -> str | None:
    if not obj:
        return None
    spec = obj.get("spec")
    prompt = spec.get("systemPrompt") if is_mapping(spec) else None
    return prompt if isinstance(prompt, str) else None


def annotations_of(obj: Mapping[str, Any] | None) -> Mapping[str, str]:
    if not obj:
        return {}
    meta = obj.get("metadata")
    found = meta.get("annotations") if is_mapping(meta) else None
    return found if is_mapping(found) else {}


def prompt_changed(operation: str, obj: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """CREATE always counts as a change; UPDATE when the prompt text differs from ``oldObject``."""
    if operation != "UPDATE" or old is None:
        return True
    return system_prompt(obj) != system_prompt(old)


def expected_stamps(
    *,
    operation: str,
    obj: Mapping[str, Any],
    old: Mapping[str, Any] | None,
    username: str,
    uid: str,
    groups: tuple[str, ...],
    now: datetime,
) -> dict[str, str | None]:
    """Each prompt stamp's value (``None``: absent) for this request.

    The change time is kept from the object when it is already a fresh stamp of this same change
    (a reinvocation), so mutating twice gives the same object.
    """
    if not prompt_changed(operation, obj, old):
        previous = annotations_of(old)
        return {key: previous.get(key) for key in PROMPT_STAMPS}
    prompt = system_prompt(obj) or ""
    old_prompt = system_prompt(old) if operation == "UPDATE" else None
    stamps: dict[str, str | None] = {
        PROMPT_SHA256: prompt_sha256(prompt),
        PROMPT_PREVIOUS_SHA256: prompt_sha256(old_prompt) if old_prompt is not None else None,
        PROMPT_CHANGED_BY: username,
        PROMPT_CHANGED_BY_UID: uid or None,
        PROMPT_CHANGED_BY_GROUPS: ",".join(groups) or None,
        PROMPT_CHANGED_AT: format_time(now),
    }
    current = annotations_of(obj)
    at = current.get(PROMPT_CHANGED_AT)
    if at is not None and time_is_fresh(at, now):
        for key in _STAMPS_BUT_TIME:
            if current.get(key) != stamps[key]:
                return stamps
        stamps[PROMPT_CHANGED_AT] = at
    return stamps
