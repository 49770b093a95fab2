"""`GET /metrics`: Prometheus text format (contract §7), open like the health checks."""

from __future__ import annotations

import anyio.to_thread
from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from chatstream.metrics import Metrics

router = APIRouter()


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Every metric of contract §7, in the Prometheus text format "
            "(OpenMetrics when the `Accept` header asks for it).",
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            },
        }
    },
    tags=["health"],
    summary="Prometheus metrics",
)
async def metrics(request: Request) -> Response:
    collected: Metrics = request.app.state.metrics
    # Off the event loop: reading the spool (and, with several processes, the
    # shared files) is blocking file I/O.
    body, content_type = await anyio.to_thread.run_sync(
        collected.scrape, request.headers.get("accept", "")
    )
    return Response(body, media_type=content_type)
