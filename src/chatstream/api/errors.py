"""Every error leaves as `{"error": {"code", "message"[, "details"]}}`.

Validation details keep the location, message and type of each problem and
drop the offending input: it can be large, and it can be somebody's secret.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from chatstream.errors import ChatstreamError, InvalidChat, sentence

logger = logging.getLogger(__name__)

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "unavailable",
}


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    error: dict[str, Any] = {"code": code, "message": message}
    if details is not None:
        error["details"] = details
    return JSONResponse({"error": error}, status_code=status, headers=headers)


def problem_details(exc: ChatstreamError, where: tuple[str, ...] = ("body",)) -> Any:
    """An error's details: for a chat the service refused, one entry per field at fault."""
    if isinstance(exc, InvalidChat):
        return [
            {"loc": [*where, problem.field], "msg": problem.message, "type": problem.kind}
            for problem in exc.problems
        ]
    return exc.details


def chatstream_error_response(exc: ChatstreamError) -> JSONResponse:
    headers = dict(exc.headers)
    if exc.retry_after is not None:
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    if exc.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return error_response(
        exc.status, exc.code, exc.message, details=problem_details(exc), headers=headers
    )


async def _on_chatstream_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ChatstreamError)
    return chatstream_error_response(exc)


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    body_problem = _body_problem(request, errors)
    if body_problem is not None:
        return error_response(422, "invalid_request", body_problem)
    details = [
        {
            "loc": list(error.get("loc", ())),
            "msg": _readable(error),
            "type": error.get("type", ""),
        }
        for error in errors
    ]
    said = "; ".join(f"{_field(d['loc'])} {d['msg']}" for d in details[:3])
    more = f" (and {len(details) - 3} more)" if len(details) > 3 else ""
    message = sentence(f"The request is not valid: {said}{more}")
    return error_response(422, "invalid_request", message, details=details)


def _body_problem(request: Request, errors: list[Any]) -> str | None:
    """What is wrong with the body as a whole (not JSON, no JSON object), if that is it."""
    whole = [e for e in errors if tuple(e.get("loc", ()))[:1] == ("body",)]
    if not whole or any(
        len(e.get("loc", ())) > 1 and e.get("type") != "json_invalid" for e in whole
    ):
        return None
    content_type = request.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "application/json":
        sent = f"'{content_type[:80]}'" if content_type else "none"
        return (
            "The body must be JSON, sent with the header `Content-Type: application/json` "
            f"(this request's Content-Type: {sent})."
        )
    kinds = {e.get("type") for e in whole}
    if "json_invalid" in kinds:
        position = next(
            (e["loc"][1] for e in whole if len(e["loc"]) > 1 and isinstance(e["loc"][1], int)), None
        )
        where = f" (at character {position})" if position is not None else ""
        return f"The body is not valid JSON{where}."
    if "missing" in kinds:
        return "The request needs a JSON body."
    return "The body must be a JSON object."


def _readable(error: Any) -> str:
    """pydantic's message, without regular expressions a person cannot act on."""
    kind, loc = error.get("type", ""), tuple(error.get("loc", ()))
    if kind == "string_pattern_mismatch":
        if loc[-1:] == ("message",):
            return "must contain some non-whitespace text"
        if loc[-1:] == ("cursor",):
            return "is not a cursor this server issued (pass back `next_cursor`)"
        return "is not in the expected format"
    if kind == "extra_forbidden":
        return "is not a field of this request"
    return str(error.get("msg", "")).replace("Input should be", "should be")


def _field(loc: list[Any]) -> str:
    parts = [str(part) for part in loc if part not in ("body", "query", "path", "header")]
    return ".".join(parts) or "the request"


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "error")
    message = exc.detail if isinstance(exc.detail, str) else "Request failed."
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    logger.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return error_response(500, "internal", "Internal error.")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ChatstreamError, _on_chatstream_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(Exception, _on_unexpected)
