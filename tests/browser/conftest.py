"""A real headless Chromium (Debian's `chromium`), driven by Playwright, against real servers.

One browser for the whole package, a fresh context (storage, cookies) and
page per test. Playwright never downloads a browser here: it launches the
system's. Without that browser the tests are skipped, saying why; under
`.ci/run` (CHATSTREAM_TEST_REQUIRE_SERVICES=1) they fail instead.

Playwright's sync API keeps its event loop marked as running on the main
thread while a browser is open, which breaks `asyncio.run` there (Alembic's
migrations use it). So the browser lives only as long as this package's
tests, and starts after the template database is migrated.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.support.servers import AppServer

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DESKTOP = {"width": 1100, "height": 720}
PHONE = {"width": 375, "height": 740}
TIMEOUT_MS = 15_000

# The browser reports every failed fetch on the console; those the tests cause on purpose are fine.
_EXPECTED_CONSOLE = re.compile(r"Failed to load resource: the server responded with a status of")


def chromium_path() -> str:
    found = os.environ.get("CHATSTREAM_TEST_CHROMIUM") or shutil.which("chromium")
    if found and Path(found).exists():
        return found
    if os.environ.get("CHATSTREAM_TEST_REQUIRE_SERVICES") == "1":
        pytest.fail(
            f"no chromium ({found or 'not on PATH'}), and this run requires the browser tests"
        )
    pytest.skip("no chromium: `apt-get install chromium` to run the browser tests")


@pytest.fixture(scope="package")
def browser(migrated_sqlite: Path) -> Iterator[Browser]:
    executable = chromium_path()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=CHROMIUM_FLAGS, headless=True
        )
        yield launched
        launched.close()


class BrowserPage:
    """A page of the playground in its own browser context, with what the console said."""

    def __init__(self, browser: Browser, screenshots: Path, viewport: dict[str, int]) -> None:
        self.context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.screenshots = screenshots
        self.problems: list[str] = []
        self.page.on("pageerror", lambda error: self.problems.append(f"page error: {error}"))
        self.page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and not _EXPECTED_CONSOLE.search(message.text):
            self.problems.append(f"console: {message.text}")

    def open(self, server: AppServer, *, transport: str = "sse") -> Page:
        page = self.page
        page.goto(server.base_url + "/")
        page.get_by_label("Transport").select_option(transport)
        expect(page.locator("body[data-ready]")).to_be_attached()
        return page

    def shot(self, name: str) -> Path:
        path = self.screenshots / f"{name}.png"
        self.page.screenshot(path=path)
        return path


@pytest.fixture
def open_page(browser: Browser, tmp_path: Path) -> Iterator[Callable[..., BrowserPage]]:
    pages: list[BrowserPage] = []
    screenshots = tmp_path / "screenshots"
    screenshots.mkdir()

    def make(viewport: dict[str, int] | None = None) -> BrowserPage:
        page = BrowserPage(browser, screenshots, viewport or DESKTOP)
        pages.append(page)
        return page

    yield make
    problems = [problem for page in pages for problem in page.problems]
    for page in pages:
        page.context.close()
    assert not problems, "the page reported problems:\n" + "\n".join(problems)


@pytest.fixture
def api(server: AppServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=20) as http:
        yield http


def messages_of(http: httpx.Client, session_id: str, **headers: Any) -> list[dict[str, Any]]:
    response = http.get(f"/api/sessions/{session_id}/messages", headers=headers)
    response.raise_for_status()
    items: list[dict[str, Any]] = response.json()["items"]
    return items
