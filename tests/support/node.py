"""Node.js client scripts (tests/js/*.mjs), run against a real server.

Each script takes one JSON argument and prints JSON lines: progress events
while it runs, and a last `{"event": "result", …}`. A reader thread puts
the lines on a queue, so a test waits for the next one with a deadline,
never with a sleep.

The client libraries are installed by `make test` (`npm ci --prefix
tests/js`) where Node is present. Without them these tests are
skipped, or fail under CHATSTREAM_TEST_REQUIRE_SERVICES=1 (as `.ci/run`
sets): CI must never pass without having run them.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

CLIENTS_DIR = Path(__file__).resolve().parents[1] / "js"
NODE_MAJOR = 20


def node_executable() -> str:
    """The `node` binary, with the pinned client libraries installed; else skip (or fail)."""
    node = shutil.which("node")
    problem = None
    if node is None:
        problem = "Node.js is not installed"
    else:
        version = subprocess.run(
            [node, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        major = int(version.lstrip("v").split(".")[0] or 0) if version else 0
        if major < NODE_MAJOR:
            problem = f"Node.js {version or '?'} is older than {NODE_MAJOR}"
        elif not (CLIENTS_DIR / "node_modules" / "ai" / "package.json").is_file():
            problem = "the Node client libraries are not installed (make test: npm ci)"
    if problem is None:
        assert node is not None
        return node
    if os.environ.get("CHATSTREAM_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{problem}, and this run requires the client protocol tests")
    pytest.skip(problem)


class NodeScript:
    """One running client script."""

    def __init__(self, node: str, script: str, options: dict[str, Any]) -> None:
        self._process = subprocess.Popen(
            [node, str(CLIENTS_DIR / script), json.dumps(options)],
            cwd=CLIENTS_DIR,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def next_event(self, timeout: float = 20.0) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            self._process.kill()
            raise AssertionError(f"no output from the client within {timeout} s") from None
        if line is None:
            self._process.wait(timeout)
            stderr = self._process.stderr.read() if self._process.stderr else ""
            raise AssertionError(f"the client exited ({self._process.returncode}): {stderr}")
        event: dict[str, Any] = json.loads(line)
        return event

    def expect(self, kind: str, timeout: float = 20.0) -> dict[str, Any]:
        event = self.next_event(timeout)
        assert event.get("event") == kind, event
        return event

    def result(self, timeout: float = 30.0) -> dict[str, Any]:
        event = self.expect("result", timeout)
        assert self._process.wait(timeout) == 0
        return event

    def close(self) -> None:
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        for stream in (self._process.stdout, self._process.stderr):
            if stream is not None:
                stream.close()


def run_script(node: str, script: str, options: dict[str, Any]) -> dict[str, Any]:
    """Run a client script to its end; its result."""
    process = NodeScript(node, script, options)
    try:
        return process.result()
    finally:
        process.close()
