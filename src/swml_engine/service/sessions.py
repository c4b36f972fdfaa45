"""Console sign-in: a session cookie in place of the bearer token, for browsers (docs/security.md).

``POST /api/session`` with the API token opens a session: a random id in an HttpOnly, SameSite=Strict
cookie, and a CSRF token in the answer. Why an id kept server-side rather than a signed, expiring value:
a sign-out must hold at once on every worker and every node, and a signed value cannot be taken back
without a shared list of the ones taken back — which would be the index anyway. So the session lives in
the index (the SQLite file the workers of a node share, or the PostgreSQL database the nodes share),
written before the answer, and holds only the SHA-256 of the cookie's value: a copy of the index signs
nobody in.

CSRF: a request that changes something and is signed in by the cookie must carry the session's CSRF
token in ``X-CSRF-Token`` (the synchronizer-token pattern). A cross-site form cannot set a header, a
cross-site ``fetch`` with one needs a CORS preflight this service never grants, and SameSite=Strict
keeps the cookie off cross-site requests in the first place: two independent locks. Requests with the
bearer token are not affected (a browser never adds that header by itself). The sign-in itself must be
``application/json``, which a cross-site form cannot send either (no signing a victim into an
attacker's session).

Wrong tokens are counted per client address (connections.py's :class:`GuessLimiter`): beyond a few a
minute the address gets 429 until the minute is over.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from swml_engine.service.index import Index

COOKIE = "swml_session"
CSRF_HEADER = "x-csrf-token"
#: How long a session lasts from its sign-in (seconds): a working day, then sign in again.
TTL = 12 * 3600.0
#: Methods that change nothing: the cookie alone is enough for them.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: What a cookie value we made looks like (secrets.token_urlsafe(32)); anything else is not looked up.
_VALUE = re.compile(r"[A-Za-z0-9_-]{43}")

#: How a request to /api was let in (kept in the ASGI scope's ``state`` by httpd.RequestGuard).
Principal = Literal["token", "session"]


@dataclass(frozen=True)
class Session:
    csrf: str
    #: Unix time.
    expires: float


class Sessions:
    """Opens, finds and ends sessions in the index; words the cookies."""

    def __init__(self, index: Callable[[], Index], *, secure: bool, ttl: float = TTL) -> None:
        self._index = index
        self.secure = secure
        self.ttl = ttl

    async def open(self, now: float) -> tuple[str, Session]:
        """A new session and its cookie value (IndexUnavailable when it cannot be kept)."""
        value = secrets.token_urlsafe(32)
        session = Session(csrf=secrets.token_urlsafe(32), expires=now + self.ttl)
        await self._index().add_session(_hash(value), session.csrf, session.expires, now)
        return value, session

    async def find(self, value: str | None, now: float) -> Session | None:
        if value is None or not _VALUE.fullmatch(value):
            return None
        found = await self._index().session(_hash(value), now)
        return Session(*found) if found else None

    async def end(self, value: str | None) -> None:
        if value is not None and _VALUE.fullmatch(value):
            await self._index().end_session(_hash(value))

    def set_cookie(self, value: str) -> str:
        return self._cookie(value, round(self.ttl))

    def cleared_cookie(self) -> str:
        return self._cookie("", 0)

    def _cookie(self, value: str, max_age: int) -> str:
        secure = "; Secure" if self.secure else ""
        return f"{COOKIE}={value}; Max-Age={max_age}; Path=/; HttpOnly; SameSite=Strict{secure}"


def csrf_matches(given: bytes | None, session: Session) -> bool:
    return given is not None and hmac.compare_digest(given, session.csrf.encode())


def cookie_value(header: bytes | str | None) -> str | None:
    """Our cookie's value in a ``Cookie`` header (the first, if a client sent it twice)."""
    if not header:
        return None
    text = header.decode("latin-1") if isinstance(header, bytes) else header
    for part in text.split(";"):
        name, sep, value = part.strip().partition("=")
        if sep and name == COOKIE:
            return value
    return None


def _hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
