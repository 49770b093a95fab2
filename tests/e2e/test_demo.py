"""`make run` on a machine with no model server: the real process, on the demo upstream."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.process import ServeProcess, clean_env, free_port, migrate
from tests.support.sse import read_stream


def test_serve_with_no_upstream_configured_streams_the_demo(tmp_path: Path) -> None:
    env = clean_env(
        CHATSTREAM_DATABASE_URL=f"sqlite+aiosqlite:///{tmp_path}/chatstream.db",
        CHATSTREAM_PORT=str(free_port()),
    )
    migrate(env)
    server = ServeProcess(env, cwd=tmp_path)
    try:
        server.wait_ready()
        assert "offline demo upstream" in server.log_text()
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            models = client.get("/api/models").json()
            # The demo says what it is, under its own name, not a real model's.
            assert models == {"default": "demo", "demo": True, "items": [{"id": "demo"}]}
            with client.stream("POST", "/api/chat/stream", json={"message": "hello"}) as response:
                stream = read_stream(response)
            assert stream.events[0].data["model"] == "demo"
            assert stream.done["status"] == "complete"
            assert stream.types.count("delta") > 20
            assert "demo" in stream.text
            session_id = stream.events[0].data["session_id"]
            stored = client.get(f"/api/sessions/{session_id}/messages").json()["items"]
            assert stored[-1]["content"] == stream.text
            assert stored[-1]["model"] == "demo"
            # The demo takes no orders from what its user types ([[fake …]] is for tests).
            with client.stream(
                "POST",
                "/api/chat/stream",
                json={"message": "[[fake status=500 tokens=1]] break", "session_id": session_id},
            ) as response:
                ordered = read_stream(response)
            assert ordered.done["status"] == "complete" and ordered.text == stream.text
    finally:
        # uvicorn re-raises the SIGTERM it caught once shutdown is done.
        assert server.stop() in (0, -15)
    assert "Application shutdown complete" in server.log_text()
