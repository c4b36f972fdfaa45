"""Who may use the HTTP API, and signed recording URLs that work without it.

Every ``/api`` request carries ``Authorization: Bearer <token>``: the token comes from ``--api-token``
or ``SWML_API_TOKEN``; with neither, one is generated on first start, kept in ``<data>/api-token``
(mode 600, shared by every worker and every later start) and printed once.

``record_call_url``/``record_url`` under ``swml serve --http`` are ``<public>/recordings/<id>.<fmt>``
with ``expires`` (Unix time) and ``signature`` (HMAC-SHA256 of the path and expiry with a secret kept
in ``<data>/url-secret``): a status-callback receiver can fetch the audio without the API token, and a
changed path, expiry or signature, or a URL past its expiry, gets 403.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

TOKEN_FILE = "api-token"
SECRET_FILE = "url-secret"


def _read_or_create(path: Path, make: str) -> tuple[str, bool]:
    """The file's text, creating it with ``make`` (readable by the owner only) when missing; also
    whether this call created it. O_EXCL keeps two workers starting at once from writing both."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_text().strip(), False
    with os.fdopen(fd, "w") as f:
        f.write(make + "\n")
    return make, True


def api_token(data: Path, given: str | None) -> tuple[str, bool]:
    """The API token, and whether it was generated just now (to be printed once)."""
    if given:
        return given, False
    data.mkdir(parents=True, exist_ok=True)
    return _read_or_create(data / TOKEN_FILE, secrets.token_urlsafe(32))


def token_matches(header: str | None, token: str) -> bool:
    if not header or not header.startswith("Bearer "):
        return False
    return hmac.compare_digest(header[7:].strip().encode(), token.encode())


class UrlSigner:
    """Signs and checks recording URLs."""

    def __init__(self, data: Path) -> None:
        data.mkdir(parents=True, exist_ok=True)
        self._key = _read_or_create(data / SECRET_FILE, secrets.token_hex(32))[0].encode()

    def signature(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, path: str, expires: int) -> str:
        """``path?expires=..&signature=..``"""
        return f"{path}?expires={expires}&signature={self.signature(path, expires)}"

    def valid(self, path: str, expires: str | None, signature: str | None, now: float) -> bool:
        if not expires or not signature or not expires.isdigit():
            return False
        if int(expires) < now:
            return False
        return hmac.compare_digest(self.signature(path, int(expires)), signature)
