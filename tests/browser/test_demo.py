"""The offline demo model, as `make run` shows it: a banner says so; the README's screenshot.

`CHATSTREAM_TEST_UPDATE_SCREENSHOT=1 make test` (or pytest on this file) writes the
screenshot to docs/playground.png; every other run keeps it under tmp_path.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from playwright.sync_api import expect

from tests.browser.conftest import BrowserPage
from tests.browser.test_streaming import send
from tests.support.servers import AppServer

README_SCREENSHOT = Path(__file__).parents[2] / "docs" / "playground.png"
SCREENSHOT_VIEWPORT = {"width": 960, "height": 640}
MAX_SCREENSHOT_BYTES = 150_000


def test_demo_model_shows_a_banner(
    make_server: Callable[..., AppServer], open_page: Callable[..., BrowserPage]
) -> None:
    # As `make run` shows it: with no model server, the offline demo answers as `demo`.
    demo = make_server(openai_api_key=None, openai_base_url=None, models=["demo"])
    view = open_page(SCREENSHOT_VIEWPORT)
    page = view.open(demo)
    expect(page.get_by_role("status").filter(has_text="Demo model")).to_be_visible()

    send(page, "Hello!")
    answer = page.locator("article.assistant").last
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer).to_contain_text("offline demo model")
    send(page, "What time is it?")
    answer = page.locator("article.assistant").last
    expect(answer).to_have_attribute("data-status", "complete")
    expect(answer.locator("details.tool-card")).to_contain_text("get_current_time")
    page.get_by_label("Message").blur()
    shot = view.shot("playground")
    assert shot.stat().st_size < MAX_SCREENSHOT_BYTES
    if os.environ.get("CHATSTREAM_TEST_UPDATE_SCREENSHOT") == "1":
        README_SCREENSHOT.parent.mkdir(exist_ok=True)
        shutil.copyfile(shot, README_SCREENSHOT)
