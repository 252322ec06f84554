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

from policies.models import (
    PROMPT_CHANGED_AT,
    PROMPT_CHANGED_BY,
    PROMPT_CHANGED_BY_GROUPS,
    PROMPT_CHANGED_BY_UID,
    PROMPT_PREVIOUS_SHA256,
    PROMPT_SHA256,
    PROMPT_STAMPS,
    prompt_sha256,
)

STAMP_TIME_TOLERANCE = timedelta(seconds=30)
CLOCK_SKEW = timedelta(seconds=5)
#: The stamp time format (what Kubernetes uses for timestamps): ``2026-01-02T03:04:05Z``.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def is_mapping(value: object) -> TypeGuard[Mapping[str, Any]]:
    """``isinstance(value, Mapping)``, testing for a plain dict first: objects come from JSON, so
    that is nearly always the answer, and the ABC check costs ~10x a type comparison."""
    return type(value) is dict or isinstance(value, Mapping)


#: The last (time, formatted) pair: one admission formats its request time two or three times.
_last_formatted: tuple[datetime, str] | None = None


def format_time(now: datetime) -> str:
    """ISO-8601 in UTC with a ``Z``, to the second (what Kubernetes uses for timestamps)."""
    global _last_formatted
    last = _last_formatted  # one read: another thread may replace the pair meanwhile
    # ``==`` is an instant comparison for aware times and a wall-time one for naive times
    # (naive never equals aware), so an equal time has the same formatted value.
    if last is not None and last[0] == now:
        return last[1]
    utc = now.replace(tzinfo=UTC) if now.tzinfo is None else now  # naive is taken to be UTC
    # isoformat is ~10x cheaper than strftime.
    text = utc.astimezone(UTC).replace(microsecond=0, tzinfo=None).isoformat() + "Z"
    _last_formatted = (now, text)
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
    if time_is_fresh(current.get(PROMPT_CHANGED_AT), now) and all(
        current.get(key) == stamps[key] for key in PROMPT_STAMPS if key != PROMPT_CHANGED_AT
    ):
        stamps[PROMPT_CHANGED_AT] = current[PROMPT_CHANGED_AT]
    return stamps
