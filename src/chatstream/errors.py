"""The error tree. Every expected failure is one of these, never a bare 500.

    ChatstreamError                  status, code, message, retryable
    ├── InvalidRequest               422 invalid_request
    │   ├── InvalidChat                422 invalid_request       (names each field at fault)
    │   ├── NotAUserMessage            422 not_a_user_message    (an edit of an answer)
    │   └── NothingToRegenerate        422 nothing_to_regenerate (no question above it)
    ├── Unauthorized                 401 unauthorized          (no bearer token)
    │   ├── InvalidToken             401 unauthorized          (WWW-Authenticate: invalid_token)
    │   └── TokenExpired             401 token_expired         (WWW-Authenticate: …expired)
    ├── NotFound                     404 not_found
    ├── Conflict                     409 conflict
    │   └── IdempotencyConflict      409 idempotency_conflict
    ├── PayloadTooLarge              413 payload_too_large
    ├── RateLimited                  429 rate_limited
    │   ├── TooManyRuns              429 too_many_runs
    │   └── QuotaExceeded            429 quota_exceeded
    ├── ServiceUnavailable           503 unavailable
    │   ├── DatabaseUnavailable      503 database_unavailable
    │   └── RateLimiterUnavailable   503 rate_limiter_unavailable
    └── UpstreamError                502 upstream_error        (also an `error` event)
        ├── UpstreamTimeout          504 upstream_timeout
        └── UpstreamRateLimited      503 upstream_rate_limited

Before the first byte of a response an error becomes an HTTP status with the
contract's JSON body; after it, an `error` event (or frame) with `code`,
`message` and `retryable`. Messages are ours, written for clients: they never
carry keys, passwords or tracebacks; a model server's own reason is passed
on only cleaned up and redacted (see `upstream.errors`).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, ClassVar

_ENDS_A_SENTENCE = (".", "!", "?", "…")


def sentence(text: str) -> str:
    """`text` ending in one full stop: none added after one of its own ("Bad thing." stays)."""
    text = text.rstrip()
    return text if text.endswith(_ENDS_A_SENTENCE) else text + "."


class ChatstreamError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"
    default_message: ClassVar[str] = "Internal error."
    default_retryable: ClassVar[bool] = False

    def __init__(
        self,
        message: str | None = None,
        *,
        retryable: bool | None = None,
        retry_after: float | None = None,
        details: Any = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.message = message or self.default_message
        self.retryable = self.default_retryable if retryable is None else retryable
        self.retry_after = retry_after
        self.details = details
        self.headers = headers or {}
        super().__init__(self.message)

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.details is not None:
            error["details"] = self.details
        return {"error": error}


class InvalidRequest(ChatstreamError):
    status = 422
    code = "invalid_request"
    default_message = "The request is not valid."


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with one field of a request, in words a person can act on."""

    field: str
    message: str
    kind: str  # machine-readable, like pydantic's error types


class InvalidChat(InvalidRequest):
    """A chat that breaks a rule of the service (transports shape `problems` as they need)."""

    def __init__(self, problems: list[Problem]) -> None:
        said = "; ".join(f"{p.field} {p.message}" for p in problems)
        super().__init__(sentence(f"The chat request is not valid: {said}"))
        self.problems = problems


class NotAUserMessage(InvalidRequest):
    """An edit names a message that is not a user's: only those are edited."""

    code = "not_a_user_message"


class NothingToRegenerate(InvalidRequest):
    """A regeneration names a message that answers nothing (a context given as it was)."""

    code = "nothing_to_regenerate"


class Unauthorized(ChatstreamError):
    status = 401
    code = "unauthorized"
    default_message = "A valid bearer token is required."


class InvalidToken(Unauthorized):
    default_message = "The bearer token is not valid."
    # RFC 6750 section 3: tells the client that this token, not its absence, is the problem.
    challenge = 'Bearer error="invalid_token", error_description="The token is not valid"'

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message, headers={"WWW-Authenticate": self.challenge})


class TokenExpired(InvalidToken):
    code = "token_expired"
    default_message = "The bearer token has expired; get a new one."
    challenge = 'Bearer error="invalid_token", error_description="The token has expired"'


class NotFound(ChatstreamError):
    status = 404
    code = "not_found"
    default_message = "Not found."


class Conflict(ChatstreamError):
    status = 409
    code = "conflict"
    default_message = "The resource is not in a state that allows this."


class IdempotencyConflict(Conflict):
    code = "idempotency_conflict"
    default_message = (
        "This client_message_id was already used with a different message; "
        "use a new client_message_id for a new message."
    )


class PayloadTooLarge(ChatstreamError):
    status = 413
    code = "payload_too_large"
    default_message = "The request body is too large."


class RateLimited(ChatstreamError):
    status = 429
    code = "rate_limited"
    default_message = "Too many requests; slow down."
    default_retryable = True


class TooManyRuns(RateLimited):
    code = "too_many_runs"
    default_message = "Too many answers are being generated for you at once."


class QuotaExceeded(RateLimited):
    code = "quota_exceeded"
    default_message = "Your token quota for this window is used up; wait for it to reset."


class ServiceUnavailable(ChatstreamError):
    status = 503
    code = "unavailable"
    default_message = "The service cannot take this request now; try again shortly."
    default_retryable = True


class DatabaseUnavailable(ServiceUnavailable):
    code = "database_unavailable"
    default_message = "The database is unavailable; try again shortly."


class RateLimiterUnavailable(ServiceUnavailable):
    code = "rate_limiter_unavailable"
    default_message = (
        "The rate limiter's storage is unreachable, so no chat can be started; try again shortly."
    )


class UpstreamError(ChatstreamError):
    status = 502
    code = "upstream_error"
    default_message = "The model server failed."
    default_retryable = True


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"
    default_message = "The model server did not answer in time."


class UpstreamRateLimited(UpstreamError):
    status = 503
    code = "upstream_rate_limited"
    default_message = "The model server is rate limiting us; try again shortly."


class ServerShutdown(ChatstreamError):
    status = 503
    code = "server_shutdown"
    default_message = "The server is restarting; try again."
    default_retryable = True


def failed_run_status(code: str) -> int:
    """The HTTP status of an answer whose run ended in the error `code` (a 5xx).

    A run's `error` event carries the code only; the status is its class's
    (an upstream failure is 502, 503 or 504, a shutdown 503). Anything else a
    run ends in is the server's failure: 500.
    """
    status = _status_by_code().get(code, 500)
    return status if status >= 500 else 500


@functools.cache
def _status_by_code() -> dict[str, int]:
    found: dict[str, int] = {}
    pending: list[type[ChatstreamError]] = [ChatstreamError]
    while pending:
        error = pending.pop()
        found.setdefault(error.code, error.status)
        pending += error.__subclasses__()
    return found


class StartupError(Exception):
    """A dependency chatstream cannot use at start-up (not an HTTP error: nothing is served yet).

    The message is one line for the operator: what is unusable (host and port,
    never a password) and what to do about it.
    """
