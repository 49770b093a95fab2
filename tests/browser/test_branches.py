"""The playground's branches: Edit a message, Regenerate an answer, `< 2/3 >` between
versions, all kept by the server and shown as it lists them."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import BrowserPage, messages_of
from tests.browser.test_streaming import send, session_id_of
from tests.support.servers import AppServer, FakeUpstreamThread


def turns(page: Page, kind: str) -> Locator:
    return page.get_by_role("log", name="Conversation").locator(f"article.{kind}")


def bubbles(page: Page) -> list[str]:
    return turns(page, "user").locator(".bubble").all_inner_texts()


def finished(page: Page, count: int) -> None:
    answers = turns(page, "assistant")
    expect(answers).to_have_count(count)
    expect(answers.last).to_have_attribute("data-status", "complete")
    expect(answers.last.get_by_role("button", name="Regenerate")).to_be_visible()


@pytest.mark.parametrize("transport", ["sse", "ws"])
def test_edit_regenerate_and_switch_versions(
    server: AppServer,
    api: httpx.Client,
    fake: FakeUpstreamThread,
    open_page: Callable[..., BrowserPage],
    transport: str,
) -> None:
    view = open_page()
    page = view.open(server, transport=transport)
    send(page, "[[fake tokens=3]] first question")
    finished(page, 1)
    send(page, "[[fake tokens=3]] second question")
    finished(page, 2)
    session = session_id_of(page)

    # Edit the second question, as it was just sent (before any reload).
    second = turns(page, "user").nth(1)
    second.get_by_role("button", name="Edit").click()
    box = second.get_by_label("New text")
    expect(box).to_have_value("[[fake tokens=3]] second question")
    box.fill("[[fake tokens=3]] second, edited")
    second.get_by_role("button", name="Send edit").click()
    finished(page, 2)
    assert bubbles(page) == ["[[fake tokens=3]] first question", "[[fake tokens=3]] second, edited"]
    versions = turns(page, "user").nth(1).get_by_role("group", name="Versions")
    expect(versions).to_contain_text("2/2")
    # The model was given the edited branch only.
    assert [m["content"] for m in fake.fake.requests[-1]["messages"]][-1] == (
        "[[fake tokens=3]] second, edited"
    )
    assert len(fake.fake.requests[-1]["messages"]) == 3
    view.shot("edited")

    # Previous: the first version is back, with its own answer.
    first_answer = messages_of(api, session)[-1]["content"]
    versions.get_by_role("button", name="Previous version").click()
    expect(turns(page, "user").nth(1).locator(".bubble")).to_have_text(
        "[[fake tokens=3]] second question"
    )
    expect(turns(page, "user").nth(1).get_by_role("group", name="Versions")).to_contain_text("1/2")
    assert messages_of(api, session)[2]["content"] == "[[fake tokens=3]] second question"
    expect(turns(page, "assistant").last.locator(".markdown")).to_have_text(first_answer.strip())

    # Regenerate that answer: a second version of it, shown; the first kept.
    turns(page, "assistant").last.get_by_role("button", name="Regenerate").click()
    finished(page, 2)
    answer_versions = turns(page, "assistant").last.get_by_role("group", name="Versions")
    expect(answer_versions).to_contain_text("2/2")
    shown = messages_of(api, session)
    assert shown[3]["sibling_count"] == 2 and shown[3]["sibling_index"] == 1
    answer_versions.get_by_role("button", name="Previous version").click()
    expect(turns(page, "assistant").last.locator(".markdown")).to_have_text(first_answer.strip())
    view.shot("regenerated")

    # A reload shows the branch the server keeps as the active one.
    page.reload()
    expect(page.locator("body[data-ready]")).to_be_attached()
    assert bubbles(page) == [
        "[[fake tokens=3]] first question",
        "[[fake tokens=3]] second question",
    ]
    expect(turns(page, "assistant").last.get_by_role("group", name="Versions")).to_contain_text(
        "1/2"
    )


def test_an_edit_cancelled_changes_nothing(
    server: AppServer, api: httpx.Client, open_page: Callable[..., BrowserPage]
) -> None:
    view = open_page()
    page = view.open(server)
    send(page, "[[fake tokens=2]] keep me")
    finished(page, 1)
    question = turns(page, "user").first
    question.get_by_role("button", name="Edit").click()
    question.get_by_label("New text").fill("[[fake tokens=2]] not sent")
    question.get_by_role("button", name="Cancel").click()
    expect(question.locator(".bubble")).to_have_text("[[fake tokens=2]] keep me")
    assert [m["content"] for m in messages_of(api, session_id_of(page))][:1] == [
        "[[fake tokens=2]] keep me"
    ]
    assert len(messages_of(api, session_id_of(page))) == 2
