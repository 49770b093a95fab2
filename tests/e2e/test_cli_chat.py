"""`chatstream chat`, the real command, against a real server: one-shot and interactive (a pty)."""

from __future__ import annotations

import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.support.process import clean_env
from tests.support.sentinels import SENTINEL_JWT_SECRET, TOKEN_ALICE
from tests.support.servers import AppServer, FakeUpstreamThread
from tests.support.wait import wait_until

CHAT = [sys.executable, "-m", "chatstream", "chat"]


def run_chat(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CHAT, *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def one_line(stderr: str, needle: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if needle in line]
    assert len(lines) == 1, stderr
    return lines[0]


def messages(client: httpx.Client, session_id: str) -> list[dict[str, object]]:
    items: list[dict[str, object]] = client.get(f"/api/sessions/{session_id}/messages").json()[
        "items"
    ]
    return items


def session_of(stderr: str) -> str:
    found = re.search(r"session ([0-9a-f-]{36})", stderr)
    assert found, stderr
    return found.group(1)


def test_one_message_streams_the_answer_to_stdout(server: AppServer, client: httpx.Client) -> None:
    result = run_chat("--url", server.base_url, "[[fake tokens=5]] hello")
    assert result.returncode == 0, result.stderr
    session = session_of(result.stderr)
    stored = messages(client, session)
    # stdout is the answer and nothing else; the session id went to stderr.
    assert result.stdout == f"{stored[-1]['content']}\n"
    # --session continues it (history kept by the server), --model picks the model.
    again = run_chat(
        "--url", server.base_url, "--session", session, "--model", "other-model", "and now?"
    )
    assert again.returncode == 0, again.stderr
    stored = messages(client, session)
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[-1]["model"] == "other-model"
    assert again.stdout == f"{stored[-1]['content']}\n"


def test_a_failed_answer_is_one_line_on_stderr_and_exit_status_1(server: AppServer) -> None:
    result = run_chat("--url", server.base_url, "[[fake status=500]] hi")
    assert result.returncode == 1
    assert result.stdout == ""
    line = one_line(result.stderr, "[upstream_error]")
    assert "The model server failed (HTTP 500): emulated failure." in line


def test_an_unreachable_server_is_one_line_and_exit_status_3() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_chat("--url", f"http://127.0.0.1:{port}", "hi")
    assert result.returncode == 3
    line = one_line(result.stderr, f"cannot reach the server at http://127.0.0.1:{port}")
    assert "connection refused" in line


def test_the_token_comes_from_the_flag_or_the_environment(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)
    refused = run_chat("--url", server.base_url, "hi")
    assert refused.returncode == 1
    line = one_line(refused.stderr, "[unauthorized]")
    assert "--token or set CHATSTREAM_TOKEN" in line
    by_flag = run_chat("--url", server.base_url, "--token", TOKEN_ALICE, "[[fake tokens=2]] hi")
    assert by_flag.returncode == 0, by_flag.stderr
    by_env = run_chat(
        "--url", server.base_url, "[[fake tokens=2]] hi", CHATSTREAM_TOKEN=TOKEN_ALICE
    )
    assert by_env.returncode == 0, by_env.stderr
    assert TOKEN_ALICE not in by_env.stdout + by_env.stderr


@pytest.mark.parametrize("interactive", [False, True], ids=["one message", "interactive"])
def test_a_reader_that_stops_reading_ends_the_client_quietly(
    server: AppServer, fake: FakeUpstreamThread, interactive: bool
) -> None:
    """`chatstream chat … | head`: once the pipe is closed, no traceback; 141, as `cat` ends."""
    message = "[[fake tokens=40 stall_after=3]] hi"
    process = subprocess.Popen(
        [*CHAT, "--url", server.base_url, *([] if interactive else [message])],
        env=clean_env(),
        stdin=subprocess.PIPE if interactive else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert process.stdout is not None and process.stderr is not None
    try:
        if interactive:
            assert process.stdin is not None
            process.stdin.write(f"{message}\n".encode())
            process.stdin.close()
        # The head of the answer is read, then the reader goes away, as `head` does.
        ready, _, _ = select.select([process.stdout], [], [], 20)
        assert ready, "the answer never began"
        assert os.read(process.stdout.fileno(), 4096)
        process.stdout.close()
        fake.fake.release(wait_for=1)  # the rest of the answer meets the closed pipe
        assert process.wait(20) == 141
        stderr = process.stderr.read().decode()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stderr.close()
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr
    assert "Exception ignored" not in stderr, stderr
    # Nothing said once the reader left: no complaint, no prompt for a next message.
    said = re.sub(r"chatstream: session [0-9a-f-]{36}\n", "", stderr)
    greeting = "chatstream: type a message and press Enter; Ctrl-C stops an answer, Ctrl-D quits"
    assert said == (f"{greeting}\nyou> " if interactive else ""), stderr


# --- the interactive loop, in a real terminal -------------------------------------------


class Terminal:
    """`chatstream chat` on a pseudo-terminal it controls, so Ctrl-C and Ctrl-D are real keys."""

    def __init__(self, args: list[str]) -> None:
        self.master, slave = os.openpty()
        # setsid -c: a new session whose controlling terminal is the pty, as in a shell.
        self.process = subprocess.Popen(
            ["setsid", "-c", *CHAT, *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=clean_env(),
            close_fds=True,
        )
        os.close(slave)
        self.output = ""

    def type(self, keys: str) -> None:
        os.write(self.master, keys.encode())

    def read_until(self, pattern: str, timeout: float = 20.0) -> str:
        """Everything shown so far, once `pattern` (a regex) appears in it."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.output):
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"{pattern!r} never appeared; the screen:\n{self.output}")
            ready, _, _ = select.select([self.master], [], [], left)
            if ready:
                try:
                    self.output += os.read(self.master, 65536).decode(errors="replace")
                except OSError:  # the process has exited and the pty is closed
                    if not re.search(pattern, self.output):
                        raise AssertionError(
                            f"{pattern!r} never appeared; the screen:\n{self.output}"
                        ) from None
        return self.output

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)
        os.close(self.master)


@pytest.fixture
def terminal(server: AppServer) -> Iterator[Callable[..., Terminal]]:
    if shutil.which("setsid") is None:
        pytest.skip("setsid (util-linux) is needed to give the client a controlling terminal")
    opened: list[Terminal] = []

    def open_terminal(*args: str) -> Terminal:
        opened.append(Terminal(["--url", server.base_url, *args]))
        return opened[-1]

    yield open_terminal
    for term in opened:
        term.close()


def test_the_interactive_loop_keeps_one_session_ctrl_c_cancels_ctrl_d_quits(
    terminal: Callable[..., Terminal],
    server: AppServer,
    client: httpx.Client,
    fake: FakeUpstreamThread,
    tmp_path: Path,
) -> None:
    term = terminal()
    term.read_until(r"you> ")
    term.type("[[fake tokens=3]] first\n")
    screen = term.read_until(r"you> (?s:.*)you> ")  # answered, and asking again
    session = session_of(screen)
    term.type("[[fake tokens=3]] second\n")
    term.read_until(r"(?s:.*you> ){3}")
    # A long answer: Ctrl-C while it streams stops it on the server.
    term.type("[[fake tokens=40 stall_after=3]] third\n")
    term.read_until(r"third\r?\n(?s:.*)stream every token ")  # its first words are shown
    term.type("\x03")
    screen = term.read_until(r"\[cancelled\](?s:.*)you> $")
    stored = messages(client, session)
    assert [m["role"] for m in stored] == ["user", "assistant"] * 3
    assert [m["status"] for m in stored[1::2]] == ["complete", "complete", "cancelled"]
    # Ctrl-D at the prompt: the loop ends, status 0.
    term.type("\x04")
    wait_until(lambda: term.process.poll() is not None, timeout=20, what="the client to exit")
    assert term.process.returncode == 0
    assert "Traceback" not in term.output
