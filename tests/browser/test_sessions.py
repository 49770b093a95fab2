"""The session list: newest first, paged, and each conversation where it was left."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import BrowserPage, messages_of
from tests.browser.test_streaming import send, session_id_of
from tests.support.servers import AppServer


def test_switching_sessions_shows_each_conversation(
    server: AppServer, api: httpx.Client, open_page: Callable[..., BrowserPage]
) -> None:
    view = open_page()
    page = view.open(server, transport="sse")
    log = page.get_by_role("log", name="Conversation")
    send(page, "[[fake interval_ms=5]] alpha")
    expect(page.locator("article.assistant").last).to_have_attribute("data-status", "complete")
    alpha = session_id_of(page)

    page.get_by_role("button", name="New chat").click()
    expect(log.locator("article")).to_have_count(0)
    send(page, "[[fake tokens=40 interval_ms=40]] bravo")
    expect(page.locator("article.assistant").last.locator(".markdown")).to_contain_text("moment")
    bravo = session_id_of(page)
    assert bravo != alpha
    sessions = page.get_by_role("navigation", name="Sessions").locator("button.session")
    expect(sessions).to_have_count(2)
    expect(sessions.first).to_have_attribute("data-session-id", bravo)  # newest first
    expect(sessions.first).to_have_attribute("aria-current", "page")

    # Away while bravo's answer streams, then back: the same run, still live, completes.
    page.locator(f'button.session[data-session-id="{alpha}"]').click()
    expect(log).to_contain_text("You said: alpha")
    expect(log).not_to_contain_text("bravo")
    view.shot("session-alpha")
    page.locator(f'button.session[data-session-id="{bravo}"]').click()
    expect(log.locator("article.user .bubble")).to_have_text(
        ["[[fake tokens=40 interval_ms=40]] bravo"]
    )
    answer = log.locator("article.assistant")
    expect(answer).to_have_count(1)
    expect(answer).to_have_attribute("data-status", "complete")
    saved = messages_of(api, bravo)[-1]
    assert answer.locator(".markdown").inner_text().split() == saved["content"].split()
    assert len(saved["content"].split()) == 40

    page.go_back()  # the fragment remembers where we were
    expect(log).to_contain_text("You said: alpha")
    assert session_id_of(page) == alpha


def test_session_list_pages_newest_first(
    server: AppServer, api: httpx.Client, open_page: Callable[..., BrowserPage]
) -> None:
    for number in range(25):
        api.post("/api/sessions", json={"title": f"session {number:02d}"}).raise_for_status()
    view = open_page()
    page = view.open(server)
    titles = page.get_by_role("navigation", name="Sessions").locator(".session-title")
    expect(titles).to_have_count(20)
    expect(titles.first).to_have_text("session 24")
    more = page.get_by_role("button", name="Load more sessions")
    more.click()
    expect(titles).to_have_count(25)
    expect(titles.last).to_have_text("session 00")
    expect(more).to_be_hidden()
    assert titles.all_inner_texts() == [f"session {n:02d}" for n in range(24, -1, -1)]
