"""Keyboard only, named controls, a phone's width; the demo banner; the token field."""

from __future__ import annotations

import re
from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import PHONE, BrowserPage, messages_of
from tests.browser.test_streaming import TRANSPORTS, send, session_id_of
from tests.support.sentinels import SENTINEL_JWT_SECRET, TOKEN_ALICE
from tests.support.servers import AppServer


def test_keyboard_only_flow(
    server: AppServer, api: httpx.Client, open_page: Callable[..., BrowserPage]
) -> None:
    view = open_page()
    page = view.open(server, transport="ws")
    box = page.get_by_label("Message")
    box.focus()
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")  # a new line, not a send
    page.keyboard.type("[[fake tokens=400 interval_ms=40]] second line")
    expect(box).to_have_value("first line\n[[fake tokens=400 interval_ms=40]] second line")
    expect(page.locator("article.user")).to_have_count(0)

    page.keyboard.press("Enter")
    expect(box).to_have_value("")
    expect(page.locator("article.user .bubble")).to_have_text(
        ["first line\n[[fake tokens=400 interval_ms=40]] second line"]
    )
    answer = page.locator("article.assistant").last
    expect(answer.locator(".markdown")).to_contain_text("moment")
    expect(box).to_be_focused()
    page.keyboard.press("Escape")  # stops the answer
    expect(answer).to_have_attribute("data-status", "cancelled")
    assert messages_of(api, session_id_of(page))[-1]["status"] == "cancelled"

    # Everything else is reachable with Tab, and Enter on a focused button works.
    new_chat = page.get_by_role("button", name="New chat")
    for _ in range(15):
        page.keyboard.press("Tab")
        if new_chat.evaluate("button => button === document.activeElement"):
            break
    expect(new_chat).to_be_focused()
    page.keyboard.press("Enter")
    expect(page.locator("article")).to_have_count(0)
    expect(box).to_be_focused()


def test_every_control_has_a_label(
    server: AppServer, open_page: Callable[..., BrowserPage]
) -> None:
    page = open_page().open(server)
    expect(page.get_by_label("Message")).to_be_editable()
    expect(page.get_by_label("Model")).to_have_value("test-model")
    expect(page.get_by_label("Model").locator("option")).to_have_text(["test-model", "other-model"])
    expect(page.get_by_label("Transport")).to_be_enabled()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    expect(page.get_by_role("button", name="New chat")).to_be_visible()
    expect(page.get_by_role("navigation", name="Sessions")).to_be_visible()
    expect(page.get_by_role("log", name="Conversation")).to_be_attached()
    expect(page.get_by_text("Demo model")).to_be_hidden()  # a real upstream is configured
    controls = page.locator("button:visible, select:visible, textarea:visible, input:visible")
    assert controls.count() >= 5
    for control in controls.all():
        expect(control).to_have_accessible_name(re.compile(r"\S"))


def test_phone_width_has_no_horizontal_overflow(
    server: AppServer, open_page: Callable[..., BrowserPage]
) -> None:
    view = open_page(PHONE)
    page = view.open(server)
    long_word = "x" * 300
    send(
        page,
        f"[[fake interval_ms=2]] {long_word}\n\n```\n{'code ' * 60}\n```\n\n"
        "| a | b | c | d | e | f |\n|---|---|---|---|---|---|\n"
        + "| wide cell | wide cell | wide cell | wide cell | wide cell | wide cell |",
    )
    expect(page.locator("article.assistant").last).to_have_attribute("data-status", "complete")
    view.shot("phone")
    widths = page.evaluate(
        "() => [document.documentElement.scrollWidth, document.body.scrollWidth,"
        " document.getElementById('log').scrollWidth, document.getElementById('log').clientWidth]"
    )
    assert widths[0] <= PHONE["width"] and widths[1] <= PHONE["width"], widths
    assert widths[2] <= widths[3], widths
    expect(page.get_by_role("button", name="Send")).to_be_in_viewport()

    sessions = page.get_by_role("navigation", name="Sessions")
    expect(sessions).to_be_hidden()  # a drawer on phones
    toggle = page.get_by_role("button", name="Sessions")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(sessions).to_be_visible()
    view.shot("phone-sessions")
    page.get_by_role("button", name="New chat").click()
    expect(sessions).to_be_hidden()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_token_field_when_auth_is_on(
    make_server: Callable[..., AppServer],
    open_page: Callable[..., BrowserPage],
    transport: str,
) -> None:
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)
    view = open_page()
    page = view.page
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.on("websocket", lambda socket: urls.append(socket.url))
    page.goto(server.base_url + "/")
    page.get_by_label("Transport").select_option(transport)
    token = page.get_by_label("Access token")
    expect(token).to_be_visible()
    expect(page.get_by_label("Model")).to_be_disabled()
    view.shot(f"token-{transport}")

    token.fill("not-a-jwt")
    page.get_by_role("button", name="Use token").click()
    expect(page.get_by_text("The server refused this token (unauthorized)")).to_be_visible()
    token.fill(TOKEN_ALICE)
    page.get_by_role("button", name="Use token").click()
    expect(page.locator("body[data-ready]")).to_be_attached()
    expect(token).to_be_hidden()
    send(page, "[[fake tokens=5]] as alice")
    expect(page.locator("article.assistant").last).to_have_attribute("data-status", "complete")

    session_id = session_id_of(page)
    with httpx.Client(base_url=server.base_url) as http:
        alice = {"Authorization": f"Bearer {TOKEN_ALICE}"}
        assert messages_of(http, session_id, **alice)[-1]["status"] == "complete"
    assert not [url for url in urls if TOKEN_ALICE in url], "a token went into a URL"
    if transport == "ws":
        assert any(url.endswith("/ws/chat") for url in urls)


def test_model_picker_chooses_the_model(
    server: AppServer, api: httpx.Client, open_page: Callable[..., BrowserPage]
) -> None:
    view = open_page()
    page = view.open(server)
    page.get_by_label("Model").select_option("other-model")
    send(page, "[[fake tokens=3]] which model?")
    expect(page.locator("article.assistant").last).to_have_attribute("data-status", "complete")
    assert messages_of(api, session_id_of(page))[-1]["model"] == "other-model"
    page.reload()
    expect(page.locator("body[data-ready]")).to_be_attached()
    expect(page.get_by_label("Model")).to_have_value("other-model")  # remembered
