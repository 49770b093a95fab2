"""`chatstream serve` as a real subprocess, for tests about the process itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from tests.support.sentinels import WATCH

READY_LINE = "Uvicorn running on"  # logged once the socket is bound, after the lifespan


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
    """`python -m chatstream serve`; a thread reads its log as it comes.

    (Unread, a full pipe would block the server on its next log line.)
    """

    def __init__(
        self,
        env: dict[str, str],
        cwd: Path,
        args: Sequence[str] = (),
        ready_line: str = READY_LINE,
    ) -> None:
        self.port = int(env["CHATSTREAM_PORT"])
        self.ready_line = ready_line
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}"
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._eof = False
        self.process = subprocess.Popen(
            [sys.executable, "-m", "chatstream", "serve", *args],
            env=env,
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True, name="serve-log")
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def wait_for_line(self, needle: str, timeout: float = 30.0) -> str:
        """Block until the server logs a line containing `needle` (or fail at the deadline)."""

        def found() -> str | None:
            return next((line for line in self.lines if needle in line), None)

        with self._changed:
            self._changed.wait_for(lambda: found() is not None or self._eof, timeout)
            line = found()
        if line is None:
            raise AssertionError(f"server never logged {needle!r}; log:\n" + self.log_text())
        return line

    def wait_ready(self) -> None:
        self.wait_for_line(self.ready_line)

    def log_text(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        code = self.process.wait(timeout)
        self._reader.join(10)
        WATCH.check(self.log_text(), "server process log")
        if self.process.stdout is not None:
            self.process.stdout.close()
        return code
