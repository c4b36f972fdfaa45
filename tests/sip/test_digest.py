"""Digest authentication of callers: the challenge we send and the check of what comes back."""

from __future__ import annotations

from aiosipua.auth import SipDigestAuth, build_credentials
from aiosipua.headers import parse_auth, stringify_auth
from aiosipua.message import SipRequest

from swml_engine.transports.sip.digest import DigestChallenge


def _invite(authorization: str | None) -> SipRequest:
    req = SipRequest(method="INVITE", uri="sip:record@127.0.0.1:5060")
    if authorization is not None:
        req.headers.set_single("Authorization", authorization)
    return req


def _answer(challenge: DigestChallenge, user: str, password: str) -> str:
    cred = build_credentials(SipDigestAuth(user, password), parse_auth(challenge.header()), "INVITE", "sip:record@x")
    assert cred is not None
    return stringify_auth(cred)


def test_digest_challenge_accepts_only_the_right_password_for_its_nonce() -> None:
    challenge = DigestChallenge()
    assert 'qop="auth"' in challenge.header() and challenge.nonce in challenge.header()
    assert challenge.verify(_invite(_answer(challenge, "alice", "s3cret")), "alice", "s3cret")
    assert not challenge.verify(_invite(_answer(challenge, "alice", "wrong")), "alice", "s3cret")
    assert not challenge.verify(_invite(_answer(challenge, "bob", "s3cret")), "alice", "s3cret")
    assert not challenge.verify(_invite(_answer(DigestChallenge(), "alice", "s3cret")), "alice", "s3cret")
    assert not challenge.verify(_invite(None), "alice", "s3cret")
    for junk in ("Basic YWxpY2U6czNjcmV0", "Digest", 'Digest nc="zz", nonce="x"', "\x00\xff"):
        assert not challenge.verify(_invite(junk), "alice", "s3cret")
