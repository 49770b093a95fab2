"""Token quotas per owner: checked before a run starts, settled from its usage when it ends.

    chat ── standing(owner, model) ──▶ 429 quota_exceeded, or X-Quota-* headers
    run ends ── run_finished(record) ──▶ store.add(owner, model, tokens)   (a run listener)
    GET /api/usage ── usage(owner) ──▶ the window, the shared limit, each model

`CHATSTREAM_QUOTA_TOKENS` tokens per owner per `CHATSTREAM_QUOTA_WINDOW`
(`window.py`), shared by every model without a limit of its own;
`CHATSTREAM_QUOTA_MODELS` (`model=N,…`) gives models their own limit,
counted apart. Unset `CHATSTREAM_QUOTA_TOKENS`: off.

A run counts its usage as `done` reports it: the model server's own
`prompt_tokens + completion_tokens` (reasoning tokens are part of
`completion_tokens` in OpenAI's usage), or, when the server reported none
(a run cut short: cancelled, failed, interrupted), chatstream's estimate
(`runs/usage.py`: a prompt is ~4 characters per token, each streamed chunk
one token). Every round of a run with tools counts. An answer from the
answer cache called no model and costs nothing. Tokens count in the window
in which their run ended.

The check is before the run: an owner under the limit may start a run that
takes them over it (and several at once, up to the run cap); the next one
is refused until the window resets. The counts live where the rate limits
do (`CHATSTREAM_RATE_LIMIT_STORAGE`, else `CHATSTREAM_REDIS_URL`, else this
process's memory), and a Redis outage is handled as the rate limiter's is:
chats refused with 503 `rate_limiter_unavailable`, or let through
unchecked with `CHATSTREAM_RATE_LIMIT_FAIL_OPEN=true`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

import anyio

from chatstream.config import Settings
from chatstream.errors import QuotaExceeded, RateLimiterUnavailable
from chatstream.limiting.quotas.stores import MemoryQuotaStore, QuotaStore
from chatstream.limiting.quotas.window import Window, window_at
from chatstream.runs.lifecycle import RunListeners, RunRecord, RunStarted
from chatstream.startup import redis_failure

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from chatstream.limiting.quotas.redis_store import RedisQuotaStore

logger = logging.getLogger(__name__)

STARTUP_PING_TIMEOUT_S = 10.0
_OUTAGES: tuple[type[Exception], ...] = (OSError, TimeoutError)


class QuotaMetrics(Protocol):
    def quota_settled(self, model: str, tokens: int) -> None: ...

    def quota_exceeded(self, model: str) -> None: ...


@dataclass(frozen=True, slots=True)
class Standing:
    """Where an owner stands against the limit a model's runs count toward."""

    limit: int
    used: int
    reset_after_s: int

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)

    @property
    def exhausted(self) -> bool:
        return self.used >= self.limit

    def headers(self) -> dict[str, str]:
        return {
            "X-Quota-Limit": str(self.limit),
            "X-Quota-Remaining": str(self.remaining),
            "X-Quota-Reset": str(self.reset_after_s),
        }


@dataclass(frozen=True, slots=True)
class ModelUsage:
    used: int
    limit: int | None  # its own limit; None: it counts toward the shared one

    @property
    def remaining(self) -> int | None:
        return None if self.limit is None else max(self.limit - self.used, 0)


@dataclass(frozen=True, slots=True)
class UsageReport:
    window: Window
    reset_after_s: int
    limit: int
    used: int  # of every model without a limit of its own
    models: dict[str, ModelUsage]

    @property
    def remaining(self) -> int:
        return max(self.limit - self.used, 0)


class Quotas:
    """Entered in the lifespan (it opens the Redis client); a run listener besides."""

    def __init__(
        self,
        settings: Settings,
        *,
        listeners: RunListeners | None = None,
        metrics: QuotaMetrics | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.enabled = settings.quota_tokens is not None
        self.window_name = settings.quota_window
        self._length_s = settings.quota_window_s
        self._limit = settings.quota_tokens or 0
        self._own_limits = dict(settings.quota_models)
        self._models = list(settings.models)
        self._fail_open = settings.rate_limit_fail_open
        self._listeners = listeners
        self._metrics = metrics
        self._clock = clock
        storage = settings.limits_storage
        self._redis_url = None if storage.startswith("memory://") else storage
        self._storage_variable = (
            "CHATSTREAM_REDIS_URL"
            if settings.rate_limit_storage.startswith("memory://")
            else "CHATSTREAM_RATE_LIMIT_STORAGE"
        )
        self._prefix = f"{settings.redis_key_prefix}:quota"
        self._store: QuotaStore = MemoryQuotaStore()
        self._redis: aioredis.Redis | None = None
        self._shared: RedisQuotaStore | None = None
        self._outages = _OUTAGES
        self._down = False  # reads of the counts failing (logged at the start and end)

    async def __aenter__(self) -> Quotas:
        if not self.enabled or self._redis_url is None:
            return self
        # Imported only with Redis: redis-py stays out of a process that does not use it.
        import redis.asyncio as aioredis
        from redis.exceptions import RedisError

        from chatstream.limiting.quotas.redis_store import RedisQuotaStore

        self._outages = (RedisError, *_OUTAGES)
        self._redis = aioredis.Redis.from_url(self._redis_url)
        try:
            with anyio.fail_after(STARTUP_PING_TIMEOUT_S):
                await self._redis.ping()
        except self._outages as exc:
            await self._redis.aclose()
            raise redis_failure(self._redis_url, exc, self._storage_variable) from None
        self._shared = await RedisQuotaStore(self._redis, self._prefix).__aenter__()
        self._store = self._shared
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._shared is not None:
            await self._shared.__aexit__(exc_type, exc, tb)
        if self._redis is not None:
            await self._redis.aclose()

    # --- limits ----------------------------------------------------------------

    def limit_of(self, model: str) -> int:
        return self._own_limits.get(model, self._limit)

    @property
    def per_model(self) -> bool:
        return bool(self._own_limits)

    def _window(self) -> tuple[Window, float]:
        now = self._clock()
        return window_at(now, self._length_s), now

    def _used_toward(self, model: str, counts: dict[str, int]) -> int:
        if model in self._own_limits:
            return counts.get(model, 0)
        return sum(tokens for name, tokens in counts.items() if name not in self._own_limits)

    async def _counts(self, owner: str, window: Window) -> dict[str, int] | None:
        """The owner's counts; None in an outage of Redis with fail open (else 503)."""
        try:
            counts = await self._store.used(owner, window)
        except self._outages as exc:
            if not self._down:
                self._down = True
                logger.warning(
                    "quota counts unreachable (%s): %s until they are back "
                    "(CHATSTREAM_RATE_LIMIT_FAIL_OPEN=%s)",
                    type(exc).__name__,
                    "letting chats through unchecked" if self._fail_open else "refusing chats",
                    "true" if self._fail_open else "false",
                )
            if self._fail_open:
                return None
            raise RateLimiterUnavailable(retry_after=1) from None
        if self._down:
            self._down = False
            logger.warning("quota counts reachable again")
        return counts

    async def standing(self, owner: str, model: str) -> Standing | None:
        """Where `owner` stands for a run of `model`; None when quotas are off (or unreachable,
        with fail open)."""
        if not self.enabled:
            return None
        window, now = self._window()
        counts = await self._counts(owner, window)
        if counts is None:
            return None
        return Standing(
            limit=self.limit_of(model),
            used=self._used_toward(model, counts),
            reset_after_s=window.reset_after(now),
        )

    def exceeded(self, model: str, standing: Standing) -> QuotaExceeded:
        """The refusal of a run of `model` (counted as refused)."""
        if self._listeners is not None:
            self._listeners.chat_rejected(QuotaExceeded.code)
        if self._metrics is not None:
            self._metrics.quota_exceeded(model)
        own = f" for {model}" if model in self._own_limits else ""
        return QuotaExceeded(
            f"You have used your {standing.limit} tokens{own} for this {self.window_name} "
            f"window; it resets in {standing.reset_after_s} s.",
            retry_after=standing.reset_after_s,
            headers=standing.headers(),
        )

    async def usage(self, owner: str) -> UsageReport:
        """The owner's usage in the current window (quotas must be on)."""
        window, now = self._window()
        try:
            counts = await self._store.used(owner, window)
        except self._outages:
            raise RateLimiterUnavailable(retry_after=1) from None
        models = {
            model: ModelUsage(used=counts.get(model, 0), limit=self._own_limits.get(model))
            for model in self._models
        }
        return UsageReport(
            window=window,
            reset_after_s=window.reset_after(now),
            limit=self._limit,
            used=sum(tokens for name, tokens in counts.items() if name not in self._own_limits),
            models=models,
        )

    # --- a run listener ------------------------------------------------------------

    def run_started(self, run: RunStarted) -> None:
        pass

    def run_finished(self, record: RunRecord) -> None:
        """Count what the run used, however it ended (its usage as `done` reported it)."""
        if not self.enabled or record.usage is None or record.metrics.get("cached"):
            return
        tokens = record.usage["total_tokens"]
        if tokens <= 0:
            return
        window, _ = self._window()
        self._store.add(record.owner, record.model, tokens, window)
        if self._metrics is not None:
            self._metrics.quota_settled(record.model, tokens)

    def chat_rejected(self, code: str) -> None:
        pass
