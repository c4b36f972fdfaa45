"""Digest authentication on the new message model (transports/sip/auth.py): the RFCs' own examples,
challenges read as servers write them, and our challenge checked against what a client sends back."""

from __future__ import annotations

import contextlib
import hashlib
import random

import pytest

from swml_engine.transports.sip import auth
from swml_engine.transports.sip.auth import (
    MAX_NONCES,
    NONCE_LIFETIME,
    Algorithm,
    AuthError,
    Challenge,
    Credentials,
    DigestChallenge,
    DigestClient,
    Verdict,
    authorization,
    challenge_of,
    parse_challenge,
    parse_challenges,
)
from swml_engine.transports.sip.message import Request, response_to

from .core_messages import invite

RFC2617_CHALLENGE = (
    'Digest realm="testrealm@host.com", qop="auth,auth-int", '
    'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"'
)
RFC7616_SHA256 = (
    'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
    'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
)
RFC7616_MD5 = RFC7616_SHA256.replace("SHA-256", "MD5")
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"


def _param(header: str, name: str) -> str:
    """One parameter of credentials we wrote (values we quote have no commas in these tests)."""
    for part in header.removeprefix("Digest ").split(", "):
        key, _, value = part.partition("=")
        if key == name:
            return value.strip('"')
    raise AssertionError(f"{name} not in {header}")


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


# --- the RFCs' examples ---------------------------------------------------------------------------


def test_rfc2617_example_reproduces_exactly() -> None:
    challenge = parse_challenge(RFC2617_CHALLENGE)
    assert challenge.algorithm is Algorithm.MD5 and challenge.qop == ("auth", "auth-int")
    header = authorization(challenge, "GET", "/dir/index.html", "Mufasa", "Circle Of Life", cnonce="0a4f113b", nc=1)
    assert _param(header, "response") == "6629fae49393a05397450978507c4ef1"
    assert _param(header, "qop") == "auth" and _param(header, "nc") == "00000001"
    assert _param(header, "opaque") == "5ccc069c403ebaf9f0171e9517f40e41"
    assert _param(header, "cnonce") == "0a4f113b" and _param(header, "uri") == "/dir/index.html"


def test_rfc7616_examples_reproduce_exactly_and_sha256_is_preferred() -> None:
    for order in ((RFC7616_SHA256, RFC7616_MD5), (RFC7616_MD5, RFC7616_SHA256)):
        chosen = parse_challenge(*order)
        assert chosen.algorithm is Algorithm.SHA256
        header = authorization(chosen, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=RFC7616_CNONCE)
        assert _param(header, "response") == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"
        assert _param(header, "algorithm") == "SHA-256"
    md5 = authorization(
        parse_challenge(RFC7616_MD5), "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=RFC7616_CNONCE
    )
    assert _param(md5, "response") == "8ca523f5e9506fed4657c9700eebdbec"


def test_session_algorithms_hash_the_client_nonce_into_ha1() -> None:
    nonce, cnonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", RFC7616_CNONCE
    sess = parse_challenge(RFC7616_MD5.replace("algorithm=MD5", "algorithm=MD5-sess"))
    header = authorization(sess, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=cnonce)
    ha1 = _md5(f"{_md5('Mufasa:http-auth@example.org:Circle of Life')}:{nonce}:{cnonce}")
    expected = _md5(f"{ha1}:{nonce}:00000001:{cnonce}:auth:{_md5('GET:/dir/index.html')}")
    assert _param(header, "response") == expected == "e783283f46242139c486a698fec7211d"
    assert _param(header, "algorithm") == "MD5-sess"
    sha_sess = parse_challenge(RFC7616_SHA256.replace("SHA-256", "SHA-256-sess"))
    header = authorization(sha_sess, "GET", "/dir/index.html", "Mufasa", "Circle of Life", cnonce=cnonce)
    assert _param(header, "response") == "2fd51b3a77ad75bad6afad6003e818d767133c46d9e2749e7f5232ae1ea3efd7"


def test_a_server_without_qop_gets_the_rfc2069_answer() -> None:
    challenge = parse_challenge('Digest realm="biloxi.com", nonce="abc"')
    assert challenge.qop == ()
    header = authorization(challenge, "INVITE", "sip:bob@biloxi.com", "bob", "zanzibar", cnonce="unused")
    ha1, ha2 = _md5("bob:biloxi.com:zanzibar"), _md5("INVITE:sip:bob@biloxi.com")
    assert _param(header, "response") == _md5(f"{ha1}:abc:{ha2}")
    assert "nc=" not in header and "cnonce=" not in header and "qop=" not in header


# --- reading challenges ----------------------------------------------------------------------------


def test_challenges_with_commas_and_escapes_in_quotes_several_in_one_header() -> None:
    value = (
        'Basic realm="x, y", Negotiate abc==, '
        'Digest realm="a\\"b,c", nonce="n,1", algorithm=SHA-512-256, '
        'Digest realm="r\\\\s", nonce="n,2", opaque="o", stale=TRUE'
    )
    usable, skipped = parse_challenges(value)
    assert [(c.realm, c.nonce, c.opaque, c.stale) for c in usable] == [("r\\s", "n,2", "o", True)]
    assert skipped == ["scheme Basic", "scheme Negotiate", "algorithm SHA-512-256"]
    chosen = parse_challenge(value)
    assert chosen.realm == "r\\s"
    assert 'realm="r\\\\s"' in authorization(chosen, "INVITE", "sip:x", "u", "p", cnonce="c")


def test_what_cannot_be_answered_is_refused_with_the_reason() -> None:
    with pytest.raises(AuthError, match="auth-int"):
        parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
    with pytest.raises(AuthError, match="SHA-512-256"):
        parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-512-256')
    with pytest.raises(AuthError, match="scheme Basic"):
        parse_challenge('Basic realm="r"')
    with pytest.raises(AuthError, match="given twice"):
        parse_challenge('Digest realm="r", nonce="n", nonce="m"')
    with pytest.raises(AuthError, match="without realm or nonce"):
        parse_challenge('Digest realm="r"')
    with pytest.raises(AuthError, match="no challenge"):
        parse_challenge()
    with pytest.raises(AuthError, match="MD5-sess without qop"):
        parse_challenge('Digest realm="r", nonce="n", algorithm=MD5-sess')


def test_hostile_challenges_are_bounded_and_never_a_traceback() -> None:
    with pytest.raises(AuthError, match="at most 4096"):
        parse_challenge('Digest realm="r", nonce="' + "n" * 5000 + '"')
    with pytest.raises(AuthError, match="at most 1024"):
        parse_challenge('Digest realm="r", nonce="' + "n" * 2000 + '"')
    with pytest.raises(AuthError, match="does not end"):
        parse_challenge('Digest realm="r, nonce=n')
    with pytest.raises(AuthError, match="more than 16 challenges"):
        parse_challenge(", ".join(['Digest realm="r", nonce="n"'] * 17))
    with pytest.raises(AuthError, match="more than 32 parameters"):
        parse_challenge("Digest " + ", ".join(f"p{i}=v" for i in range(40)))
    for junk in ("", ",,,", "=", '"', "Digest ===", "\x00\xff", "Digest realm=", 'Digest , , realm="r"'):
        with contextlib.suppress(AuthError):
            parse_challenge(junk)
    # The server's text in an error is one printable line, cut short (uri.shown).
    with pytest.raises(AuthError) as info:
        parse_challenge('Digest realm="\x1b[2J' + "x" * 300)
    message = str(info.value)
    assert "?[2J" in message and message.isprintable() and "..." in message and len(message) < 90, message


def test_nonce_count_and_client_nonce_are_checked() -> None:
    challenge = parse_challenge(RFC2617_CHALLENGE)
    with pytest.raises(AuthError, match="out of range"):
        authorization(challenge, "GET", "/", "u", "p", cnonce="c", nc=0)
    with pytest.raises(AuthError, match="client nonce"):
        authorization(challenge, "GET", "/", "u", "p", cnonce="")
    assert _param(authorization(challenge, "GET", "/", "u", "p", cnonce="c", nc=255), "nc") == "000000ff"
    with pytest.raises(AuthError, match="control characters"):
        authorization(challenge, "GET", "/", "u\r\nX-Injected: 1", "p", cnonce="c")


def test_401_and_407_name_their_headers() -> None:
    request = invite()
    www = response_to(request, 401, headers=[("WWW-Authenticate", RFC2617_CHALLENGE)])
    assert challenge_of(www).answer_header == "Authorization"
    proxy = response_to(request, 407, headers=[("Proxy-Authenticate", RFC2617_CHALLENGE)])
    assert challenge_of(proxy).proxy and challenge_of(proxy).answer_header == "Proxy-Authorization"
    with pytest.raises(AuthError, match="not a challenge"):
        challenge_of(response_to(request, 200))
    with pytest.raises(AuthError, match="no challenge"):
        challenge_of(response_to(request, 407, headers=[("WWW-Authenticate", RFC2617_CHALLENGE)]))


# --- our challenge, answered by our client --------------------------------------------------------


def _answer(
    server: DigestChallenge, now: float, user: str, password: str, *, nc: int = 1, stale: bool = False
) -> tuple[Request, str]:
    """Challenge an INVITE, answer as a client would: the retried INVITE and its credentials."""
    rejected = response_to(invite(), server.status, headers=server.headers(now, stale=stale), to_tag="t")
    challenge = challenge_of(rejected)
    creds = authorization(challenge, "INVITE", "sip:record@example.org", user, password, cnonce="c0ffee", nc=nc)
    return invite((challenge.answer_header, creds)), creds


def test_round_trip_server_client_server() -> None:
    server = DigestChallenge(rng=random.Random(1))
    retry, _ = _answer(server, 0, "alice", "s3cret")
    assert server.verify(retry, "alice", "s3cret", now=2) is Verdict.ACCEPTED


def test_a_replayed_nonce_count_is_refused_and_a_higher_one_taken() -> None:
    server = DigestChallenge(rng=random.Random(2))
    retry, creds = _answer(server, 0, "alice", "s3cret")
    assert server.verify(retry, "alice", "s3cret", 1) is Verdict.ACCEPTED
    assert server.verify(retry, "alice", "s3cret", 1.5) is Verdict.REPLAYED
    nonce = _param(creds, "nonce")
    challenge = parse_challenge(f'Digest realm="swml-engine", nonce="{nonce}", opaque="{server.opaque}", qop="auth"')
    second = authorization(challenge, "INVITE", "sip:record@example.org", "alice", "s3cret", cnonce="c0ffee", nc=2)
    assert server.verify(invite(("Authorization", second)), "alice", "s3cret", 2) is Verdict.ACCEPTED
    assert server.verify(invite(("Authorization", second)), "alice", "s3cret", 2.5) is Verdict.REPLAYED


def test_wrong_credentials_are_refused() -> None:
    server = DigestChallenge(rng=random.Random(3))
    retry, creds = _answer(server, 0, "alice", "wrong")
    assert server.verify(retry, "alice", "s3cret", 1) is Verdict.REJECTED
    retry, _ = _answer(server, 0, "mallory", "s3cret")
    assert server.verify(retry, "alice", "s3cret", 1) is Verdict.REJECTED
    assert server.verify(invite(), "alice", "s3cret", 1) is Verdict.MISSING
    other_realm = creds.replace('realm="swml-engine"', 'realm="elsewhere"')
    assert server.verify(invite(("Authorization", other_realm)), "alice", "s3cret", 1) is Verdict.MISSING
    # a nonce we never issued (another server's, or ours from before a restart): challenge again
    issued_elsewhere, _ = _answer(DigestChallenge(rng=random.Random(99)), 0, "alice", "s3cret")
    assert server.verify(issued_elsewhere, "alice", "s3cret", 1) is Verdict.UNKNOWN_NONCE
    tampered_opaque = _answer(server, 0, "alice", "s3cret")[1].replace(server.opaque, "0" * 16)
    assert server.verify(invite(("Authorization", tampered_opaque)), "alice", "s3cret", 1) is Verdict.REJECTED
    for junk in ("Basic YWxpY2U6czNjcmV0", "Digest", 'Digest realm="swml-engine", nc="zz"', '"', "\x00\xff"):
        assert server.verify(invite(("Authorization", junk)), "alice", "s3cret", 1) in (
            Verdict.MISSING,
            Verdict.REJECTED,
            Verdict.UNKNOWN_NONCE,
        )


def test_an_expired_nonce_is_stale_and_the_next_challenge_says_so() -> None:
    server = DigestChallenge(rng=random.Random(4))
    retry, _ = _answer(server, 0, "alice", "s3cret")
    assert server.verify(retry, "alice", "s3cret", NONCE_LIFETIME + 1) is Verdict.STALE
    # only a right password earns "stale" (else a guesser would be told to try again quietly)
    wrong, _ = _answer(server, 0, "alice", "guess")
    assert server.verify(wrong, "alice", "s3cret", NONCE_LIFETIME + 1) is Verdict.REJECTED
    again = response_to(invite(), 401, headers=server.headers(NONCE_LIFETIME + 1, stale=True))
    assert challenge_of(again).stale
    assert not challenge_of(response_to(invite(), 401, headers=server.headers(0))).stale
    fresh, _ = _answer(server, NONCE_LIFETIME + 1, "alice", "s3cret")
    assert server.verify(fresh, "alice", "s3cret", NONCE_LIFETIME + 2) is Verdict.ACCEPTED


def test_sha256_is_offered_first_and_either_answer_is_taken() -> None:
    server = DigestChallenge(rng=random.Random(5), algorithms=(Algorithm.SHA256, Algorithm.MD5))
    headers = server.headers(0)
    assert [v.split("algorithm=")[1].split(",")[0] for _, v in headers] == ["SHA-256", "MD5"]
    challenge = parse_challenge(*(v for _, v in headers))
    assert challenge.algorithm is Algorithm.SHA256
    creds = authorization(challenge, "INVITE", "sip:record@example.org", "alice", "pw", cnonce="c1")
    assert server.verify(invite(("Authorization", creds)), "alice", "pw", 1) is Verdict.ACCEPTED
    md5 = parse_challenge(headers[1][1])
    creds = authorization(md5, "INVITE", "sip:record@example.org", "alice", "pw", cnonce="c1", nc=2)
    assert server.verify(invite(("Authorization", creds)), "alice", "pw", 2) is Verdict.ACCEPTED


def test_an_algorithm_we_did_not_offer_is_refused() -> None:
    server = DigestChallenge(rng=random.Random(6))
    nonce = server.headers(0)[0][1].split('nonce="')[1].split('"')[0]
    sha = parse_challenge(
        f'Digest realm="swml-engine", nonce="{nonce}", opaque="{server.opaque}", qop="auth", algorithm=SHA-256'
    )
    creds = authorization(sha, "INVITE", "sip:record@example.org", "alice", "pw", cnonce="c1")
    assert server.verify(invite(("Authorization", creds)), "alice", "pw", 1) is Verdict.REJECTED


def test_a_client_without_qop_gets_one_request_per_nonce() -> None:
    server = DigestChallenge(rng=random.Random(7))
    nonce = server.headers(0)[0][1].split('nonce="')[1].split('"')[0]
    old = parse_challenge(f'Digest realm="swml-engine", nonce="{nonce}", opaque="{server.opaque}"')
    creds = authorization(old, "INVITE", "sip:record@example.org", "alice", "pw", cnonce="")
    assert server.verify(invite(("Authorization", creds)), "alice", "pw", 1) is Verdict.ACCEPTED
    assert server.verify(invite(("Authorization", creds)), "alice", "pw", 2) is Verdict.REPLAYED


def test_nonces_come_from_the_given_source_and_are_bounded() -> None:
    assert DigestChallenge(rng=random.Random(8)).headers(0) == DigestChallenge(rng=random.Random(8)).headers(0)
    assert DigestChallenge(rng=random.Random(8)).headers(0) != DigestChallenge(rng=random.Random(9)).headers(0)
    server = DigestChallenge(rng=random.Random(10))
    first, _ = _answer(server, 0, "alice", "pw")
    for _ in range(MAX_NONCES + 10):
        server.headers(1)  # a flood of challenges within one second: the oldest nonces give way
    assert server.verify(first, "alice", "pw", 2) is Verdict.UNKNOWN_NONCE
    assert len(server._nonces) <= MAX_NONCES
    quiet = DigestChallenge(rng=random.Random(12))
    old, _ = _answer(quiet, 0, "alice", "pw")
    quiet.headers(2 * NONCE_LIFETIME + 1)  # long past its lifetime, a nonce is forgotten
    assert quiet.verify(old, "alice", "pw", 2 * NONCE_LIFETIME + 2) is Verdict.UNKNOWN_NONCE
    assert len(quiet._nonces) == 1


def test_a_proxy_challenge_uses_the_proxy_headers() -> None:
    server = DigestChallenge(rng=random.Random(11), proxy=True)
    assert server.status == 407 and server.headers(0)[0][0] == "Proxy-Authenticate"
    retry, _ = _answer(server, 0, "alice", "pw")
    assert retry.headers.get("proxy-authorization") and not retry.headers.get("authorization")
    assert server.verify(retry, "alice", "pw", 1) is Verdict.ACCEPTED
    assert DigestChallenge(rng=random.Random(11)).verify(retry, "alice", "pw", 1) is Verdict.MISSING


def test_a_bad_realm_or_algorithm_list_is_a_clear_error() -> None:
    for realm in ('a"b', "a\r\nb", ""):
        with pytest.raises(ValueError, match="realm"):
            DigestChallenge(realm)
    with pytest.raises(ValueError, match="MD5 and/or SHA-256"):
        DigestChallenge(algorithms=())
    with pytest.raises(ValueError, match="MD5 and/or SHA-256"):
        DigestChallenge(algorithms=(Algorithm.MD5_SESS,))


# --- one client's answers over several requests (DigestClient) ---------------------------------------


def _challenge(realm: str, nonce: str, *, proxy: bool = False, stale: bool = False) -> Challenge:
    extra = ", stale=true" if stale else ""
    return parse_challenge(f'Digest realm="{realm}", nonce="{nonce}", qop="auth"{extra}', proxy=proxy)


def test_a_client_answers_a_challenge_on_each_request_after_it_with_the_count_rising() -> None:
    server = DigestChallenge(rng=random.Random(7))
    client = DigestClient(Credentials("alice", "s3cret"), random.Random(8))
    assert client.headers("INVITE", "sip:bob@example.org") == []  # nothing taken yet
    rejected = response_to(invite(), 401, headers=server.headers(0), to_tag="t")
    assert client.take(challenge_of(rejected)) is None
    for n in (1, 2, 3):
        [(name, value)] = client.headers("INVITE", "sip:record@example.org")
        assert name == "Authorization" and _param(value, "nc") == f"{n:08x}"
        assert server.verify(invite((name, value)), "alice", "s3cret", now=n) is Verdict.ACCEPTED


def test_a_proxy_and_the_far_end_are_answered_together_one_challenge_per_realm() -> None:
    client = DigestClient(Credentials("alice", "s3cret"), random.Random(1))
    client.take(_challenge("proxy.example", "p1", proxy=True))
    client.take(_challenge("far.example", "f1"))
    client.take(_challenge("far.example", "f2"))  # a new nonce for the same realm replaces the first
    headers = client.headers("BYE", "sip:bob@example.org")
    assert [(name, _param(value, "nonce")) for name, value in headers] == [
        ("Proxy-Authorization", "p1"),
        ("Authorization", "f2"),
    ]


def test_the_same_nonce_again_means_refused_unless_stale_or_in_a_new_attempt() -> None:
    client = DigestClient(Credentials("alice", "wrong"), random.Random(1))
    assert client.take(_challenge("r", "n1")) is None
    assert client.answered == 1
    assert client.take(_challenge("r", "n1")) == "credentials refused (the same nonce challenged again)"
    assert client.take(_challenge("r", "n1", stale=True)) is None  # expired, not refused
    client.new_attempt()  # a registration's refresh: the registrar may challenge with that nonce again
    assert client.answered == 0
    assert client.take(_challenge("r", "n1")) is None
    [(_, value)] = client.headers("REGISTER", "sip:example.org")
    assert _param(value, "nc") == "00000001"  # a nonce taken again counts from 1
    client.forget(_challenge("r", "n1"))
    assert client.headers("REGISTER", "sip:example.org") == []


def test_a_client_without_credentials_answers_nothing() -> None:
    client = DigestClient(None, random.Random(1))
    assert client.take(_challenge("r", "n1")) == "no credentials given"
    assert client.headers("INVITE", "sip:bob@example.org") == []


def test_a_client_remembers_a_bounded_number_of_realms_and_nonces(monkeypatch: pytest.MonkeyPatch) -> None:
    client = DigestClient(Credentials("alice", "s3cret"), random.Random(1))
    for i in range(DigestClient.MAX_REALMS + 3):
        client.take(_challenge(f"realm{i}", f"n{i}"))
    realms = [_param(value, "realm") for _, value in client.headers("INVITE", "sip:bob@example.org")]
    assert realms == [f"realm{i}" for i in range(3, DigestClient.MAX_REALMS + 3)]  # the oldest forgotten
    for i in range(DigestClient.MAX_NONCES + 10):
        client.take(_challenge("many", f"m{i}"))
    assert client.answered == DigestClient.MAX_NONCES
    # A nonce whose count runs out is dropped: the server's next challenge brings a new one.
    monkeypatch.setattr(auth, "MAX_NC", 2)
    one = DigestClient(Credentials("alice", "s3cret"), random.Random(1))
    one.take(_challenge("r", "n1"))
    assert len(one.headers("INVITE", "sip:bob@example.org")) == 1
    assert len(one.headers("INVITE", "sip:bob@example.org")) == 1
    assert one.headers("INVITE", "sip:bob@example.org") == []
