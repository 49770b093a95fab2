"""Owner ids: whose a session, a message and a run are, and the names chatstream keeps.

    <the token's sub>     a caller, with CHATSTREAM_AUTH=jwt
    anonymous             every caller, with CHATSTREAM_AUTH=none
    telegram:<chat id>    a Telegram chat (bots/telegram), contract section 10

The last two are internal: chatstream names them itself, and no bearer
token may (`auth` refuses a `sub` that `is_internal`), so a token can never
reach a Telegram chat's sessions, nor the sessions kept while auth was off
in a database that later turns auth on. Any new adapter that owns sessions
builds its owner ids here, under a prefix of its own added to
`INTERNAL_PREFIXES`.
"""

from __future__ import annotations

ANONYMOUS = "anonymous"
TELEGRAM_PREFIX = "telegram:"

INTERNAL_OWNERS = frozenset({ANONYMOUS})
INTERNAL_PREFIXES = (TELEGRAM_PREFIX,)


def telegram_owner(chat_id: int) -> str:
    """The owner of a Telegram chat's sessions."""
    return f"{TELEGRAM_PREFIX}{chat_id}"


def is_internal(owner: str) -> bool:
    """Whether `owner` is in a namespace chatstream keeps for itself."""
    return owner in INTERNAL_OWNERS or owner.startswith(INTERNAL_PREFIXES)


def internal_names() -> str:
    """The internal namespaces as a person reads them: "`anonymous`, or one starting with …"."""
    names = [f"`{owner}`" for owner in sorted(INTERNAL_OWNERS)]
    names += [f"one starting with `{prefix}`" for prefix in INTERNAL_PREFIXES]
    return ", or ".join(names)
