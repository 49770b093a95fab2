"""Map what the SDK and the transport raise to chatstream's upstream errors.

Messages are written here, never copied from the upstream: a provider's
error body can echo part of the API key, the prompt, or internal URLs.
"""

from __future__ import annotations

import httpx2
import openai

from chatstream.errors import UpstreamError, UpstreamRateLimited, UpstreamTimeout


def from_sdk_error(exc: openai.OpenAIError) -> UpstreamError:
    """An error the SDK raised before the stream started (after its own retries)."""
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamTimeout("The model server did not answer in time.")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError("The model server could not be reached.")
    if isinstance(exc, openai.APIStatusError):
        return from_status(exc.status_code, exc.response.headers.get("retry-after"))
    return UpstreamError("The model server request failed.", retryable=False)


def from_status(status: int, retry_after_header: str | None = None) -> UpstreamError:
    if status == 429:
        return UpstreamRateLimited(
            "The model server is rate limiting us; try again shortly.",
            retry_after=_seconds(retry_after_header),
        )
    if status in (408, 504):
        return UpstreamTimeout("The model server timed out.")
    if status in (401, 403):
        return UpstreamError("The model server refused chatstream's credentials.", retryable=False)
    if status >= 500:
        return UpstreamError(f"The model server failed (HTTP {status}).")
    return UpstreamError(f"The model server rejected the request (HTTP {status}).", retryable=False)


def from_transport_error(exc: Exception) -> UpstreamError:
    """An error while reading a stream that had started."""
    if isinstance(exc, httpx2.TimeoutException):
        return UpstreamTimeout("The model server stopped sending mid-answer.")
    return UpstreamError("The connection to the model server was lost mid-answer.")


def _seconds(header: str | None) -> float | None:
    if header is None:
        return None
    try:
        value = float(header)
    except ValueError:
        return None
    return value if value >= 0 else None
