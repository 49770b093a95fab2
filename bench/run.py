"""`make bench`: chatstream against the fake upstream, and against a tutorial-style relay.

On one machine: the fake upstream and the load generator share one core,
the server under test gets the other (when there are two). For each level of
concurrent streams it measures, in the same run:

  direct      the load generator talking to the fake upstream itself
  chatstream  the same load through `chatstream serve` (SQLite, full persistence), SSE
  websocket   the same, over `WS /ws/chat`: one socket per user, its chats in turn
  aisdk       the same, as the Vercel AI SDK's UI message stream (`POST /api/ui/chat`)
  v1          the same, as OpenAI chat chunks (`POST /v1/chat/completions`, stream: true)
  responses   the same, as OpenAI Responses events (`POST /v1/responses`, stream: true)
  relay       the same load through a tutorial-style FastAPI + AsyncOpenAI relay
  nometrics   (only when asked for) like chatstream, on a second server started with
              CHATSTREAM_METRICS=false: the cost of metrics is the CPU-s/1k difference
              between the two rows (the chatstream row is scraped every
              --scrape-interval seconds meanwhile, as Prometheus would)
  workers     the chatstream load through `chatstream serve --workers 2` (--workers),
              its runs shared through the machine's Redis (--redis-url, a key prefix of
              its own, removed afterwards); on the same core as the others, so its
              figures say what sharing runs costs, not what a second core would add.
              Its CPU is the parent's and its workers' (Redis's own is not counted)

and prints tokens/s, time to first token added over direct, and CPU-seconds
per 1,000 tokens of each server, as ratios against the upstream's own figures
from the same run (absolute times on shared machines are noise).

    python bench/run.py [--levels 50,200,1000] [--tokens 100] [--interval-ms 20]
    python bench/run.py --levels 200 --targets chatstream,nometrics   # metrics on vs off
    python bench/run.py --targets chatstream,workers --workers 2       # one process vs two
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import urllib.request
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from loadgen import LevelResult, SocketTarget, Target, run_level, run_socket_level
from processes import (
    check_redis,
    cpu_seconds,
    forget_redis_keys,
    free_port,
    pinned,
    rss_mb,
    wait_http,
)
from report import goals_report, report

ROOT = Path(__file__).resolve().parent.parent


class Servers:
    def __init__(
        self, args: argparse.Namespace, server_core: int | None, client_core: int | None
    ) -> None:
        self.tmp = tempfile.TemporaryDirectory(prefix="chatstream-bench-")
        self.procs: list[subprocess.Popen[bytes]] = []
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CHATSTREAM_", "OPENAI_"))}

        self.upstream_port = free_port()
        self.upstream = self._start(
            [sys.executable, "-m", "chatstream", "fake-upstream", "--port", str(self.upstream_port),
             "--tokens", str(args.tokens), "--interval-ms", str(args.interval_ms)],
            env, client_core,
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{self.upstream_port}/_fake/stats")
        upstream_url = f"http://127.0.0.1:{self.upstream_port}/v1"

        self.chatstream_port = free_port()
        cs_env = {
            **env,
            "OPENAI_BASE_URL": upstream_url,
            "OPENAI_API_KEY": "bench",
            "CHATSTREAM_MODELS": "bench",
            "CHATSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{self.tmp.name}/bench.db",
            # A spool of its own: the default (./spool) would carry one run's
            # leftovers into the next bench, which would recover them.
            "CHATSTREAM_SPOOL_DIR": f"{self.tmp.name}/spool",
            "CHATSTREAM_PORT": str(self.chatstream_port),
            "CHATSTREAM_MAX_LIVE_RUNS": "100000",
            "CHATSTREAM_LOG_LEVEL": "warning",
            "CHATSTREAM_RUN_RETENTION_S": "5",
            # Every bench user is 127.0.0.1, one rate-limit bucket: keep the limiter
            # and the concurrent-run cap on (their cost is part of the figures) but
            # far above the load, so that no stream is refused.
            "CHATSTREAM_RATE_LIMIT": "100000000/minute",
            "CHATSTREAM_MAX_CONCURRENT_RUNS": "100000",
        }
        subprocess.run(
            [sys.executable, "-m", "chatstream", "migrate"], env=cs_env, check=True, cwd=ROOT
        )
        self.chatstream = self._start(
            [sys.executable, "-m", "chatstream", "serve"], cs_env, server_core
        )
        wait_http(f"http://127.0.0.1:{self.chatstream_port}/healthz")

        self.nometrics: subprocess.Popen[bytes] | None = None
        self.nometrics_port = 0
        if "nometrics" in args.targets.split(","):
            # The same server with metrics off, on a database of its own.
            self.nometrics_port = free_port()
            nm_env = {
                **cs_env,
                "CHATSTREAM_METRICS": "false",
                "CHATSTREAM_PORT": str(self.nometrics_port),
                "CHATSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{self.tmp.name}/nometrics.db",
                "CHATSTREAM_SPOOL_DIR": f"{self.tmp.name}/nometrics-spool",
            }
            subprocess.run(
                [sys.executable, "-m", "chatstream", "migrate"], env=nm_env, check=True, cwd=ROOT
            )
            self.nometrics = self._start(
                [sys.executable, "-m", "chatstream", "serve"], nm_env, server_core
            )
            wait_http(f"http://127.0.0.1:{self.nometrics_port}/healthz")

        self.workers: subprocess.Popen[bytes] | None = None
        self.workers_port = 0
        self.redis_prefix = f"chatstream-bench-{uuid.uuid4().hex[:12]}"
        if "workers" in args.targets.split(","):
            # The chatstream server with --workers N and runs shared through Redis,
            # on a database and a spool of its own (the parent migrates it).
            self.workers_port = free_port()
            wk_env = {
                **cs_env,
                "CHATSTREAM_PORT": str(self.workers_port),
                "CHATSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{self.tmp.name}/workers.db",
                "CHATSTREAM_SPOOL_DIR": f"{self.tmp.name}/workers-spool",
                "CHATSTREAM_REDIS_URL": args.redis_url,
                "CHATSTREAM_REDIS_KEY_PREFIX": self.redis_prefix,
            }
            self.workers = self._start(
                [sys.executable, "-m", "chatstream", "serve", "--workers", str(args.workers)],
                wk_env,
                server_core,
            )
            wait_http(f"http://127.0.0.1:{self.workers_port}/healthz", timeout=60)

        self.relay_port = free_port()
        self.relay = self._start(
            [sys.executable, "-m", "uvicorn", "tutorial_relay:create_app", "--factory",
             "--port", str(self.relay_port), "--log-level", "warning", "--no-access-log"],
            {**env, "RELAY_UPSTREAM": upstream_url, "PYTHONPATH": str(ROOT / "bench")},
            server_core,
        )  # fmt: skip
        wait_http(f"http://127.0.0.1:{self.relay_port}/docs")

    def _start(
        self, argv: list[str], env: dict[str, str], core: int | None
    ) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(argv, env=env, cwd=ROOT, preexec_fn=pinned(core))
        self.procs.append(proc)
        return proc

    def close(self, args: argparse.Namespace) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(60)
        if self.workers is not None:
            forget_redis_keys(args.redis_url, self.redis_prefix)
        self.tmp.cleanup()


async def measure(
    target: Target | SocketTarget, users: int, args: argparse.Namespace, pids: dict[str, int]
) -> dict[str, Any]:
    """One level against one target, with the CPU of each named process over the window."""
    loop = asyncio.get_running_loop()
    cpu: dict[str, list[float]] = {name: [] for name in pids}

    def sample() -> None:
        for name, pid in pids.items():
            cpu[name].append(cpu_seconds(pid))

    loop.call_later(args.warmup, sample)
    loop.call_later(args.warmup + args.window, sample)
    peaks: dict[str, float] = dict.fromkeys(pids, 0.0)

    def sample_rss() -> None:
        for name, pid in pids.items():
            peaks[name] = max(peaks[name], rss_mb(pid))
        loop.call_later(1.0, sample_rss)

    sample_rss()
    scraper = None
    if (
        target.name in ("chatstream", "websocket", "workers", "aisdk", "v1", "responses")
        and args.scrape_interval > 0
    ):
        scraper = asyncio.create_task(scrape_metrics(target.port, args.scrape_interval))
    try:
        if isinstance(target, SocketTarget):
            result: LevelResult = await run_socket_level(target, users, args.warmup, args.window)
        else:
            result = await run_level(target, users, args.warmup, args.window)
    finally:
        if scraper is not None:
            scraper.cancel()
    summary = result.summary()
    for name, (before, after) in cpu.items():
        used = after - before
        summary[f"{name}_cpu_s"] = used
        summary[f"{name}_cpu_per_1k_tokens"] = (
            used / result.tokens * 1000 if result.tokens else float("nan")
        )
    for name, pid in pids.items():
        summary[f"{name}_rss_mb"] = rss_mb(pid)
        summary[f"{name}_peak_rss_mb"] = max(peaks[name], summary[f"{name}_rss_mb"])
    return summary


async def scrape_metrics(port: int, interval_s: float) -> None:
    """What Prometheus does to a server with metrics on: `GET /metrics` every so often."""
    url = f"http://127.0.0.1:{port}/metrics"

    def get() -> None:
        with urllib.request.urlopen(url, timeout=10) as answer:
            answer.read()

    while True:
        await asyncio.to_thread(get)
        await asyncio.sleep(interval_s)


def targets(servers: Servers) -> dict[str, Target | SocketTarget]:
    direct_body = json.dumps(
        {"model": "bench", "stream": True, "messages": [{"role": "user", "content": "bench"}]}
    ).encode()
    return {
        "direct": Target("direct", "127.0.0.1", servers.upstream_port, "/v1/chat/completions",
                         direct_body, b'"delta":{"content"'),
        "chatstream": Target("chatstream", "127.0.0.1", servers.chatstream_port, "/api/chat/stream",
                             b'{"message":"bench"}', b"event: delta"),
        "websocket": SocketTarget("websocket", "127.0.0.1", servers.chatstream_port, "/ws/chat",
                                  b'{"type":"chat","request_id":"b","message":"bench"}'),
        "relay": Target("relay", "127.0.0.1", servers.relay_port, "/relay",
                        b'{"message":"bench"}', b'{"text"'),
        "nometrics": Target("nometrics", "127.0.0.1", servers.nometrics_port,
                            "/api/chat/stream", b'{"message":"bench"}', b"event: delta"),
        "workers": Target("workers", "127.0.0.1", servers.workers_port, "/api/chat/stream",
                          b'{"message":"bench"}', b"event: delta"),
        "aisdk": Target("aisdk", "127.0.0.1", servers.chatstream_port, "/api/ui/chat",
                        AI_SDK_BODY, b'"type":"text-delta"', unique=b"@chat@"),
        "v1": Target("v1", "127.0.0.1", servers.chatstream_port, "/v1/chat/completions",
                     direct_body, b'"delta":{"content"'),
        "responses": Target("responses", "127.0.0.1", servers.chatstream_port, "/v1/responses",
                            b'{"model":"bench","input":"bench","stream":true}',
                            b'"type":"response.output_text.delta"'),
    }  # fmt: skip


# The body `useChat` sends (DefaultChatTransport), one new chat per stream.
AI_SDK_BODY = json.dumps(
    {
        "id": "@chat@",
        "trigger": "submit-message",
        "messages": [{"id": "m1", "role": "user", "parts": [{"type": "text", "text": "bench"}]}],
    }
).encode()


BURST = "[[fake tokens=500 interval_ms=0]] bench"  # answers sent as fast as the upstream can
SHORT = "[[fake tokens=5]] bench"  # many streams one after another: time to first token


def scripted_targets(servers: Servers, message: str) -> dict[str, Target]:
    """Upstream and chatstream, with answers scripted by `message`."""
    direct_body = json.dumps(
        {"model": "bench", "stream": True, "messages": [{"role": "user", "content": message}]}
    ).encode()
    return {
        "direct": Target("direct", "127.0.0.1", servers.upstream_port, "/v1/chat/completions",
                         direct_body, b'"delta":{"content"'),
        "chatstream": Target("chatstream", "127.0.0.1", servers.chatstream_port,
                             "/api/chat/stream", json.dumps({"message": message}).encode(),
                             b"event: delta"),
    }  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--levels", default="50,200,1000")
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--interval-ms", type=float, default=20.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=10.0)
    parser.add_argument(
        "--targets",
        default="chatstream,workers,websocket,aisdk,v1,responses,relay",
        help="add nometrics: metrics on vs off; workers needs Redis (--redis-url)",
    )
    parser.add_argument(
        "--scrape-interval", type=float, default=5.0, help="GET /metrics every N s (0: never)"
    )
    parser.add_argument("--workers", type=int, default=2, help="processes of the workers target")
    parser.add_argument(
        "--redis-url", default="redis://127.0.0.1:6379/0", help="the workers target's Redis"
    )
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "latest.json"))
    parser.add_argument(
        "--no-goals",
        dest="goals",
        action="store_false",
        help="skip the sequential and bursty scenarios of the performance goals",
    )
    args = parser.parse_args()

    cores = sorted(os.sched_getaffinity(0))
    server_core, client_core = (cores[0], cores[1]) if len(cores) >= 2 else (None, None)
    if client_core is not None:
        os.sched_setaffinity(0, {client_core})
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass

    if "workers" in args.targets.split(","):
        check_redis(args.redis_url)  # before anything is started
    servers = Servers(args, server_core, client_core)
    try:
        all_targets = targets(servers)
        wanted = ["direct", *[t for t in args.targets.split(",") if t]]
        pids = {
            "chatstream": servers.chatstream.pid,
            "websocket": servers.chatstream.pid,
            "aisdk": servers.chatstream.pid,
            "v1": servers.chatstream.pid,
            "responses": servers.chatstream.pid,
            "relay": servers.relay.pid,
        }
        if servers.nometrics is not None:
            pids["nometrics"] = servers.nometrics.pid
        if servers.workers is not None:
            pids["workers"] = servers.workers.pid
        results: dict[int, dict[str, dict[str, Any]]] = {}
        for users in (int(level) for level in args.levels.split(",")):
            results[users] = {}
            for name in wanted:
                measured = {"upstream": servers.upstream.pid}
                if name in pids:
                    measured[name] = pids[name]
                results[users][name] = asyncio.run(
                    measure(all_targets[name], users, args, measured)
                )
                print(f"  {users:>5} streams  {name:<10} done", file=sys.stderr, flush=True)
        extra: dict[str, dict[str, dict[str, Any]]] = {}
        if args.goals:
            scenarios = {
                "sequential": (1, scripted_targets(servers, SHORT)),
                "bursty": (50, scripted_targets(servers, BURST)),
            }
            for scenario, (users, chosen) in scenarios.items():
                extra[scenario] = {}
                for name in ("direct", "chatstream"):
                    measured = {"upstream": servers.upstream.pid}
                    if name == "chatstream":
                        measured[name] = servers.chatstream.pid
                    extra[scenario][name] = asyncio.run(
                        measure(chosen[name], users, args, measured)
                    )
                print(f"  {scenario:<10} done", file=sys.stderr, flush=True)
    finally:
        servers.close(args)

    text = report(results, args) + (goals_report(results, extra) if args.goals else "")
    print(text)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(
        json.dumps({"args": vars(args), "results": results, "goals": extra}, indent=2)
    )
    failed = sum(
        row["failures"]
        for by_target in [*results.values(), *extra.values()]
        for row in by_target.values()
    )
    if failed:
        # A refused or broken stream costs next to nothing, so the figures above
        # would flatter the server: say so, and fail.
        print(f"\n{failed} streams failed: these figures do not measure the server.")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
