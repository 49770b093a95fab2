"""The playground shows a model's reasoning in a collapsible "Thinking" block, apart from the
answer, live over SSE and the WebSocket and again from the stored session (issue #25 item 1)."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from playwright.sync_api import expect

from tests.browser.conftest import BrowserPage, messages_of
from tests.browser.test_streaming import TRANSPORTS, send, session_id_of
from tests.e2e.test_reasoning import THOUGHT
from tests.support.servers import AppServer


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_reasoning_streams_into_a_thinking_block_that_folds_when_the_answer_starts(
    server: AppServer,
    api: httpx.Client,
    open_page: Callable[..., BrowserPage],
    transport: str,
) -> None:
    view = open_page()
    page = view.open(server, transport=transport)
    send(page, "[[fake reasoning=8 tokens=6 interval_ms=120]] why?")

    answer = page.locator("article.assistant").last
    block = answer.locator("details.reasoning")
    # Open while the model thinks, its text growing.
    expect(block).to_have_attribute("open", "")
    expect(block.locator("summary")).to_have_text("Thinking")
    expect(block.locator(".reasoning-text")).to_contain_text("Let me think")
    view.shot(f"reasoning-live-{transport}")
    expect(answer).to_have_attribute("data-status", "complete")
    # Folded once the answer began; the reader can open it again.
    expect(block).not_to_have_attribute("open", "")
    block.locator("summary").click()
    expect(block.locator(".reasoning-text")).to_have_text(THOUGHT.strip())
    saved = messages_of(api, session_id_of(page))[-1]
    assert saved["reasoning"] == THOUGHT
    # The answer's own text is only the answer.
    assert answer.locator(".markdown").inner_text().split() == saved["content"].split()

    # From the stored session, as a reload draws it: the block is there, folded.
    page.reload()
    stored = page.locator("article.assistant").last.locator("details.reasoning")
    expect(stored).to_have_count(1)
    expect(stored).not_to_have_attribute("open", "")
    expect(stored.locator(".reasoning-text")).to_have_text(THOUGHT.strip(), use_inner_text=False)
