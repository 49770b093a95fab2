"""Build the one `AsyncOpenAI` client of a process, from settings.

Timeouts are explicit, but the transport has no read timeout: the run
enforces the first-token and between-token timeouts itself, so that they can
differ (a model may think for a minute before its first token, and must not
go quiet for a minute after it), and a transport read timeout would cost a
timer re-armed on every chunk for a bound that is already kept.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx2
import openai

from chatstream.config import Settings
from chatstream.emulation.demo import DEMO_BASE_URL, DemoTransport
from chatstream.emulation.emulator import Emulator
from chatstream.emulation.script import Script

logger = logging.getLogger(__name__)

# Paced like a real model, so the demo shows what streaming looks like.
DEMO_PACE = Script(first_token_ms=400, interval_ms=35)


@asynccontextmanager
async def open_client(settings: Settings) -> AsyncIterator[openai.AsyncOpenAI]:
    timeout = httpx2.Timeout(
        connect=settings.upstream_connect_timeout_s,
        read=None,
        write=settings.upstream_idle_timeout_s,
        pool=settings.upstream_connect_timeout_s,
    )
    if settings.demo:
        logger.warning(
            "No OPENAI_API_KEY or OPENAI_BASE_URL is set: answering with the built-in "
            "offline demo upstream (canned answers, no network)."
        )
        http_client = httpx2.AsyncClient(
            transport=DemoTransport(Emulator(DEMO_PACE, demo=True)), timeout=timeout
        )
        api_key, base_url = "demo", DEMO_BASE_URL
    else:
        limits = httpx2.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=min(settings.upstream_max_connections, 512),
        )
        # aiohttp's C HTTP parser reads a stream at well under half httpx2's CPU
        # per read (bench: per-token cost is the product); the SDK supports it as is.
        http_client = openai.DefaultAioHttpClient(timeout=timeout, limits=limits)
        secret = settings.openai_api_key
        # Local servers (Ollama, vLLM, llama.cpp) need no key, but the SDK wants one.
        api_key = secret.get_secret_value() if secret is not None else "unused"
        # Explicit, so the SDK never falls back to an environment we did not read.
        base_url = settings.openai_base_url or "https://api.openai.com/v1"
    client = openai.AsyncOpenAI(
        api_key=api_key,
        base_url=base_url,
        timeout=timeout,
        max_retries=settings.upstream_max_retries,
        http_client=http_client,
    )
    try:
        yield client
    finally:
        await client.close()
