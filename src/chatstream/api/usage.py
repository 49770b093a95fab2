"""`GET /api/usage`: the caller's tokens in the current quota window (`limiting/quotas`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field
from starlette.requests import Request

from chatstream.api.deps import Owner
from chatstream.api.schemas import ErrorBody
from chatstream.limiting.quotas.quotas import Quotas

router = APIRouter(prefix="/api", tags=["usage"])

QUOTA_HEADERS = ("X-Quota-Limit", "X-Quota-Remaining", "X-Quota-Reset")
# The answers that start chats: each carries the X-Quota-* headers when quotas are on.
CHAT_OPERATIONS = ("/api/chat", "/api/chat/stream", "/api/ui/chat", "/v1/chat/completions")
_HEADER_TEXTS = {
    "X-Quota-Limit": "With CHATSTREAM_QUOTA_TOKENS: the tokens per window the run's model "
    "counts toward.",
    "X-Quota-Remaining": "Of those, what was left when the run started (its own tokens are "
    "counted when it ends).",
    "X-Quota-Reset": "Seconds until the quota window resets.",
}


def document_quota_headers(schema: dict[str, Any]) -> None:
    """Add the X-Quota-* headers to the answers of the chat operations in OpenAPI."""
    for path in CHAT_OPERATIONS:
        responses = schema["paths"].get(path, {}).get("post", {}).get("responses", {})
        for status in ("200", "429"):
            if status in responses:
                headers = responses[status].setdefault("headers", {})
                for name, text in _HEADER_TEXTS.items():
                    headers[name] = {"description": text, "schema": {"type": "integer"}}


class ModelUsageOut(BaseModel):
    used: int = Field(description="Tokens of this model's runs in the window.")
    limit: int | None = Field(
        description="Its own limit (CHATSTREAM_QUOTA_MODELS); null: it counts toward `limit`."
    )
    remaining: int | None = Field(description="Of its own limit; null without one.")


class UsageOut(BaseModel):
    enabled: bool = Field(description="Whether quotas are on (CHATSTREAM_QUOTA_TOKENS is set).")
    window: str | None = Field(
        description="CHATSTREAM_QUOTA_WINDOW: `minute`, `hour`, `day` (UTC) or a number of "
        "seconds; windows are aligned to their length since the Unix epoch."
    )
    window_s: int | None = Field(description="The window's length in seconds.")
    reset_at: datetime | None = Field(description="When the current window ends (UTC).")
    reset_s: int | None = Field(description="Seconds until then (as X-Quota-Reset).")
    limit: int | None = Field(
        description="Tokens per window shared by every model without a limit of its own."
    )
    used: int | None = Field(description="Tokens of those models' runs in the window.")
    remaining: int | None = Field(description="`limit` minus `used`, at least 0.")
    models: dict[str, ModelUsageOut] = Field(
        description="Every model of GET /api/models: its tokens in the window, and its own "
        "limit if it has one."
    )


OFF = UsageOut(
    enabled=False,
    window=None,
    window_s=None,
    reset_at=None,
    reset_s=None,
    limit=None,
    used=None,
    remaining=None,
    models={},
)


@router.get(
    "/usage",
    response_model=UsageOut,
    responses={
        401: {"model": ErrorBody, "description": "Auth is on and the token is not valid."},
        503: {
            "model": ErrorBody,
            "description": "`rate_limiter_unavailable`: the Redis the counts live in is "
            "unreachable.",
        },
    },
    summary="Your token usage in the current quota window",
)
async def usage(request: Request, owner: Owner) -> UsageOut:
    """Counted once each run has ended, from the usage its `done` reported."""
    quotas: Quotas | None = getattr(request.app.state, "quotas", None)
    if quotas is None or not quotas.enabled:
        return OFF
    report = await quotas.usage(owner)
    window = report.window
    return UsageOut(
        enabled=True,
        window=quotas.window_name,
        window_s=window.end - window.start,
        reset_at=datetime.fromtimestamp(window.end, UTC),
        reset_s=report.reset_after_s,
        limit=report.limit,
        used=report.used,
        remaining=report.remaining,
        models={
            model: ModelUsageOut(used=m.used, limit=m.limit, remaining=m.remaining)
            for model, m in report.models.items()
        },
    )
