"""What WebSocket clients that stop reading cost the server, and how long they cost it
(a benchmark, not a test).

`chatstream serve` runs as its own process, with the fake upstream in another.
One client starts a run with a large answer and reads it whole (the answer is
then the run's, retained for replay). N raw clients, with tiny receive
buffers, each open a socket, `resume` that run, and never read again. Once
nothing moves any more, the server's RSS growth divided by N is what one
stuck client costs this process, and the bytes the kernel queues on the
server's side of its connection are what it costs the kernel. Then, at
CHATSTREAM_SEND_TIMEOUT_S, the server drops them: how long until their
connections are gone, and what is left.

    python bench/ws_stuck.py [--clients 50] [--send-timeout 10]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from loadgen import wait_for_port  # noqa: E402

ANSWER = "[[fake tokens=1000 token_chars=4000]] more than a socket's buffers"  # 4 MB


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def server_side_queues(port: int) -> list[int]:
    """The send queue (bytes) of each established connection the server holds on `port`."""
    queues = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                queues.append(int(fields[4].split(":")[0], 16))
    return queues


def frame(text: str) -> bytes:
    """One masked text frame, as a client sends it."""
    payload = text.encode()
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    size = len(payload)
    head = bytes([0x81, 0x80 | size]) if size < 126 else bytes([0x81, 0xFE]) + size.to_bytes(2)
    return head + mask + masked


def open_raw(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(1)  # byte by byte: nothing after the headers is read here
    assert head.startswith(b"HTTP/1.1 101"), head
    return sock


def run_once(port: int) -> str:
    """Start a run with a large answer, read it whole; its message id."""
    from websockets.sync.client import connect

    with connect(f"ws://127.0.0.1:{port}/ws/chat", max_size=None) as ws:
        ws.send(json.dumps({"type": "chat", "request_id": "r", "message": ANSWER}))
        message_id = None
        while True:
            event = json.loads(ws.recv(60))
            message_id = message_id or event.get("message_id")
            if event["type"] == "done":
                assert event["status"] == "complete", event
                return str(message_id)


def settle(port: int, count: int, timeout: float) -> list[int]:
    """Wait until the server's `count` connections queue the same as a second ago."""
    deadline = time.monotonic() + timeout
    last: list[int] = []
    while time.monotonic() < deadline:
        now = sorted(server_side_queues(port))
        if len(now) >= count and now == last:
            return now
        last = now
        time.sleep(1.0)
    raise RuntimeError("the stuck connections never settled")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--send-timeout", type=float, default=10.0)
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="chatstream-ws-stuck-"))
    upstream_port, port = _free_port(), _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("CHATSTREAM_", "OPENAI_"))},
        "OPENAI_API_KEY": "bench",
        "OPENAI_BASE_URL": f"http://127.0.0.1:{upstream_port}/v1",
        "CHATSTREAM_MODELS": "bench",
        "CHATSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{tmp}/bench.db",
        "CHATSTREAM_SPOOL_DIR": str(tmp / "spool"),
        "CHATSTREAM_PORT": str(port),
        "CHATSTREAM_RATE_LIMIT": "",
        "CHATSTREAM_LOG_LEVEL": "warning",
        "CHATSTREAM_RUN_RETENTION_S": "3600",
        "CHATSTREAM_SEND_TIMEOUT_S": str(args.send_timeout),
    }
    processes = [
        subprocess.Popen(
            [sys.executable, "-m", "chatstream", "fake-upstream", "--port", str(upstream_port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    ]
    clients: list[socket.socket] = []
    try:
        subprocess.run([sys.executable, "-m", "chatstream", "migrate"], env=env, check=True)
        server = subprocess.Popen(
            [sys.executable, "-m", "chatstream", "serve"],
            env=env,
            cwd=tmp,
            stderr=subprocess.DEVNULL,
        )
        processes.append(server)
        wait_for_port(upstream_port)
        wait_for_port(port)
        message_id = run_once(port)
        run_once(port)  # warm: every code path the stuck clients take has run once
        time.sleep(1.0)
        before = rss_kb(server.pid)

        resume = frame(json.dumps({"type": "resume", "message_id": message_id}))
        for _ in range(args.clients):
            sock = open_raw(port, rcvbuf=4096)
            sock.sendall(resume)
            clients.append(sock)
        queues = settle(port, args.clients, timeout=60)
        stuck_at = time.monotonic()
        stuck = rss_kb(server.pid)

        deadline = stuck_at + args.send_timeout + 30
        while server_side_queues(port) and time.monotonic() < deadline:
            time.sleep(0.1)
        gone_after = time.monotonic() - stuck_at
        left = server_side_queues(port)
        after = rss_kb(server.pid)
    finally:
        for sock in clients:
            sock.close()
        for process in reversed(processes):
            process.terminate()
            process.wait(10)

    n = args.clients
    timeout = args.send_timeout
    print(f"{n} WebSocket clients stuck on one 4 MB answer (CHATSTREAM_SEND_TIMEOUT_S={timeout}):")
    print(f"  server RSS before:                 {before / 1024:8.1f} MB")
    print(f"  server RSS with them stuck:        {stuck / 1024:8.1f} MB")
    print(f"    per stuck client, this process:  {(stuck - before) / n:8.1f} KB")
    print(f"    per stuck client, kernel queue:  {sum(queues) / n / 1024:8.1f} KB (server side)")
    print(f"  connections gone {gone_after:.1f} s after they stopped moving ({len(left)} left)")
    print(f"  server RSS after they were dropped: {after / 1024:7.1f} MB")
    return 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


if __name__ == "__main__":
    raise SystemExit(main())
