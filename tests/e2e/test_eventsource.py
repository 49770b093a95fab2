"""A browser-style `EventSource` (the `eventsource` npm package) stops at an ended run."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.servers import AppServer
from tests.support.sse import read_stream

JS = Path(__file__).resolve().parents[1] / "js"


def node_client() -> str:
    node = shutil.which("node")
    if node is None or not (JS / "node_modules" / "eventsource").is_dir():
        if os.environ.get("CHATSTREAM_TEST_REQUIRE_SERVICES") == "1":
            pytest.fail("node and tests/js/node_modules are required (make test installs them)")
        pytest.skip("node or tests/js/node_modules missing (make test installs them)")
    return node


def follow(url: str) -> dict[str, Any]:
    result = subprocess.run(
        [node_client(), str(JS / "follow_with_eventsource.mjs"), url, "20000"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return dict(json.loads(result.stdout))


def test_eventsource_stops_reconnecting_once_the_run_has_ended(server: AppServer) -> None:
    with (
        httpx.Client(base_url=server.base_url, timeout=20) as client,
        client.stream("POST", "/api/chat/stream", json={"message": "[[fake tokens=4]] hi"}) as sent,
    ):
        original = read_stream(sent)
    message_id = original.done["message_id"]
    last_id = str(original.events[-1].id)

    seen = follow(f"{server.base_url}/api/runs/{message_id}/events")

    # It read the whole run once...
    assert [e["type"] for e in seen["events"]] == original.types
    assert "".join(e["data"]["text"] for e in seen["events"] if e["type"] == "delta") == (
        original.text
    )
    # ...then reconnected once, as EventSource does after any stream ends, with the
    # last id it saw; got 204; and closed for good (readyState CLOSED = 2).
    assert seen["requests"] == [
        {"lastEventId": None, "status": 200},
        {"lastEventId": last_id, "status": 204},
    ]
    assert seen["readyState"] == 2


def test_nothing_after_last_event_id_on_an_ended_run_is_204(client: httpx.Client) -> None:
    with client.stream("POST", "/api/chat/stream", json={"message": "[[fake tokens=2]] hi"}) as r:
        done = read_stream(r).events[-1]
    url = f"/api/runs/{done.data['message_id']}/events"
    assert client.get(url, headers={"Last-Event-ID": str(done.id)}).status_code == 204
    assert client.get(url, params={"after": done.id}).status_code == 204
    # Something left after the given id: the rest, as a stream.
    rest = client.get(url, headers={"Last-Event-ID": str(done.id - 1)})
    assert rest.status_code == 200 and "event: done" in rest.text
