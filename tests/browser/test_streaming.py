"""Answers stream into the page, over SSE and over the WebSocket alike."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Page, Route, expect

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


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_stop_mid_answer_saves_it_cancelled(
    server: AppServer,
    api: httpx.Client,
    open_page: Callable[..., BrowserPage],
    transport: str,
) -> None:
    view = open_page()
    page = view.open(server, transport=transport)
    send(page, "[[fake tokens=400 interval_ms=40]] a long one")
    answer = page.locator("article.assistant").last
    expect(answer.locator(".markdown")).to_contain_text("moment")
    stop = page.get_by_role("button", name="Stop")
    stop.click()

    expect(answer).to_have_attribute("data-status", "cancelled")
    expect(answer.locator(".meta")).to_contain_text("cancelled")
    expect(stop).to_be_hidden()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    view.shot(f"stopped-{transport}")
    saved = messages_of(api, session_id_of(page))[-1]
    assert saved["status"] == "cancelled"
    shown = answer.locator(".markdown").inner_text().split()
    assert shown == saved["content"].split()
    assert 5 <= len(shown) < 400


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reload_mid_answer_resumes_the_same_run(
    server: AppServer,
    api: httpx.Client,
    open_page: Callable[..., BrowserPage],
    transport: str,
) -> None:
    view = open_page()
    page = view.open(server, transport=transport)
    send(page, "[[fake tokens=50 interval_ms=40]] survive a reload")
    answer = page.locator("article.assistant").last
    expect(answer.locator(".markdown")).to_contain_text("moment")
    session_id = session_id_of(page)
    resumed_after: list[int] = []
    page.on("request", lambda request: resumed_after.extend(_after_of_url(request.url)))
    page.on(
        "websocket",
        lambda socket: socket.on(
            "framesent", lambda payload: resumed_after.extend(_after_of_frame(payload))
        ),
    )

    page.reload()
    expect(page.locator("body[data-ready]")).to_be_attached()
    view.shot(f"reloaded-{transport}")
    answer = page.locator("article.assistant").last
    expect(page.locator("article.user").last).to_contain_text("survive a reload")
    expect(answer).to_have_attribute("data-status", "complete")
    view.shot(f"resumed-{transport}")

    assert session_id_of(page) == session_id
    assert resumed_after and resumed_after[0] > 1, "the run was not resumed after its last seq"
    saved = messages_of(api, session_id)[-1]
    assert saved["status"] == "complete"
    assert answer.locator(".markdown").inner_text().split() == saved["content"].split()
    assert len(saved["content"].split()) == 50


def _after_of_url(url: str) -> list[int]:
    match = re.search(r"/api/runs/[0-9a-f-]+/events\?after=(\d+)$", url)
    return [int(match.group(1))] if match else []


def _after_of_frame(payload: str | bytes) -> list[int]:
    frame = json.loads(payload)
    return [frame["after"]] if frame.get("type") == "resume" else []


def test_thinking_then_tool_card_then_text(
    server: AppServer, open_page: Callable[..., BrowserPage]
) -> None:
    view = open_page()
    page = view.open(server, transport="ws")
    send(
        page, '[[fake first_token_ms=700 tool=get_current_time tool_args={"timezone":"UTC"}]] time?'
    )
    answer = page.locator("article.assistant").last
    thinking = answer.get_by_role("status")
    expect(thinking).to_have_text(re.compile(r"^Thinking"))
    view.shot("thinking")

    card = answer.locator("details.tool-card")
    expect(card).to_contain_text("get_current_time")
    expect(card.get_by_label("Arguments")).to_contain_text('"timezone": "UTC"')
    expect(card.get_by_label("Result")).to_contain_text('"weekday"')
    expect(card).to_contain_text("done")
    expect(answer.locator(".markdown")).to_contain_text("The tool said:")
    expect(answer).to_have_attribute("data-status", "complete")
    expect(thinking).to_be_hidden()
    view.shot("tool-card")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_errors_show_their_code(
    make_server: Callable[..., AppServer],
    open_page: Callable[..., BrowserPage],
    transport: str,
) -> None:
    server = make_server(rate_limit="2/minute")
    view = open_page()
    page = view.open(server, transport=transport)

    send(page, "[[fake status=500]] fail upstream")
    answer = page.locator("article.assistant").last
    expect(answer).to_have_attribute("data-status", "error")
    expect(answer.get_by_role("alert")).to_contain_text("upstream_error:")
    view.shot(f"upstream-error-{transport}")

    send(page, "[[fake tokens=2]] the second one")
    expect(page.locator("article.assistant").last).to_have_attribute("data-status", "complete")
    send(page, "one too many")
    notice = page.locator("#notice")
    expect(notice).to_contain_text("rate_limited:")
    expect(page.get_by_label("Message")).to_have_value("one too many")  # given back to retry
    expect(page.locator("article.user")).to_have_count(2)
    view.shot(f"refused-{transport}")


def test_reload_before_the_run_started_sends_it_again_with_the_same_key(
    server: AppServer, api: httpx.Client, open_page: Callable[..., BrowserPage]
) -> None:
    view = open_page()
    page = view.page
    sent: list[dict[str, object]] = []

    def hold_the_first(route: Route) -> None:
        sent.append(route.request.post_data_json)
        if len(sent) > 1:
            route.continue_()
        # The first one never reaches the server: the reload comes while it is in flight.

    page.route("**/api/chat/stream", hold_the_first)
    view.open(server, transport="sse")
    with page.expect_request("**/api/chat/stream"):
        send(page, "[[fake tokens=20 interval_ms=20]] sent just before a reload")
    page.wait_for_function(
        "() => (sessionStorage.getItem('chatstream.pending.v2') ?? '').includes('just before')"
    )
    page.reload()

    expect(page.locator("body[data-ready]")).to_be_attached()
    answer = page.locator("article.assistant").last
    expect(answer).to_have_attribute("data-status", "complete")
    expect(page.locator("article.user .bubble")).to_have_text(
        ["[[fake tokens=20 interval_ms=20]] sent just before a reload"]
    )
    assert len(sent) == 2
    assert sent[0]["client_message_id"] == sent[1]["client_message_id"]
    rows = messages_of(api, session_id_of(page))
    assert [row["role"] for row in rows] == ["user", "assistant"]
    assert answer.locator(".markdown").inner_text().split() == rows[-1]["content"].split()
