"""Who is calling: bearer JWT → `Principal`, and the client's address.

    CHATSTREAM_AUTH=none   everyone is the owner `anonymous`; limits apply per client IP
    CHATSTREAM_AUTH=jwt    `Authorization: Bearer <JWT>`; the token's `sub` is the owner

Tokens are verified with exactly one pinned algorithm, chosen by the key:
HS256 for `CHATSTREAM_JWT_SECRET`, RS256 or ES256 for a public key (by its
type), so neither `alg: none` nor a token signed with the public key as an
HMAC secret can pass. `exp` and `sub` are required; `aud` and `iss` are
checked when configured. A 401 says only what a client can act on (RFC 6750):
no token, a token that is not valid, or one that has expired (refresh it).
A `sub` that is not an owner id a token may name is refused too: one with a
NUL (no database column of PostgreSQL's can hold it), and one in a namespace
chatstream keeps for its own owners (`anonymous`, `telegram:…`; see
`chatstream.owners`), as `reserved_subject`.

The client's address is the TCP peer, or, when the peer is one of
`CHATSTREAM_TRUSTED_PROXIES`, the nearest untrusted address of its
`X-Forwarded-For` chain; an untrusted peer cannot choose its own bucket. The
chain is every `X-Forwarded-For` line in order (a proxy may append its own
line rather than extend the client's), so a client's line never hides the
address its proxy added.

PyJWT and cryptography are imported only with `CHATSTREAM_AUTH=jwt`: without
it they would be ~10 MB resident in every server for nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from ipaddress import IPv4Network, IPv6Network, ip_address, ip_network
from types import ModuleType
from typing import Any, Protocol

from chatstream.config import ConfigurationError, Settings
from chatstream.errors import InvalidToken, TokenExpired, Unauthorized
from chatstream.owners import ANONYMOUS, internal_names, is_internal

OWNER_MAX_CHARS = 255


class ReservedSubject(InvalidToken):
    """401 reserved_subject: the token's `sub` names an owner only chatstream itself may be."""

    code = "reserved_subject"
    default_message = (
        "The bearer token's subject (`sub`) is an owner id chatstream keeps for itself "
        f"({internal_names()}); issue the token with another subject."
    )
    challenge = 'Bearer error="invalid_token", error_description="The token\'s subject is reserved"'


@dataclass(frozen=True, slots=True)
class Principal:
    owner: str
    # The rate-limit bucket: the owner with auth on, the client's address without.
    limit_key: str


class Authenticator:
    """Turns an `Authorization` header value (or a bare token) into the caller's owner id."""

    def __init__(self, settings: Settings) -> None:
        self.enabled = settings.auth == "jwt"
        self._key: Any = None
        self._algorithm = ""
        self._audience = settings.jwt_audience
        self._issuer = settings.jwt_issuer
        self._jwt: ModuleType | None = None
        if not self.enabled:
            return
        import jwt  # with JWT auth only (see the module's docstring)

        self._jwt = jwt
        if settings.jwt_secret is not None:
            self._key, self._algorithm = settings.jwt_secret.get_secret_value(), "HS256"
            return
        pem, variable = settings.jwt_public_key, "CHATSTREAM_JWT_PUBLIC_KEY"
        if pem is None and settings.jwt_public_key_file is not None:
            variable = "CHATSTREAM_JWT_PUBLIC_KEY_FILE"
            try:
                pem = settings.jwt_public_key_file.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                reason = getattr(exc, "strerror", None) or type(exc).__name__
                raise ConfigurationError(
                    f"{variable}: cannot read {settings.jwt_public_key_file}: {reason}"
                ) from None
        assert pem is not None, "settings validation guarantees one key"
        from cryptography.hazmat.primitives.asymmetric import ec, rsa
        from cryptography.hazmat.primitives.serialization import load_pem_public_key

        try:
            key = load_pem_public_key(pem.encode())
        except (ValueError, TypeError):
            raise ConfigurationError(f"{variable}: not a PEM public key") from None
        if isinstance(key, rsa.RSAPublicKey):
            self._key, self._algorithm = key, "RS256"
        elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
            self._key, self._algorithm = key, "ES256"
        else:
            raise ConfigurationError(f"{variable} must be an RSA or a P-256 EC public key")

    def owner_from_header(self, authorization: str | None) -> str:
        if not self.enabled:
            return ANONYMOUS
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("A bearer token is required.")
        return self.owner_from_token(token.strip())

    def expiry_of(self, authorization: str | None) -> float | None:
        """When a bearer credential (already verified) stops being valid: its `exp`, or None."""
        jwt = self._jwt
        if jwt is None or not authorization:
            return None
        token = authorization.partition(" ")[2] if " " in authorization else authorization
        try:
            claims = jwt.decode(token.strip(), options={"verify_signature": False})
            return float(claims["exp"])
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            return None

    def owner_from_token(self, token: str) -> str:
        jwt = self._jwt
        if jwt is None:
            return ANONYMOUS
        try:
            claims = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={
                    "require": ["exp", "sub"],
                    "verify_aud": self._audience is not None,
                    "verify_iss": self._issuer is not None,
                },
            )
        except jwt.ExpiredSignatureError:
            raise TokenExpired() from None
        except jwt.PyJWTError:
            raise InvalidToken() from None
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject or len(subject) > OWNER_MAX_CHARS:
            raise InvalidToken()
        if "\x00" in subject:
            raise InvalidToken(
                "The bearer token's subject (`sub`) contains a NUL (U+0000) character; "
                "issue the token with a subject without one."
            )
        if is_internal(subject):
            raise ReservedSubject()
        return subject


Network = IPv4Network | IPv6Network


class HeaderLines(Protocol):
    """Request headers that keep repeated lines (Starlette's `Headers`)."""

    def getlist(self, key: str) -> list[str]: ...


class ClientAddress:
    """The caller's IP address, trusting `X-Forwarded-For` only from listed proxies."""

    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted: list[Network] = [ip_network(n, strict=False) for n in trusted_proxies]

    def _is_trusted(self, address: str) -> bool:
        try:
            ip = ip_address(address)
        except ValueError:
            return False
        return any(ip in network for network in self._trusted)

    def of(self, peer: str | None, headers: HeaderLines) -> str:
        if peer is None:
            return "unknown"
        if not self._trusted or not self._is_trusted(peer):
            return peer
        forwarded = [
            part.strip()
            for line in headers.getlist("x-forwarded-for")
            for part in line.split(",")
            if part.strip()
        ]
        # Walk from the nearest hop outwards; the first untrusted one is the client.
        for address in reversed(forwarded):
            if not self._is_trusted(address):
                return address if _is_ip(address) else peer
        return forwarded[0] if forwarded and _is_ip(forwarded[0]) else peer


def _is_ip(text: str) -> bool:
    try:
        ip_address(text)
    except ValueError:
        return False
    return True
