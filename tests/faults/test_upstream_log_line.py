"""The operator's view of an upstream failure: one WARNING line in `chatstream serve`'s log."""

from __future__ import annotations

import httpx

from tests.faults.conftest import ServeFactory
from tests.support.servers import FakeUpstreamThread
from tests.support.sse import read_stream


def test_one_warning_line_with_status_model_reason_and_request_id(
    serve: ServeFactory, fake: FakeUpstreamThread
) -> None:
    server = serve()
    with (
        httpx.Client(base_url=server.base_url, timeout=30) as client,
        client.stream(
            "POST",
            "/api/chat/stream",
            json={"message": "[[fake status=404 echo_auth=1]] hi"},
            headers={"X-Request-ID": "trace-upstream-404"},
        ) as response,
    ):
        stream = read_stream(response)
    assert stream.done["status"] == "error"
    line = server.wait_for_line("HTTP 404")
    assert " WARNING " in line
    assert "[trace-upstream-404]" in line
    assert "model test-model" in line
    assert "bad key: Bearer [redacted]" in line
    assert sum("HTTP 404" in logged for logged in server.lines) == 1
