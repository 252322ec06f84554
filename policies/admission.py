"""AdmissionReview v1 in and out, as pure functions the webhook server wraps.

:func:`parse_admission_review` turns the JSON body the API server posts into an
:class:`~policies.review.AdmissionRequest`, raising :class:`MalformedReview` with a message
naming what is missing or wrong (the webhook answers those with HTTP 400).
:func:`review_response` builds the response: ``allowed``, admission ``warnings`` (kubectl prints
them), the JSON patch base64-encoded with ``patchType: JSONPatch``, ``status`` 403 with the
denial messages, and ``auditAnnotations`` carrying Audit-mode violations into the API server's
audit log.

The request time is a parameter so that tests (and the engine) stay clock-free; the webhook
passes ``datetime.now(UTC)``.  The webhook fills ``namespace_labels`` and ``target_labels``
from its watch cache with :func:`dataclasses.replace`.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from policies.exemptions import EXCUSAL_MARKER
from policies.review import AdmissionRequest, Decision, UserInfo

ADMISSION_API_VERSION = "admission.k8s.io/v1"
OPERATIONS = frozenset({"CREATE", "UPDATE", "DELETE", "CONNECT"})
#: The API server rejects warnings longer than this; longer ones are cut with an ellipsis.
MAX_WARNING_LENGTH = 256
AUDIT_ANNOTATION = "policy-violations"


class MalformedReview(ValueError):
    """The body is not an AdmissionReview v1 request; the message says what is missing or wrong."""


def parse_admission_review(body: Any, *, now: datetime | None = None) -> AdmissionRequest:
    """Decode an AdmissionReview v1 request body (already JSON-decoded)."""
    if not isinstance(body, Mapping):
        raise MalformedReview(f"the body must be a JSON object (an AdmissionReview), got {_type(body)}")
    if body.get("apiVersion") != ADMISSION_API_VERSION or body.get("kind") != "AdmissionReview":
        raise MalformedReview(
            f"expected apiVersion {ADMISSION_API_VERSION} and kind AdmissionReview, got "
            f"apiVersion {body.get('apiVersion')!r} and kind {body.get('kind')!r}"
        )
    request = body.get("request")
    if not isinstance(request, Mapping):
        raise MalformedReview(f"request: must be an object, got {_type(request)}")
    uid = _string(request, "uid", required=True)
    kind = request.get("kind")
    if not isinstance(kind, Mapping) or not isinstance(kind.get("kind"), str) or not kind["kind"]:
        raise MalformedReview(
            "request.kind: must be an object with a non-empty string kind (group, version, kind)"
        )
    operation = _string(request, "operation", required=True)
    if operation not in OPERATIONS:
        raise MalformedReview(
            f"request.operation: {operation!r} is not one of {', '.join(sorted(OPERATIONS))}"
        )
    user = request.get("userInfo")
    if not isinstance(user, Mapping):
        raise MalformedReview(f"request.userInfo: must be an object, got {_type(user)}")
    username = user.get("username")
    if not isinstance(username, str):
        raise MalformedReview(f"request.userInfo.username: must be a string, got {_type(username)}")
    groups = user.get("groups", [])
    if groups is None:
        groups = []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise MalformedReview("request.userInfo.groups: must be a list of strings")
    user_uid = user.get("uid", "")
    if not isinstance(user_uid, str | None):
        raise MalformedReview(f"request.userInfo.uid: must be a string, got {_type(user_uid)}")
    dry_run = request.get("dryRun", False)
    if not isinstance(dry_run, bool | None):
        raise MalformedReview(f"request.dryRun: must be a boolean, got {_type(dry_run)}")
    return AdmissionRequest(
        uid=uid,
        kind=kind["kind"],
        operation=operation,
        namespace=_string(request, "namespace") or None,
        name=_string(request, "name") or None,
        object=_object(request, "object"),
        old_object=_object(request, "oldObject"),
        user=UserInfo(username=username, uid=user_uid or "", groups=tuple(groups)),
        dry_run=bool(dry_run),
        sub_resource=_string(request, "subResource") or None,
        now=now if now is not None else datetime.now(UTC),
    )


def review_response(uid: str, decision: Decision) -> dict[str, Any]:
    """The AdmissionReview v1 response for ``decision``."""
    response: dict[str, Any] = {"uid": uid, "allowed": decision.allowed}
    if decision.warnings:
        response["warnings"] = [_cut(w) for w in decision.warnings]
    if decision.allowed and decision.patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(json.dumps(list(decision.patch)).encode()).decode()
    if not decision.allowed:
        response["status"] = _status(403, decision.message() or "denied by agentops policy")
    if decision.audit:
        response["auditAnnotations"] = {AUDIT_ANNOTATION: json.dumps(list(decision.audit))}
    return _envelope(response)


def error_response(uid: str, message: str, code: int = 500) -> dict[str, Any]:
    """A denial for a request that could not be decided (an internal error, an object not yet
    cached): the webhook fails closed, and ``code`` tells the user whether retrying can help."""
    return _envelope({"uid": uid, "allowed": False, "status": _status(code, message)})


def _status(code: int, message: str) -> dict[str, Any]:
    reason = {403: "Forbidden", 503: "ServiceUnavailable"}.get(code, "InternalError")
    return {"code": code, "reason": reason, "message": message}


def _envelope(response: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": ADMISSION_API_VERSION, "kind": "AdmissionReview", "response": response}


def _cut(text: str) -> str:
    """Fit a warning into what the API server keeps of one.

    An excused violation ends with the exception that excused it; that note is what the user
    needs most (who allowed this, until when), so the violation's text is shortened first."""
    if len(text) <= MAX_WARNING_LENGTH:
        return text
    head, marker, note = text.partition(EXCUSAL_MARKER)
    if marker and len(marker + note) <= MAX_WARNING_LENGTH - 40:
        return head[: MAX_WARNING_LENGTH - len(marker + note) - 3] + "..." + marker + note
    return text[: MAX_WARNING_LENGTH - 3] + "..."


def _type(value: object) -> str:
    return "nothing" if value is None else type(value).__name__


def _string(request: Mapping[str, Any], key: str, *, required: bool = False) -> str:
    value = request.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise MalformedReview(f"request.{key}: must be a non-empty string, got {_type(value)}")
    return value


def _object(request: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = request.get(key)
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise MalformedReview(f"request.{key}: must be an object or null, got {_type(value)}")
    return value
