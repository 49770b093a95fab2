"""JWT auth over HTTP and WebSocket: every vector that must fail gets 401 (or 1008)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from pydantic import ValidationError
from websockets.exceptions import ConnectionClosed

from chatstream.config import Settings
from tests.support.process import clean_env, free_port
from tests.support.sentinels import SENTINEL_JWT_SECRET, TOKEN_ALICE, make_token
from tests.support.servers import AppServer
from tests.support.ws import open_socket, recv, send

JWT_SETTINGS = {"auth": "jwt", "jwt_secret": SENTINEL_JWT_SECRET}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes) -> str:
    """A token signed with HMAC-SHA256 by hand: how an algorithm-confusion attack is built."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


def later() -> int:
    return int(time.time()) + 3600


@pytest.fixture
def jwt_server(make_server: Callable[..., AppServer]) -> AppServer:
    return make_server(**JWT_SETTINGS, jwt_audience="chat", jwt_issuer="https://issuer.example")


def valid(**claims: Any) -> str:
    return make_token("alice", aud="chat", iss="https://issuer.example", **claims)


BAD_TOKENS = {
    "expired": lambda: make_token(
        "alice", aud="chat", iss="https://issuer.example", exp=int(time.time()) - 10
    ),
    "no exp": lambda: jwt.encode(
        {"sub": "alice", "aud": "chat", "iss": "https://issuer.example"},
        SENTINEL_JWT_SECRET,
        algorithm="HS256",
    ),
    "no sub": lambda: jwt.encode(
        {"exp": later(), "aud": "chat", "iss": "https://issuer.example"},
        SENTINEL_JWT_SECRET,
        algorithm="HS256",
    ),
    "wrong signature": lambda: make_token(
        "alice",
        secret="another-secret-of-at-least-32-bytes!!",
        aud="chat",
        iss="https://issuer.example",
    ),
    "alg none": lambda: jwt.encode(
        {"sub": "alice", "exp": later(), "aud": "chat", "iss": "https://issuer.example"},
        None,
        algorithm="none",
    ),  # type: ignore[arg-type]
    "wrong aud": lambda: make_token("alice", aud="other", iss="https://issuer.example"),
    "no aud": lambda: make_token("alice", iss="https://issuer.example"),
    "wrong iss": lambda: make_token("alice", aud="chat", iss="https://evil.example"),
    "garbage": lambda: "not.a.jwt",
}


@pytest.mark.parametrize("kind", list(BAD_TOKENS))
def test_bad_tokens_are_401(jwt_server: AppServer, kind: str) -> None:
    response = httpx.get(
        f"{jwt_server.base_url}/api/sessions", headers=bearer(BAD_TOKENS[kind]()), timeout=10
    )
    assert response.status_code == 401
    # RFC 6750: a token was sent and is not usable, so the challenge says invalid_token.
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer error="invalid_token", error_description="')
    if kind == "expired":  # the one a client can fix by itself: refresh the token
        assert response.json()["error"]["code"] == "token_expired"
        assert "expired" in challenge and "expired" in response.json()["error"]["message"]
    else:
        assert response.json()["error"]["code"] == "unauthorized"
        assert "expired" not in challenge


@pytest.mark.parametrize("header", [None, "", "Bearer", "Basic dXNlcjpwYXNz", "Token abc"])
def test_missing_or_malformed_authorization_is_401(
    jwt_server: AppServer, header: str | None
) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = httpx.get(f"{jwt_server.base_url}/api/sessions", headers=headers, timeout=10)
    assert response.status_code == 401
    # No token at all: the bare challenge, no error code (RFC 6750 section 3.1).
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


def test_a_valid_token_passes_and_sub_is_the_owner(jwt_server: AppServer) -> None:
    with httpx.Client(base_url=jwt_server.base_url, headers=bearer(valid()), timeout=10) as client:
        session = client.post("/api/sessions", json={"title": "mine"}).json()
        assert session["owner"] == "alice"
        assert client.get("/api/sessions").json()["items"][0]["id"] == session["id"]


def api_operations(server: AppServer) -> list[tuple[str, str]]:
    """Every (method, path) under /api, from the OpenAPI document generated from the routes."""
    paths = httpx.get(f"{server.base_url}/openapi.json", timeout=10).json()["paths"]
    return [
        (method.upper(), path)
        for path, ops in paths.items()
        if path.startswith("/api")
        for method in ops
    ]


def test_every_api_route_needs_the_token(jwt_server: AppServer) -> None:
    operations = api_operations(jwt_server)
    assert len(operations) >= 12
    some_id = "00000000-0000-4000-8000-000000000000"
    for method, path in operations:
        url = jwt_server.base_url + path.replace("{session_id}", some_id).replace(
            "{message_id}", some_id
        )
        response = httpx.request(method, url, json={"message": "hi"}, timeout=10)
        assert response.status_code == 401, (method, path)
    for open_path in ("/healthz", "/readyz", "/openapi.json"):
        assert httpx.get(f"{jwt_server.base_url}{open_path}", timeout=10).status_code == 200


def test_without_aud_and_iss_configured_they_are_not_checked(
    make_server: Callable[..., AppServer],
) -> None:
    server = make_server(**JWT_SETTINGS)
    token = make_token("alice", aud="anything", iss="anyone")
    assert (
        httpx.get(f"{server.base_url}/api/sessions", headers=bearer(token), timeout=10).status_code
        == 200
    )


def _rsa_pem() -> tuple[rsa.RSAPrivateKey, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key, public.decode()


def test_rs256_and_the_algorithm_confusion_attack(make_server: Callable[..., AppServer]) -> None:
    private, public_pem = _rsa_pem()
    server = make_server(auth="jwt", jwt_public_key=public_pem)
    good = jwt.encode({"sub": "alice", "exp": later()}, private, algorithm="RS256")
    assert (
        httpx.get(f"{server.base_url}/api/sessions", headers=bearer(good), timeout=10).status_code
        == 200
    )
    # HS256 "signed" with the public key as the HMAC secret.
    forged = hand_signed(
        {"alg": "HS256", "typ": "JWT"}, {"sub": "alice", "exp": later()}, public_pem.encode()
    )
    assert (
        httpx.get(f"{server.base_url}/api/sessions", headers=bearer(forged), timeout=10).status_code
        == 401
    )
    unsigned = jwt.encode({"sub": "alice", "exp": later()}, None, algorithm="none")  # type: ignore[arg-type]
    assert (
        httpx.get(
            f"{server.base_url}/api/sessions", headers=bearer(unsigned), timeout=10
        ).status_code
        == 401
    )


def test_es256_from_a_key_file(make_server: Callable[..., AppServer], tmp_path: Path) -> None:
    private = ec.generate_private_key(ec.SECP256R1())
    key_file = tmp_path / "public.pem"
    key_file.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    server = make_server(auth="jwt", jwt_public_key_file=key_file)
    good = jwt.encode({"sub": "alice", "exp": later()}, private, algorithm="ES256")
    assert (
        httpx.get(f"{server.base_url}/api/sessions", headers=bearer(good), timeout=10).status_code
        == 200
    )
    as_rs = make_token("alice")  # HS256 with some secret
    assert (
        httpx.get(f"{server.base_url}/api/sessions", headers=bearer(as_rs), timeout=10).status_code
        == 401
    )


def test_a_short_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="at least 32 bytes"):
        Settings(auth="jwt", jwt_secret="x" * 31)
    with pytest.raises(ValidationError, match="exactly one of"):
        Settings(auth="jwt")


def test_serve_refuses_to_start_with_a_short_secret_and_does_not_print_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    secret = "short-SENTINEL-secret"
    env = clean_env(
        CHATSTREAM_AUTH="jwt", CHATSTREAM_JWT_SECRET=secret, CHATSTREAM_PORT=str(free_port())
    )
    result = subprocess.run(
        [sys.executable, "-m", "chatstream", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert "CHATSTREAM_JWT_SECRET" in result.stderr and "32 bytes" in result.stderr
    assert secret not in result.stderr + result.stdout


# --- WebSocket ---------------------------------------------------------------------


def test_websocket_auth_by_header(jwt_server: AppServer) -> None:
    with open_socket(jwt_server, additional_headers=bearer(valid())) as ws:
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


def test_websocket_auth_by_first_frame(jwt_server: AppServer) -> None:
    with open_socket(jwt_server) as ws:
        send(ws, {"type": "auth", "token": valid()})
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}


@pytest.mark.parametrize(
    "first",
    [
        {"type": "auth", "token": "not.a.jwt"},
        {"type": "ping"},
        {"type": "chat", "request_id": "x", "message": "hi"},
        "not json",
    ],
)
def test_websocket_without_valid_auth_is_closed_1008(jwt_server: AppServer, first: Any) -> None:
    with open_socket(jwt_server) as ws:
        ws.send(first if isinstance(first, str) else json.dumps(first))
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_websocket_bad_header_is_closed_1008(jwt_server: AppServer) -> None:
    with (
        open_socket(jwt_server, additional_headers=bearer(TOKEN_ALICE + "x")) as ws,
        pytest.raises(ConnectionClosed) as closed,
    ):
        recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_websocket_auth_must_come_in_time(make_server: Callable[..., AppServer]) -> None:
    server = make_server(**JWT_SETTINGS, ws_auth_timeout_s=0.3)
    with open_socket(server) as ws, pytest.raises(ConnectionClosed) as closed:
        recv(ws, timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


def test_websocket_tokens_in_the_url_are_never_read(jwt_server: AppServer) -> None:
    from websockets.sync.client import connect

    with connect(
        f"{jwt_server.ws_url}/ws/chat?token={valid()}&access_token={valid()}", open_timeout=10
    ) as ws:
        ws.send(json.dumps({"type": "ping"}))
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


@pytest.mark.parametrize("how", ["header", "frame"])
def test_a_socket_is_closed_when_its_token_expires(jwt_server: AppServer, how: str) -> None:
    expires_at = int(time.time()) + 2
    token = valid(exp=expires_at)
    headers = {"Authorization": f"Bearer {token}"} if how == "header" else {}
    with open_socket(jwt_server, additional_headers=headers) as ws:
        if how == "frame":
            send(ws, {"type": "auth", "token": token})
        send(ws, {"type": "ping"})
        assert recv(ws) == {"type": "pong"}  # served while the token is valid
        with pytest.raises(ConnectionClosed) as closed:
            recv(ws, timeout=10)
    assert time.time() >= expires_at - 0.1
    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1008, "token expired")
