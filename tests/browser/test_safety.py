"""What a model writes is shown, never executed: Markdown becomes DOM nodes, never HTML."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from playwright.sync_api import expect

from tests.browser.conftest import BrowserPage
from tests.browser.test_streaming import send
from tests.support.servers import AppServer

HOSTILE = (
    '<img src=x onerror="window.pwned=1"> **bold** '
    "[click](javascript:window.pwned=2) <script>window.pwned=3</script>"
)


def test_model_html_is_shown_as_text(
    server: AppServer, open_page: Callable[..., BrowserPage]
) -> None:
    view = open_page()
    page = view.open(server, transport="ws")
    send(page, f"[[fake interval_ms=5]] {HOSTILE}")  # the fake upstream answers "You said: …"
    answer = page.locator("article.assistant").last
    expect(answer).to_have_attribute("data-status", "complete")

    for shown_in in (answer.locator(".markdown"), page.locator("article.user").last):
        expect(shown_in).to_contain_text('<img src=x onerror="window.pwned=1">')
        expect(shown_in).to_contain_text("<script>window.pwned=3</script>")
    expect(answer.locator("strong")).to_have_text("bold")  # Markdown still works
    expect(answer.locator("a")).to_have_count(0)  # a javascript: link is not a link
    expect(answer.locator(".markdown")).to_contain_text("[click](javascript:window.pwned=2)")
    view.shot("hostile-answer")

    page.reload()  # the saved answer is drawn by the same renderer
    expect(page.locator("body[data-ready]")).to_be_attached()
    expect(page.locator("article.assistant").last.locator(".markdown")).to_contain_text(
        "<img src=x"
    )
    assert page.locator("img, script:not([src])").count() == 0
    assert page.evaluate("window.pwned") is None


def test_page_is_served_with_a_strict_policy(server: AppServer) -> None:
    with httpx.Client(base_url=server.base_url) as http:
        page = http.get("/")
        assert page.status_code == 200
        assert page.headers["content-type"] == "text/html; charset=utf-8"
        policy = page.headers["content-security-policy"]
        assert "script-src 'self'" in policy
        assert "require-trusted-types-for 'script'" in policy
        assert page.headers["x-content-type-options"] == "nosniff"
        assert "http" not in page.text.replace("http-equiv", "")  # nothing from another host

        script = http.get("/assets/main.js")
        assert script.headers["content-type"] == "text/javascript; charset=utf-8"
        again = http.get("/assets/main.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304
        missing = http.get("/assets/nothing.js")
        assert missing.status_code == 404
        assert missing.json()["error"]["code"] == "not_found"
        assert http.get("/assets/..%2fapp.py").status_code in (404, 422)


# Renders many strings made of Markdown and HTML metacharacters (a seeded
# generator, so every run renders the same ones) and checks every node built.
RENDER_FUZZ = """async () => {
  const { renderMarkdown } = await import("/assets/markdown.js");
  const allowedTags = new Set(["P", "BR", "STRONG", "EM", "DEL", "CODE", "PRE", "A", "UL", "OL",
    "LI", "BLOCKQUOTE", "H3", "H4", "H5", "H6", "HR", "TABLE", "THEAD", "TBODY", "TR", "TH", "TD",
    "DIV"]);
  const allowedAttributes = new Set(["href", "rel", "target", "start", "class"]);
  const pieces = ["<", ">", "img", " src=x", " onerror=alert(1)", "<script>", "</script>", "*",
    "**", "_", "`", "```", "\\n", "\\n\\n", "[", "]", "(", ")", "javascript:", "https://e.com/",
    "#", "- ", "1. ", "> ", "|", "---", "\\\\", "&lt;", "\\"", "'", " ", "a", "~~", "  ", "!"];
  let seed = 42;
  const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648;
  const problems = [];
  for (let n = 0; n < 3000; n++) {
    let text = "";
    const length = Math.floor(random() * 40);
    for (let i = 0; i < length; i++) text += pieces[Math.floor(random() * pieces.length)];
    const root = document.createElement("div");
    root.append(renderMarkdown(text));
    for (const node of root.querySelectorAll("*")) {
      if (!allowedTags.has(node.tagName)) problems.push([text, node.tagName]);
      for (const attribute of node.attributes) {
        if (!allowedAttributes.has(attribute.name)) problems.push([text, attribute.name]);
      }
      if (node.tagName === "A" && !/^(https?:|mailto:)/.test(node.getAttribute("href"))) {
        problems.push([text, node.getAttribute("href")]);
      }
    }
  }
  return problems.slice(0, 5);
}"""

SHAPES = """async () => {
  const { renderMarkdown } = await import("/assets/markdown.js");
  const html = (text) => {
    const root = document.createElement("div");
    root.append(renderMarkdown(text));
    return root.innerHTML;
  };
  return [
    "**b** *i* ~~d~~ `c <b>`",
    "```js\\nif (a < b) {}\\n```",
    "- one\\n- two\\n  - nested",
    "3. three\\n4. four",
    "| a | b |\\n|---|--:|\\n| 1 | 2 |",
    "[site](https://example.com/x) and https://example.com/y.",
    "![alt](https://example.com/i.png)",
    "# Title\\n> quoted\\n\\n---",
    "snake_case_name and __strong__",
    "```\\nstill streaming <b>",
  ].map(html);
}"""


def test_markdown_renderer_builds_only_safe_nodes(
    server: AppServer, open_page: Callable[..., BrowserPage]
) -> None:
    view = open_page()
    page = view.open(server)
    assert page.evaluate(RENDER_FUZZ) == []
    # The policy's second line: an HTML string cannot reach the DOM at all.
    sink = "() => { try { document.body.innerHTML = '<b>x</b>'; return 'written' }"
    assert page.evaluate(sink + " catch (error) { return error.name } }") == "TypeError"
    view.problems = [p for p in view.problems if "TrustedHTML" not in p]
    assert page.evaluate(SHAPES) == [
        "<p><strong>b</strong> <em>i</em> <del>d</del> <code>c &lt;b&gt;</code></p>",
        '<pre><code class="language-js">if (a &lt; b) {}</code></pre>',
        "<ul><li>one</li><li>two<ul><li>nested</li></ul></li></ul>",
        '<ol start="3"><li>three</li><li>four</li></ol>',
        '<div class="table-scroll"><table><thead><tr><th>a</th><th class="align-right">b</th>'
        '</tr></thead><tbody><tr><td>1</td><td class="align-right">2</td></tr></tbody>'
        "</table></div>",
        '<p><a href="https://example.com/x" rel="noopener noreferrer nofollow" target="_blank">'
        'site</a> and <a href="https://example.com/y" rel="noopener noreferrer nofollow" '
        'target="_blank">https://example.com/y</a>.</p>',
        '<p><a href="https://example.com/i.png" rel="noopener noreferrer nofollow" '
        'target="_blank">alt</a></p>',
        "<h3>Title</h3><blockquote><p>quoted</p></blockquote><hr>",
        "<p>snake_case_name and <strong>strong</strong></p>",
        "<pre><code>still streaming &lt;b&gt;</code></pre>",
    ]
