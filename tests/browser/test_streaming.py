"""Answers stream into the page, over SSE and over the WebSocket alike."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import BrowserPage, messages_of
from tests.support.servers import AppServer

TRANSPORTS = ["sse", "ws"]

# Records the last answer's text length and status at every change of the log.
WATCH_GROWTH = """() => {
  window.lengths = [];
  const log = document.getElementById("log");
  new MutationObserver(() => {
    const answer = [...log.querySelectorAll("article.assistant")].at(-1);
    if (answer) window.lengths.push([answer.querySelector(".bubble").textContent.length,
                                     answer.dataset.status]);
  }).observe(log, {subtree: true, childList: true, characterData: true, attributes: true});
}"""


def session_id_of(page: Page) -> str:
    expect(page).to_have_url(re.compile(r"#/sessions/[0-9a-f-]{36}$"))
    return page.url.rsplit("/", 1)[1]


def send(page: Page, text: str) -> None:
    page.get_by_label("Message").fill(text)
    page.get_by_role("button", name="Send").click()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_answer_grows_as_it_streams(
    server: AppServer,
    api: httpx.Client,
    open_page: Callable[..., BrowserPage],
    transport: str,
) -> None:
    view = open_page()
    page = view.open(server, transport=transport)
    page.evaluate(WATCH_GROWTH)
    send(page, "[[fake tokens=40 interval_ms=40]] hello")

    answer = page.locator("article.assistant").last
    expect(answer).to_have_attribute("data-status", "running")
    view.shot(f"streaming-{transport}")
    expect(answer).to_have_attribute("data-status", "complete")
    view.shot(f"complete-{transport}")

    lengths = page.evaluate("window.lengths")
    growing = {length for length, status in lengths if status == "running" and length > 0}
    assert len(growing) >= 5, f"the text did not grow in steps: {lengths}"
    saved = messages_of(api, session_id_of(page))[-1]
    assert saved["role"] == "assistant"
    assert saved["status"] == "complete"
    assert answer.locator(".markdown").inner_text().split() == saved["content"].split()
    meta = answer.locator(".meta")
    expect(meta).to_contain_text("complete")
    expect(meta).to_contain_text("TTFT")
    expect(meta).to_contain_text("tok/s")
