"""Map what the SDK and the transport raise to chatstream's upstream errors.

The operator and the client are told what actually went wrong:

- an HTTP error answer carries the model server's own reason ("model
  'llama3.2' not found"), cleaned up: one line, at most `REASON_MAX_CHARS`,
  with credentials redacted (a careless server echoes the API key back);
- a connection that could not be made names the host and port from the
  base URL and the cause (refused, name not resolved, TLS handshake
  failed), which is never called a timeout. (The SDK's aiohttp transport
  reports every connector error as a connect *timeout*; the real cause is
  further down the exception chain, and that is what is read here.)

`explain` gives both the error for the client and the one line for the log.
A stream that fails once it has started (an error object inside it, a
malformed event, a dropped connection, no `finish_reason`) is logged by the
stream (`upstream/stream.py`), the reason in the client's message as well.
A reason is put in a message as it is: no full stop is added after its own.
"""

from __future__ import annotations

import errno
import re
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx2
import openai

from chatstream.errors import UpstreamError, UpstreamRateLimited, UpstreamTimeout, sentence

REASON_MAX_CHARS = 300
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

Redact = Callable[[str], str]


@dataclass(frozen=True, slots=True)
class Explained:
    error: UpstreamError  # what the client gets (its `message`)
    log: str  # what the operator reads: the same facts, plus what to check


def explain(exc: openai.OpenAIError, redact: Redact) -> Explained:
    """An error the SDK raised before the stream started (after its own retries)."""
    if isinstance(exc, openai.APIStatusError):
        return _from_status_error(exc, redact)
    if isinstance(exc, openai.APIConnectionError):
        return _from_connection_error(exc)
    error = UpstreamError("The model server request failed.", retryable=False)
    return Explained(error, f"the model server request failed ({type(exc).__name__})")


def from_status(
    status: int, retry_after_header: str | None = None, reason: str = ""
) -> UpstreamError:
    said = f": {reason}" if reason else ""
    if status == 429:
        # The reason's own full stop ends it here, before "; try again".
        said = said.rstrip(".")
        return UpstreamRateLimited(
            f"The model server is rate limiting us (HTTP 429){said}; try again shortly.",
            retry_after=_seconds(retry_after_header),
        )
    if status in (408, 504):
        return UpstreamTimeout(sentence(f"The model server timed out (HTTP {status}){said}"))
    if status in (401, 403):
        return UpstreamError(
            sentence(f"The model server refused chatstream's credentials (HTTP {status}){said}"),
            retryable=False,
        )
    if status >= 500:
        return UpstreamError(sentence(f"The model server failed (HTTP {status}){said}"))
    return UpstreamError(
        sentence(f"The model server rejected the request (HTTP {status}){said}"), retryable=False
    )


# --- a stream that had started -------------------------------------------------------


def from_transport_error(exc: Exception) -> UpstreamError:
    """An error while reading a stream that had started, naming what happened."""
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamTimeout("The model server stopped sending mid-answer.")
    reset = any(
        isinstance(cause, ConnectionResetError) or "reset by peer" in str(cause)
        for cause in _causes(exc)
    )
    how = "reset" if reset else "closed"
    return UpstreamError(f"The model server {how} the connection mid-answer.")


def from_stream_error(error: object, redact: Redact) -> UpstreamError:
    """An `{"error": {...}}` object inside the stream: the server gave up mid-answer.

    Its `message` is the reason; its `type` and `code` say whether asking
    again can help (read as `runs.accumulator.in_stream_error` reads them).
    """
    kind = ""
    if isinstance(error, dict):
        kind = f"{error.get('type') or ''} {error.get('code') or ''}".lower()
    reason = upstream_reason(error, redact)
    said = f": {reason}" if reason else ""
    if "rate" in kind or "quota" in kind:
        return UpstreamRateLimited(sentence(f"The model server stopped: rate limited{said}"))
    retryable = not any(word in kind for word in ("invalid", "context_length", "content_filter"))
    return UpstreamError(
        sentence(f"The model server reported an error mid-answer{said}"), retryable=retryable
    )


def truncated() -> UpstreamError:
    """A stream that ended cleanly but without a `finish_reason`: the answer was cut short."""
    return UpstreamError(
        "The model server's answer was cut short: the stream ended without a finish_reason."
    )


def mid_answer_log(
    error: UpstreamError, status: int, request_id: str | None, redact: Redact
) -> str:
    """The operator's line for a stream that failed after it started (the model is logged first).

    The reason is the client's message (what happened, the model server's own
    words when it gave some); the status and the model server's request id
    let whoever runs it find that request in its own logs.
    """
    said = f", its request id {redact(_one_line(request_id, 100))}" if request_id else ""
    return f"the stream broke off (HTTP {status}{said}): {error.message.rstrip('.')}"


# --- HTTP error answers --------------------------------------------------------------


def _from_status_error(exc: openai.APIStatusError, redact: Redact) -> Explained:
    status = exc.status_code
    reason = upstream_reason(exc.body, redact)
    error = from_status(status, exc.response.headers.get("retry-after"), reason)
    hint = {
        401: "; check OPENAI_API_KEY",
        403: "; check OPENAI_API_KEY and the key's permissions",
        404: "; check CHATSTREAM_MODELS and OPENAI_BASE_URL (it usually ends in /v1)",
    }.get(status, "")
    upstream_id = exc.response.headers.get("x-request-id")
    log = f"the model server answered HTTP {status}: {reason or '(no reason given)'}{hint}"
    if upstream_id:
        log += f" (its request id {redact(_one_line(upstream_id, 100))})"
    return Explained(error, log)


def upstream_reason(body: object, redact: Redact) -> str:
    """The model server's own explanation, as one safe line ("" when it gave none).

    Servers put it in different places: OpenAI and vLLM in `error.message`
    (the SDK hands over the `error` object), Ollama and llama.cpp in
    `error` or `message`, FastAPI-based servers in `detail`; proxies answer
    with plain text or an HTML page.
    """
    text = _reason_text(body)
    if text.lstrip().startswith("<"):
        return "(an HTML error page)"
    return redact(_one_line(text, REASON_MAX_CHARS))


def _reason_text(body: object) -> str:
    if isinstance(body, str):
        return body
    if isinstance(body, dict):
        for key in ("message", "error", "detail", "msg"):
            value = body.get(key)
            if isinstance(value, str) and value.strip():
                return value
            if isinstance(value, dict):
                return _reason_text(value)
            if isinstance(value, list) and value:
                return "; ".join(_reason_text(item) for item in value[:3])
    return ""


def _one_line(text: str, limit: int) -> str:
    text = " ".join(_CONTROL.sub(" ", text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- connections that could not be made ----------------------------------------------


def _from_connection_error(exc: openai.APIConnectionError) -> Explained:
    where = _host_port(exc)
    causes = list(_causes(exc))
    tls = _first(causes, ssl.SSLError)
    if tls is not None:
        detail = _tls_detail(tls)
        error = UpstreamError(
            f"The model server could not be reached: TLS handshake with {where} failed ({detail}).",
            retryable=False,
        )
        hint = (
            "; is it plain HTTP? then OPENAI_BASE_URL must start with http://"
            if "wrong version number" in detail or "record layer" in detail
            else ""
        )
        return Explained(error, f"TLS handshake with {where} failed ({detail}){hint}")
    dns = _first(causes, socket.gaierror)
    if dns is not None:
        host = where.rsplit(":", 1)[0]
        cause = _strerror(dns) or "name not resolved"
        text = f"could not resolve host {host} ({cause})"
        error = UpstreamError(f"The model server could not be reached: {text}.")
        return Explained(error, f"{text}; check OPENAI_BASE_URL")
    refused = _first(causes, ConnectionRefusedError)
    if refused is not None:
        text = f"could not connect to {where}: connection refused"
        error = UpstreamError(f"The model server could not be reached: {text}.")
        return Explained(error, f"{text}; is the model server running at OPENAI_BASE_URL?")
    other = next(
        (
            cause
            for cause in causes
            if isinstance(cause, OSError)
            and not isinstance(cause, TimeoutError)
            and cause.errno not in (None, errno.ETIMEDOUT)
        ),
        None,
    )
    if other is not None:
        text = f"could not connect to {where}: {_strerror(other) or type(other).__name__}"
        error = UpstreamError(f"The model server could not be reached: {text}.")
        return Explained(error, f"{text}; check OPENAI_BASE_URL")
    if isinstance(exc, openai.APITimeoutError):
        text = f"no answer from {where} in time"
        return Explained(
            UpstreamTimeout(f"The model server did not answer in time ({text})."),
            f"{text}; check OPENAI_BASE_URL and CHATSTREAM_UPSTREAM_CONNECT_TIMEOUT_S",
        )
    text = f"could not connect to {where}"
    return Explained(
        UpstreamError(f"The model server could not be reached: {text}."),
        f"{text} ({type(causes[-1]).__name__})",
    )


def _host_port(exc: openai.APIConnectionError) -> str:
    """`host:port` of the request, never its credentials or path."""
    try:
        url = exc.request.url
    except (AttributeError, RuntimeError):
        return "the model server"
    port = url.port or {"https": 443, "http": 80}.get(url.scheme, 0)
    host = url.host
    if ":" in host:  # an IPv6 address
        host = f"[{host}]"
    return f"{host}:{port}" if port else host


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """The exception and everything it was raised from, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _first(causes: list[BaseException], kind: type[BaseException]) -> Any:
    # aiohttp keeps the OS error it wraps on `os_error`, not always as the cause.
    for cause in causes:
        if isinstance(cause, kind):
            return cause
        wrapped = getattr(cause, "os_error", None)
        if isinstance(wrapped, kind):
            return wrapped
    return None


def _tls_detail(error: ssl.SSLError) -> str:
    reason = getattr(error, "verify_message", None) or getattr(error, "reason", None)
    text = str(reason or error.strerror or error)
    return _one_line(text.replace("_", " ").lower(), 120)


def _strerror(error: OSError) -> str:
    text = error.strerror or ""
    return _one_line(text[:1].lower() + text[1:], 120)


def _seconds(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        value = float(header)
    except ValueError:
        return None
    return value if value >= 0 else None
