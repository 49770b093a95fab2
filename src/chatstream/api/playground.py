"""`GET /`: the playground, a chat page over the public API, and its static assets.

The page is plain HTML, CSS and JavaScript modules shipped in
`chatstream/web/` (no build step, nothing fetched from another host). The
files are read once, when the app is built, and served from memory with an
ETag; they talk to the server only through the same `/api` and `/ws/chat`
any other client uses.

Every answer carries a strict Content-Security-Policy: scripts only from
this origin (no inline script, no `eval`), and Trusted Types enforced, so a
string can never reach an HTML sink such as `innerHTML`. The page builds its
DOM from nodes and text; the policy is the second line of defence against a
model answer that contains markup.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from dataclasses import dataclass
from typing import Annotated

from fastapi import APIRouter, Path
from starlette.requests import Request
from starlette.responses import Response

from chatstream.api.schemas import ErrorBody
from chatstream.errors import NotFound

ASSET_NAME = r"^[a-z0-9][a-z0-9_-]*\.(?:js|css|svg|png)$"

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# 'self' covers ws:// and wss:// to this same host (CSP level 3).
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "trusted-types 'none'",
    )
)

SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # no hashed file names: revalidate (cheap, with the ETag)
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str

    def response(self, request: Request) -> Response:
        headers = {**SECURITY_HEADERS, "ETag": self.etag}
        if self.etag in _etags(request.headers.get("if-none-match", "")):
            return Response(status_code=304, headers=headers)
        return Response(self.body, media_type=self.content_type, headers=headers)


def load_assets(package: str = "chatstream.web") -> dict[str, Asset]:
    """Every file of the web package by name, read now (not per request)."""
    assets: dict[str, Asset] = {}
    for entry in importlib.resources.files(package).iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if not entry.is_file() or suffix not in CONTENT_TYPES:
            continue
        body = entry.read_bytes()
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        assets[entry.name] = Asset(body, CONTENT_TYPES[suffix], etag)
    if "index.html" not in assets:
        raise RuntimeError(f"{package} has no index.html: the package is incomplete")
    return assets


def router() -> APIRouter:
    """The playground's routes, with its files already in memory."""
    assets = load_assets()
    playground = APIRouter(tags=["playground"])

    @playground.get(
        "/",
        response_class=Response,
        responses={200: {"content": {"text/html": {}}, "description": "The playground page."}},
        summary="The playground: a chat page over this API, for a browser",
    )
    async def page(request: Request) -> Response:
        return assets["index.html"].response(request)

    @playground.get(
        "/assets/{name}",
        response_class=Response,
        responses={
            200: {
                "content": {"text/javascript": {}, "text/css": {}},
                "description": "A script module or stylesheet of the playground.",
            },
            404: {"model": ErrorBody, "description": "No such file."},
        },
        summary="A static file of the playground",
    )
    async def asset(
        request: Request,
        name: Annotated[str, Path(pattern=ASSET_NAME, max_length=100)],
    ) -> Response:
        found = assets.get(name)
        if found is None:
            raise NotFound("No such file.")
        return found.response(request)

    return playground


def _etags(header: str) -> set[str]:
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}
