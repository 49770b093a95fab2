"""Memory per live stream and per ended run, measured with tracemalloc (a benchmark, not a test).

chatstream runs in this process (real uvicorn, real SQLite file), so that
tracemalloc sees only its memory: the fake upstream and the clients run in
processes of their own. N clients start streams that stall mid-answer (each
has received its first tokens): the Python memory they added here, divided
by N, is a live stream's cost. Then the streams are released and end; what
stays while the ended runs are retained (for CHATSTREAM_RUN_RETENTION_S),
divided by N, is an ended run's cost.

    python bench/memory.py [--streams 500] [--tokens 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import wait_for_port  # noqa: E402


async def open_streams(port: int, count: int, message: str, first_events: int) -> list[object]:
    """`count` SSE streams, each read until `first_events` events arrived, then left open."""
    body = json.dumps({"message": message}).encode()
    request = (
        b"POST /api/chat/stream HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%b" % (len(body), body)
    )

    async def one() -> object:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        seen = b""
        while seen.count(b"\nid: ") + seen.startswith(b"id: ") < first_events:
            seen += await reader.read(65536)
            if b"id: " not in seen and len(seen) > 4096 and b"\r\n\r\n" in seen:
                seen = seen.split(b"\r\n\r\n", 1)[1]
        return reader, writer

    return list(await asyncio.gather(*(one() for _ in range(count))))


def clients(port: int, count: int, message: str) -> None:
    """The clients' own process: open the streams, say so, hold them until told to close."""

    async def hold() -> None:
        opened = await open_streams(port, count, message, 3)
        # Read on, as a real client does: what is measured is the server's memory.
        drains = [asyncio.create_task(_drain(reader)) for reader, _ in opened]  # type: ignore[misc]
        print("open", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        for task in drains:
            task.cancel()
        for _, writer in opened:  # type: ignore[misc]
            writer.close()
        await asyncio.sleep(0.2)

    asyncio.run(hold())


async def _drain(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--clients", nargs=3, metavar=("PORT", "COUNT", "MESSAGE"))
    parser.add_argument("--trace", action="store_true", help="where the top allocations come from")
    args = parser.parse_args()
    if args.clients:
        clients(int(args.clients[0]), int(args.clients[1]), args.clients[2])
        return 0

    from alembic import command
    from tests.support.process import free_port
    from tests.support.servers import AppServer

    from chatstream.app import create_app
    from chatstream.cli import alembic_config
    from chatstream.config import Settings

    tmp = tempfile.mkdtemp(prefix="chatstream-memory-")
    database = f"sqlite+aiosqlite:///{tmp}/memory.db"
    command.upgrade(alembic_config(database), "head")  # type: ignore[arg-type]
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "chatstream", "fake-upstream", "--port", str(upstream_port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(upstream_port)
    settings = Settings(
        openai_api_key="memory",
        openai_base_url=f"http://127.0.0.1:{upstream_port}/v1",
        models=["memory"],
        database_url=database,
        spool_dir=Path(tmp) / "spool",
        rate_limit="",
        max_concurrent_runs=100000,
        run_retention_s=3600,
        log_level="warning",
    )
    server = AppServer(create_app(settings)).start()
    half = args.tokens // 2
    message = f"[[fake tokens={args.tokens} interval_ms=5 stall_after={half}]] memory"

    tracemalloc.start(12)
    gc.collect()
    baseline = tracemalloc.take_snapshot()
    holder = subprocess.Popen(
        [sys.executable, __file__, "--clients", str(server.port), str(args.streams), message],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdin is not None
    assert holder.stdout.readline().strip() == "open"
    gc.collect()
    live = tracemalloc.take_snapshot()
    live_bytes = sum(stat.size_diff for stat in live.compare_to(baseline, "filename"))
    live_top = live.compare_to(baseline, "lineno")[:12]
    if "--trace" in sys.argv:
        for stat in live.compare_to(baseline, "traceback")[:3]:
            print(stat.size_diff // args.streams, "\n".join(stat.traceback.format()[-14:]))

    with urllib.request.urlopen(f"http://127.0.0.1:{upstream_port}/_fake/release", b""):
        pass
    deadline = time.monotonic() + 120
    while server.state.registry.live_count and time.monotonic() < deadline:
        time.sleep(0.1)
    holder.stdin.write("close\n")
    holder.stdin.flush()
    holder.wait(30)
    deadline = time.monotonic() + 30
    while server.state.registry.follower_count and time.monotonic() < deadline:
        time.sleep(0.1)
    gc.collect()
    ended = tracemalloc.take_snapshot()
    ended_bytes = sum(stat.size_diff for stat in ended.compare_to(baseline, "filename"))
    top = ended.compare_to(baseline, "lineno")[:8]
    tracemalloc.stop()
    server.stop()
    upstream.terminate()
    upstream.wait(10)

    n = args.streams
    print(f"{n} streams of {args.tokens} tokens, stalled after {half}:")
    print(f"  live stream (half its answer streamed): {live_bytes / n / 1024:7.1f} KB each")
    print(f"  ended run, retained for replay:          {ended_bytes / n / 1024:7.1f} KB each")
    print("  where a live stream's memory is (top lines):")
    for stat in live_top:
        print(f"    {stat.size_diff / n:8.0f} B/stream  {stat.traceback[0]}")
    print("  where the ended runs' memory is (top lines):")
    for stat in top:
        print(f"    {stat.size_diff / n:8.0f} B/run  {stat.traceback[0]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
