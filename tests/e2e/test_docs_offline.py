"""`/docs` and `/redoc` work with no internet: every asset a page references comes from us."""

from __future__ import annotations

import re
from collections.abc import Callable
from urllib.parse import urljoin, urlsplit

import httpx
import pytest

from tests.support.sentinels import SENTINEL_JWT_SECRET
from tests.support.servers import AppServer

# src="…", href="…", and the URLs the pages' scripts are given (url: '…', spec-url="…").
REFERENCES = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']|url:\s*['"]([^'"]+)['"]""")
EXPECTED_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png", ".json": "json"}


def references(html: str) -> list[str]:
    return [first or second for first, second in REFERENCES.findall(html)]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_of_the_docs_page_comes_from_the_server_itself(
    make_server: Callable[..., AppServer], page: str
) -> None:
    # With auth on, the reference stays readable (it holds no data).
    server = make_server(auth="jwt", jwt_secret=SENTINEL_JWT_SECRET)
    with httpx.Client(base_url=server.base_url, timeout=20) as client:
        answer = client.get(page)
        assert answer.status_code == 200
        assert answer.headers["content-type"].startswith("text/html")
        html = answer.text
        urls = references(html)
        assert any(url.endswith(".js") for url in urls), html
        assert any(url.endswith("/openapi.json") for url in urls), html
        for reference in urls:
            url = urljoin(f"{server.base_url}{page}", reference)
            assert urlsplit(url).netloc == f"127.0.0.1:{server.port}", reference
            asset = client.get(url)
            assert asset.status_code == 200, reference
            assert len(asset.content) > 0, reference
            kind = next((t for ext, t in EXPECTED_TYPES.items() if url.endswith(ext)), "")
            assert kind in asset.headers["content-type"], (reference, asset.headers)
    # Nothing else on the page points at another host (CDNs, fonts, the validator badge).
    assert not re.search(r"https?://(?!127\.0\.0\.1)", html), html
    assert "validatorUrl" not in html or '"validatorUrl": null' in html


def test_the_swagger_oauth2_redirect_page_is_served(client: httpx.Client) -> None:
    answer = client.get("/docs/oauth2-redirect")
    assert answer.status_code == 200 and "oauth2" in answer.text.lower()
