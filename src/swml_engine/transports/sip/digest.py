"""Digest authentication of a caller (RFC 3261 §22, RFC 7616): ``answer.username``/``answer.password``.

Before answering, the INVITE is challenged with ``401 Unauthorized`` and a fresh nonce; the caller
sends the INVITE again with an ``Authorization`` header, whose response we recompute from the password
(the computation is aiosipua's, the same a client uses) and compare in constant time.
"""

from __future__ import annotations

import hmac
import secrets

from aiosipua.auth import SipDigestAuth, build_credentials
from aiosipua.headers import AuthChallenge, parse_auth
from aiosipua.message import SipRequest

REALM = "swml-engine"


class DigestChallenge:
    """One challenge: its nonce is good for the one retried INVITE that answers it."""

    def __init__(self, realm: str = REALM) -> None:
        self.realm = realm
        self.nonce = secrets.token_hex(16)

    def header(self) -> str:
        """The ``WWW-Authenticate`` value."""
        return f'Digest realm="{self.realm}", nonce="{self.nonce}", algorithm=MD5, qop="auth"'

    def verify(self, request: SipRequest, username: str, password: str) -> bool:
        """True when ``request`` carries credentials for this challenge made with this password."""
        value = request.get_header("authorization")
        if not value:
            return False
        try:
            given = parse_auth(value)
            p = given.params
            nc = int(p.get("nc", "1"), 16)
        except (ValueError, IndexError, KeyError):
            return False
        if given.scheme.lower() != "digest" or p.get("nonce") != self.nonce or p.get("realm") != self.realm:
            return False
        if not hmac.compare_digest(p.get("username", "").encode(), username.encode()):
            return False
        params = {"nonce": self.nonce, "realm": self.realm, "algorithm": p.get("algorithm", "MD5")}
        if p.get("qop"):
            params["qop"] = p["qop"]
        expected = build_credentials(
            SipDigestAuth(username, password),
            AuthChallenge("Digest", params),
            request.method,
            p.get("uri", ""),
            nonce_count=nc,
            cnonce=p.get("cnonce", ""),
        )
        return expected is not None and hmac.compare_digest(
            expected.params["response"].encode(), p.get("response", "").encode()
        )
