"""`chatstream serve` as a real subprocess, for tests about the process itself."""

from __future__ import annotations

import os
import selectors
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.sentinels import WATCH

READY_LINE = "Application startup complete"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**values: str) -> dict[str, str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("CHATSTREAM_", "OPENAI_"))
    }
    env.update(values)
    return env


def migrate(env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "-m", "chatstream", "migrate"],
        env=env,
        check=True,
        capture_output=True,
        timeout=60,
    )


class ServeProcess:
    """`python -m chatstream serve`; its log is collected line by line."""

    def __init__(self, env: dict[str, str], cwd: Path) -> None:
        self.port = int(env["CHATSTREAM_PORT"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatstream", "serve"],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_for_line(self, needle: str, timeout: float = 30.0) -> str:
        """Block until the server logs a line containing `needle` (or fail at the deadline)."""
        for line in self.lines:
            if needle in line:
                return line
        assert self.process.stdout is not None
        deadline = time.monotonic() + timeout
        with selectors.DefaultSelector() as selector:
            selector.register(self.process.stdout, selectors.EVENT_READ)
            while (remaining := deadline - time.monotonic()) > 0:
                if not selector.select(remaining):
                    break
                line = self.process.stdout.readline()
                if not line:
                    break
                self.lines.append(line.rstrip("\n"))
                if needle in line:
                    return line
        raise AssertionError(f"server never logged {needle!r}; log:\n" + "\n".join(self.lines))

    def wait_ready(self) -> None:
        self.wait_for_line(READY_LINE)

    def log_text(self) -> str:
        stdout = self.process.stdout
        if stdout is not None and not stdout.closed and self.process.poll() is not None:
            self.lines.extend(line.rstrip("\n") for line in stdout.readlines())
        return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        WATCH.check(self.log_text(), "server process log")
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code
