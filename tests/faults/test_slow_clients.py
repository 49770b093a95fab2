"""A hundred clients reading one byte a second slow down nobody and fill no memory."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from pathlib import Path

import httpx

from tests.faults.conftest import ServeFactory
from tests.support.sse import iter_sse

SLOW_CLIENTS = 100
ANSWER = "[[fake tokens=400 token_chars=500]] a big answer"  # 200 KB each
HUGE_ANSWER = "[[fake tokens=2000 token_chars=4000]] more than any socket buffer"  # 8 MB


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


class SlowReader(threading.Thread):
    """A raw client with a tiny receive buffer that reads one byte a second."""

    def __init__(self, port: int, stop: threading.Event, message: str = ANSWER) -> None:
        super().__init__(daemon=True)
        self._stop = stop
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        body = json.dumps({"message": message}).encode()
        self.sock.sendall(
            b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
        )
        self.dropped = threading.Event()

    def run(self) -> None:
        self.sock.settimeout(1.0)
        while not self._stop.is_set():
            try:
                if not self.sock.recv(1):
                    self.dropped.set()
                    return
            except TimeoutError:
                pass
            except OSError:
                self.dropped.set()
                return
            self._stop.wait(1.0)  # the pace of this client, not a wait for the server

    def close(self) -> None:
        self.sock.close()


def test_slow_readers_slow_nobody_and_fill_no_memory(
    serve: ServeFactory, database_file: Path
) -> None:
    server = serve()
    pid = server.process.pid
    httpx.post(
        f"{server.base_url}/api/chat", json={"message": "[[fake tokens=5]] warm up"}, timeout=30
    )
    baseline = rss_mb(pid)

    stop = threading.Event()
    readers = [SlowReader(server.port, stop) for _ in range(SLOW_CLIENTS)]
    for reader in readers:
        reader.start()
    try:
        # Meanwhile a normal client streams at 50 tokens/s.
        gaps: list[float] = []
        with (
            httpx.Client(base_url=server.base_url, timeout=30) as client,
            client.stream(
                "POST",
                "/api/chat/stream",
                json={"message": "[[fake tokens=100 interval_ms=20]] hi"},
            ) as response,
        ):
            last = None
            for item in iter_sse(response):
                if isinstance(item, str):
                    continue
                now = time.monotonic()
                if item.type == "delta":
                    if last is not None:
                        gaps.append(now - last)
                    last = now
                elif item.type == "done":
                    assert item.data["status"] == "complete"
        assert len(gaps) == 99
        assert max(gaps) < 1.0, f"a token waited {max(gaps):.2f} s"

        # The slow readers' runs go on without them and are saved whole.
        deadline = time.monotonic() + 60
        while completed(database_file, 400 * 500) < SLOW_CLIENTS:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        peak = rss_mb(pid)
    finally:
        stop.set()
        for reader in readers:
            reader.close()
    # 100 answers of 200 KB are 20 MB of text; what a slow reader has not read
    # waits in its socket buffers, not in chatstream.
    assert peak - baseline < 150, (baseline, peak)


def test_a_client_whose_sends_stall_is_dropped_and_its_run_completes(
    serve: ServeFactory, database_file: Path
) -> None:
    server = serve(send_timeout_s="1")
    stop = threading.Event()
    readers = [SlowReader(server.port, stop, HUGE_ANSWER) for _ in range(3)]
    for reader in readers:
        reader.start()
    try:
        server.wait_for_line("dropped an event stream whose client stopped reading", timeout=30)
        deadline = time.monotonic() + 30
        while server.log_text().count("dropped an event stream whose client stopped reading") < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        deadline = time.monotonic() + 60
        while completed(database_file, 2000 * 4000) < 3:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop.set()
        for reader in readers:
            reader.close()
    # The other clients were served all along.
    assert httpx.get(f"{server.base_url}/healthz", timeout=5).status_code == 200


def completed(database: Path, length: int) -> int:
    with sqlite3.connect(database) as db:
        return int(
            db.execute(
                "select count(*) from messages where role = 'assistant' and status = 'complete' "
                "and length(content) = ?",
                (length,),
            ).fetchone()[0]
        )
