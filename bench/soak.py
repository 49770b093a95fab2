"""`make soak`: chatstream under steady load for an hour; RSS, descriptors, tasks stay flat.

The server runs in this process (so its event loop can be asked how many
tasks it holds); the fake upstream and the load generator run in their own
processes, so that what is measured here is chatstream alone. Every
`--sample` seconds it records RSS, open file descriptors, asyncio tasks,
live runs and followers; at the end it compares the last tenth of the run
with the first tenth after warm-up and exits non-zero when any figure grew
beyond its allowance.

    python bench/soak.py [--minutes 60] [--streams 100] [--sample 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import wait_for_port  # noqa: E402

# Allowed growth from the start to the end of the soak (after warm-up).
ALLOWED = {"rss_mb": 15.0, "fds": 10, "tasks": 10}


def load(port: int, streams: int, seconds: float) -> None:
    """The load generator's own process: `streams` users in a loop, for `seconds`."""
    from loadgen import Target, run_level

    target = Target(
        "chatstream",
        "127.0.0.1",
        port,
        "/api/chat/stream",
        json.dumps({"message": "soak"}).encode(),
        b"event: delta",
    )
    result = asyncio.run(run_level(target, streams, 1.0, seconds))
    print(json.dumps(result.summary()), flush=True)


def rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=60.0)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--sample", type=float, default=30.0)
    parser.add_argument("--load", nargs=3, metavar=("PORT", "STREAMS", "SECONDS"))
    args = parser.parse_args()
    if args.load:
        load(int(args.load[0]), int(args.load[1]), float(args.load[2]))
        return 0

    from alembic import command
    from tests.support.process import free_port
    from tests.support.servers import AppServer

    from chatstream.app import create_app
    from chatstream.cli import alembic_config
    from chatstream.config import Settings

    tmp = tempfile.mkdtemp(prefix="chatstream-soak-")
    database = f"sqlite+aiosqlite:///{tmp}/soak.db"
    command.upgrade(alembic_config(database), "head")  # type: ignore[arg-type]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATSTREAM_", "OPENAI_"))}
    upstream_port = free_port()
    upstream = subprocess.Popen(
        [sys.executable, "-m", "chatstream", "fake-upstream", "--port", str(upstream_port),
         "--tokens", "200", "--interval-ms", "20"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    settings = Settings(
        openai_api_key="soak",
        openai_base_url=f"http://127.0.0.1:{upstream_port}/v1",
        models=["soak"],
        database_url=database,
        spool_dir=Path(tmp) / "spool",
        rate_limit="",
        max_concurrent_runs=100000,
        run_retention_s=30,
        log_level="warning",
    )
    wait_for_port(upstream_port)
    server = AppServer(create_app(settings)).start()
    seconds = args.minutes * 60
    loader = subprocess.Popen(
        [sys.executable, __file__, "--load", str(server.port), str(args.streams), str(seconds)],
        stdout=subprocess.PIPE,
        text=True,
    )

    async def tasks() -> int:
        return len(asyncio.all_tasks())

    samples: list[dict[str, Any]] = []
    started = time.monotonic()
    print(
        f"soak: {args.streams} streams for {args.minutes:g} min, a sample every {args.sample:g} s"
    )
    print("minute  rss_mb  fds  tasks  live_runs  followers", flush=True)
    while True:
        time.sleep(args.sample)
        if loader.poll() is not None:
            break  # the load has ended: what follows is not the soak
        sample = {
            "minute": (time.monotonic() - started) / 60,
            "rss_mb": rss_mb(),
            "fds": len(os.listdir("/proc/self/fd")),
            "tasks": server.call(tasks),
            "live_runs": server.state.registry.live_count,
            "followers": server.state.registry.follower_count,
        }
        samples.append(sample)
        print(
            f"{sample['minute']:6.1f}  {sample['rss_mb']:6.1f}  {sample['fds']:3d}  "
            f"{sample['tasks']:5d}  {sample['live_runs']:9d}  {sample['followers']:9d}",
            flush=True,
        )
    assert loader.stdout is not None
    print("load:", loader.stdout.read().strip())
    server.stop()
    upstream.terminate()
    upstream.wait(10)

    if len(samples) < 10:
        print("soak: too short to judge flatness")
        return 0
    tenth = max(len(samples) // 10, 1)
    first, last = samples[tenth : 2 * tenth], samples[-tenth:]  # after a tenth of warm-up
    failed = False
    for name, allowed in ALLOWED.items():
        before = statistics.fmean(s[name] for s in first)
        after = statistics.fmean(s[name] for s in last)
        verdict = "flat" if after - before <= allowed else "GROWING"
        failed |= verdict != "flat"
        print(f"{name:7s} {before:9.1f} -> {after:9.1f}  (allowed +{allowed:g})  {verdict}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
