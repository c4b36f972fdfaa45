"""Digest authentication over SIP (RFC 3261 §22 with RFC 2617 / RFC 7616's digest), both sides, no I/O.

Server side (we challenge a caller): :class:`DigestChallenge` issues nonces from a random source it is
given, writes the ``WWW-Authenticate`` (or ``Proxy-Authenticate``) values, and checks an
``Authorization`` against one of its nonces: the response recomputed from the password and compared in
constant time, the nonce count increasing per nonce (a replayed request is refused), a nonce past its
lifetime answered "stale" so the next challenge says ``stale=true`` and the client retries without asking
its user again. Time comes in as ``now`` (seconds, the core's clock as the transactions take it), never
read here.

Client side (we are challenged): :func:`parse_challenge` reads the challenges of one or more header
values (quoted strings with commas and escapes, several challenges in one value, other schemes and
unknown algorithms skipped) and picks the strongest we can answer; :func:`authorization` computes the
``Authorization``/``Proxy-Authorization`` value for ``qop=auth`` or, for servers of RFC 2069's day, no
qop. ``auth-int`` (a digest of the body) is not done: a server that offers only it gets a clear error.
:class:`DigestClient` keeps one client's answers (a registration's, a call's): which challenges go on
the next request, the nonce counts, and when a challenge means the password is refused.

Not done: ``userhash`` and ``username*`` (RFC 7616 §3.4.4), SHA-512-256, ``Authentication-Info``.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import re
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from swml_engine.transports.sip.message import Request, Response
from swml_engine.transports.sip.uri import shown

#: Our realm when none is given (what callers' phones show when asking for a password).
REALM = "swml-engine"
#: Longest challenge or credentials header value read; real ones are a few hundred characters.
MAX_HEADER = 4096
#: Longest single parameter value (a nonce, a realm, a URI).
MAX_PARAM = 1024
#: Challenges read from one header value, and parameters in one challenge: far above real ones.
MAX_CHALLENGES = 16
MAX_PARAMS = 32
#: How long a nonce we issue is good for (seconds): long enough for a person to type a password.
NONCE_LIFETIME = 300.0
#: Nonces remembered at once; past this the oldest is forgotten (its client is challenged again).
MAX_NONCES = 4096
#: Largest nonce count (8 hex digits, RFC 7616 §3.4).
MAX_NC = 0xFFFFFFFF


class AuthError(ValueError):
    """A challenge we cannot answer, or credentials we cannot build; the message says why."""


class Algorithm(StrEnum):
    """Digest algorithms we compute (RFC 7616 §3.3): the ``-sess`` forms hash the client nonce in too."""

    MD5 = "MD5"
    MD5_SESS = "MD5-sess"
    SHA256 = "SHA-256"
    SHA256_SESS = "SHA-256-sess"

    @property
    def session(self) -> bool:
        return self.value.endswith("-sess")

    def hash(self, text: str) -> str:
        data = text.encode("utf-8")
        if self in (Algorithm.SHA256, Algorithm.SHA256_SESS):
            return hashlib.sha256(data).hexdigest()
        return hashlib.md5(data, usedforsecurity=False).hexdigest()


#: The order a client prefers challenges in (strongest first, RFC 7616 §3.7).
_PREFERENCE = (Algorithm.SHA256, Algorithm.SHA256_SESS, Algorithm.MD5, Algorithm.MD5_SESS)
_BY_NAME = {a.value.lower(): a for a in Algorithm}


# --- reading auth headers (RFC 7235 §2.1: challenges and credentials share one grammar) ----------

_TOKEN = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")


@dataclass(frozen=True)
class _Scheme:
    """One challenge or one set of credentials as written: the scheme and its parameters (names in
    lower case), or a problem that makes it unusable (a repeated parameter, say)."""

    name: str
    params: dict[str, str]
    problem: str = ""


def _read_schemes(value: str) -> list[_Scheme]:
    """Every ``Scheme param=value, ...`` in a header value, in order. Raises AuthError for text that
    cannot be read at all (an unterminated quote, a value past the limits)."""
    if len(value) > MAX_HEADER:
        raise AuthError(f"an authentication header of {len(value)} characters (at most {MAX_HEADER})")
    out: list[_Scheme] = []
    pos = 0
    end = len(value)

    def skip(chars: str) -> None:
        nonlocal pos
        while pos < end and value[pos] in chars:
            pos += 1

    def token() -> str:
        nonlocal pos
        m = _TOKEN.match(value, pos)
        if m is None:
            return ""
        pos = m.end()
        return m.group()

    def quoted() -> str:
        nonlocal pos
        chars: list[str] = []
        pos += 1  # the opening quote
        while pos < end:
            c = value[pos]
            if c == "\\" and pos + 1 < end:
                chars.append(value[pos + 1])
                pos += 2
            elif c == '"':
                pos += 1
                return "".join(chars)
            else:
                chars.append(c)
                pos += 1
        raise AuthError(f"{shown(value)!r}: a quoted string that does not end")

    skip(" \t,")
    while pos < end:
        scheme = token()
        if not scheme:
            raise AuthError(f"{shown(value)!r}: expected an authentication scheme at {shown(value[pos:])!r}")
        if len(out) >= MAX_CHALLENGES:
            raise AuthError(f"more than {MAX_CHALLENGES} challenges in one header")
        params: dict[str, str] = {}
        problem = ""
        skip(" \t")
        while pos < end and value[pos] != ",":
            # a parameter (name=value) or, for schemes such as Basic, a token68 (base64 text)
            start = pos
            name = token()
            skip(" \t")
            if not name or pos >= end or value[pos] != "=":
                pos = start
                while pos < end and value[pos] not in ", \t":
                    pos += 1  # token68: skipped, no digest scheme uses one
                skip(" \t")
                continue
            pos += 1
            skip(" \t")
            if pos < end and value[pos] == '"':
                text = quoted()
            else:
                text = token()
                if not text:  # "abc==": the rest of a token68
                    while pos < end and value[pos] not in ", \t":
                        pos += 1
                    skip(" \t")
                    continue
            if len(text) > MAX_PARAM:
                raise AuthError(f"parameter {name!r} of {len(text)} characters (at most {MAX_PARAM})")
            key = name.lower()
            if key in params:
                problem = f"parameter {key!r} given twice"
            if len(params) >= MAX_PARAMS:
                raise AuthError(f"more than {MAX_PARAMS} parameters in one challenge")
            params[key] = text
            skip(" \t")
            if pos < end and value[pos] == ",":
                # a comma ends this parameter; what follows is another parameter or a new scheme
                after = pos + 1
                while after < end and value[after] in " \t,":
                    after += 1
                m = _TOKEN.match(value, after)
                if m is not None and value[m.end() :].lstrip(" \t").startswith("="):
                    pos = after
                    continue
                break
        out.append(_Scheme(scheme, params, problem))
        skip(" \t,")
    return out


def _unsafe(text: str) -> bool:
    """Whether ``text`` holds control characters: written into a header they would end the line."""
    return any(ord(c) < 0x20 or c == "\x7f" for c in text)


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- client side ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Challenge:
    """A digest challenge we can answer. ``proxy``: it came in a Proxy-Authenticate (407), so the
    answer goes in Proxy-Authorization."""

    realm: str
    nonce: str
    algorithm: Algorithm = Algorithm.MD5
    #: The qop values offered, lower case ("" means none: an RFC 2069 server).
    qop: tuple[str, ...] = ()
    opaque: str | None = None
    stale: bool = False
    proxy: bool = False

    @property
    def answer_header(self) -> str:
        """The header the credentials go in."""
        return "Proxy-Authorization" if self.proxy else "Authorization"


def parse_challenges(value: str, *, proxy: bool = False) -> tuple[list[Challenge], list[str]]:
    """The digest challenges of one header value we can answer, and why each other one was skipped."""
    usable: list[Challenge] = []
    skipped: list[str] = []
    for scheme in _read_schemes(value):
        if scheme.name.lower() != "digest":
            skipped.append(f"scheme {scheme.name}")
            continue
        p = scheme.params
        if scheme.problem:
            skipped.append(f"a Digest challenge with {scheme.problem}")
            continue
        if "realm" not in p or not p.get("nonce"):
            skipped.append("a Digest challenge without realm or nonce")
            continue
        algorithm = _BY_NAME.get(p.get("algorithm", "MD5").lower())
        if algorithm is None:
            skipped.append(f"algorithm {shown(p['algorithm'])}")
            continue
        qop = tuple(q.strip().lower() for q in p.get("qop", "").split(",") if q.strip())
        if qop and "auth" not in qop:
            skipped.append(f"qop={','.join(qop)} (only qop=auth is done, not auth-int)")
            continue
        if algorithm.session and not qop:
            skipped.append(f"{algorithm} without qop (it needs a client nonce)")
            continue
        usable.append(
            Challenge(
                realm=p["realm"],
                nonce=p["nonce"],
                algorithm=algorithm,
                qop=qop,
                opaque=p.get("opaque"),
                stale=p.get("stale", "").lower() == "true",
                proxy=proxy,
            )
        )
    return usable, skipped


def parse_challenge(*values: str, proxy: bool = False) -> Challenge:
    """The challenge to answer among those of ``values`` (each a WWW-Authenticate or Proxy-Authenticate
    value): the strongest algorithm we do. Raises AuthError naming what was offered when none fits."""
    usable: list[Challenge] = []
    skipped: list[str] = []
    for value in values:
        found, why = parse_challenges(value, proxy=proxy)
        usable += found
        skipped += why
    if not usable:
        offered = "; ".join(skipped) if skipped else "no challenge at all"
        raise AuthError(f"no digest challenge we can answer ({offered})")
    return min(usable, key=lambda c: _PREFERENCE.index(c.algorithm))


def challenge_of(response: Response) -> Challenge:
    """The challenge of a 401 (WWW-Authenticate) or 407 (Proxy-Authenticate). Raises AuthError."""
    if response.status not in (401, 407):
        raise AuthError(f"a {response.status} is not a challenge (401 or 407 is)")
    proxy = response.status == 407
    values = response.headers.get_all("proxy-authenticate" if proxy else "www-authenticate")
    return parse_challenge(*values, proxy=proxy)


def _digest(
    alg: Algorithm,
    username: str,
    realm: str,
    password: str,
    nonce: str,
    method: str,
    uri: str,
    qop: str,
    count: str,
    cnonce: str,
) -> str:
    """The ``response`` value (RFC 7616 §3.4.1; without qop, RFC 2069's form)."""
    ha1 = alg.hash(f"{username}:{realm}:{password}")
    if alg.session:
        ha1 = alg.hash(f"{ha1}:{nonce}:{cnonce}")
    ha2 = alg.hash(f"{method}:{uri}")
    if qop:
        return alg.hash(f"{ha1}:{nonce}:{count}:{cnonce}:{qop}:{ha2}")
    return alg.hash(f"{ha1}:{nonce}:{ha2}")


def authorization(
    challenge: Challenge,
    method: str,
    uri: str,
    username: str,
    password: str,
    *,
    cnonce: str,
    nc: int = 1,
) -> str:
    """The credentials answering ``challenge`` for a request (``method``, ``uri`` its Request-URI), as
    the value of ``challenge.answer_header``. ``cnonce`` (our nonce) and ``nc`` (how many requests this
    nonce has served, from 1) are the caller's, so a test can give fixed ones."""
    if not 1 <= nc <= MAX_NC:
        raise AuthError(f"nonce count {nc} is out of range (1 to {MAX_NC})")
    if _unsafe(username) or _unsafe(uri) or _unsafe(method):
        raise AuthError("a user name, method or URI with control characters (a line break?) cannot go in a header")
    qop = "auth" if challenge.qop else ""
    if challenge.qop and "auth" not in challenge.qop:
        raise AuthError("the server asks for qop=auth-int (a digest of the body), which this engine does not do")
    needs_cnonce = bool(qop) or challenge.algorithm.session
    if needs_cnonce and (not cnonce or '"' in cnonce or "\\" in cnonce):
        raise AuthError("a client nonce is needed (no quotes or backslashes in it)")
    count = f"{nc:08x}"
    response = _digest(
        challenge.algorithm, username, challenge.realm, password, challenge.nonce, method, uri, qop, count, cnonce
    )
    parts = [
        f"username={_quote(username)}",
        f"realm={_quote(challenge.realm)}",
        f"nonce={_quote(challenge.nonce)}",
        f"uri={_quote(uri)}",
        f"response={_quote(response)}",
        f"algorithm={challenge.algorithm}",
    ]
    if challenge.opaque is not None:
        parts.append(f"opaque={_quote(challenge.opaque)}")
    if qop:
        parts += [f"qop={qop}", f"nc={count}", f"cnonce={_quote(cnonce)}"]
    return "Digest " + ", ".join(parts)


@dataclass(frozen=True)
class Credentials:
    """The user name and password we answer digest challenges with (any realm; the password is never shown)."""

    username: str
    password: str = field(repr=False)


class DigestClient:
    """One client's answers to digest challenges (RFC 3261 §22.2-22.3): a registration's, a call's.

    - :meth:`take` a challenge when it comes; from then on :meth:`headers` answers it on every request,
      with its nonce count rising (a server may take credentials without challenging each request). The
      last challenge per realm is kept: a proxy's 407 and the far end's 401 are answered together.
    - A challenge repeating a nonce answered since :meth:`new_attempt` means the credentials are refused,
      unless it says ``stale=true`` (the nonce expired, the password was right).
    - Bounded: :attr:`MAX_REALMS` challenges and :attr:`MAX_NONCES` nonces, the oldest forgotten first; a
      nonce whose count runs out is dropped (the server's next challenge brings a new one).
    """

    MAX_REALMS = 4
    MAX_NONCES = 32

    def __init__(self, credentials: Credentials | None, rng: random.Random) -> None:
        self.credentials = credentials
        #: Where client nonces come from (the user agent's: seeded in tests).
        self.rng = rng
        #: The challenge answered per (proxy, realm), in the order taken.
        self._current: dict[tuple[bool, str], Challenge] = {}
        #: Requests each nonce has answered (its nonce count).
        self._counts: dict[str, int] = {}
        #: Nonces taken since the attempt began (a dict as an ordered set).
        self._answered: dict[str, None] = {}

    @property
    def answered(self) -> int:
        """Challenges taken since the attempt began."""
        return len(self._answered)

    def new_attempt(self) -> None:
        """A new try of the request (a registration's refresh): the nonces answered so far may be
        challenged again without meaning the password is refused."""
        self._answered.clear()

    def take(self, challenge: Challenge) -> str | None:
        """Take ``challenge`` for the next request: None when it may be answered, else why not."""
        if self.credentials is None:
            return "no credentials given"
        if challenge.nonce in self._answered and not challenge.stale:
            return "credentials refused (the same nonce challenged again)"
        key = (challenge.proxy, challenge.realm)
        self._current.pop(key, None)
        self._current[key] = challenge
        _bound(self._current, self.MAX_REALMS)
        self._counts.pop(challenge.nonce, None)
        self._counts[challenge.nonce] = 0
        _bound(self._counts, self.MAX_NONCES)
        self._answered[challenge.nonce] = None
        _bound(self._answered, self.MAX_NONCES)
        return None

    def forget(self, challenge: Challenge) -> None:
        """Stop answering ``challenge``'s realm (its credentials were refused)."""
        self._current.pop((challenge.proxy, challenge.realm), None)

    def headers(self, method: str, uri: str) -> list[tuple[str, str]]:
        """The credentials for a request (``uri`` its Request-URI), one header per realm taken. Raises
        AuthError for a user name, method or URI that cannot go in a header."""
        out: list[tuple[str, str]] = []
        if self.credentials is None:
            return out
        for key, challenge in list(self._current.items()):
            count = self._counts.get(challenge.nonce, 0) + 1
            if count > MAX_NC:
                del self._current[key]
                continue
            self._counts[challenge.nonce] = count
            value = authorization(
                challenge,
                method,
                uri,
                self.credentials.username,
                self.credentials.password,
                cnonce=f"{self.rng.getrandbits(64):016x}",
                nc=count,
            )
            out.append((challenge.answer_header, value))
        return out


def _bound(table: dict[Any, Any], most: int) -> None:
    """Forget the oldest entries of ``table`` past ``most``."""
    while len(table) > most:
        del table[next(iter(table))]


# --- server side ------------------------------------------------------------------------------------


class Verdict(StrEnum):
    """What a request's credentials are worth against our challenge, and what to answer:

    - ``accepted``: go on;
    - ``missing`` (no credentials for our realm), ``unknown_nonce`` (a nonce we did not issue or have
      forgotten), ``stale`` (right password, nonce past its lifetime): challenge again — with
      ``stale=true`` for ``stale``, so the client retries without asking its user;
    - ``rejected`` (wrong user, password, realm or algorithm; unreadable credentials) and ``replayed``
      (a nonce count not above the last one seen): 403.
    """

    ACCEPTED = "accepted"
    MISSING = "missing"
    UNKNOWN_NONCE = "unknown_nonce"
    STALE = "stale"
    REJECTED = "rejected"
    REPLAYED = "replayed"


@dataclass
class _Nonce:
    issued_at: float
    #: The highest nonce count accepted so far (0: none yet).
    last_nc: int = 0


class DigestChallenge:
    """Our digest challenges and the check of what answers them (RFC 3261 §22.2, RFC 7616 §3.3-3.4).

    ``rng``: where nonces and the opaque come from (``random.SystemRandom()`` by default; tests give a
    seeded ``random.Random``).
    ``algorithms``: offered in this order, one challenge each with the same nonce (RFC 7616 §3.7 puts
    SHA-256 first). ``proxy``: challenge as a proxy (407, Proxy-Authenticate / Proxy-Authorization).
    """

    def __init__(
        self,
        realm: str = REALM,
        *,
        rng: random.Random | None = None,
        algorithms: Iterable[Algorithm] = (Algorithm.MD5,),
        lifetime: float = NONCE_LIFETIME,
        proxy: bool = False,
    ) -> None:
        if not realm or _unsafe(realm) or '"' in realm or "\\" in realm:
            raise ValueError(
                f"digest realm {realm!r}: give a non-empty realm without quotes, backslashes or control characters"
            )
        self.realm = realm
        self.algorithms = tuple(algorithms)
        if not self.algorithms or any(a.session for a in self.algorithms):
            raise ValueError("offer MD5 and/or SHA-256 (the -sess forms are for clients that ask for them)")
        self.lifetime = lifetime
        self.proxy = proxy
        self._rng = rng if rng is not None else random.SystemRandom()
        self.opaque = f"{self._rng.getrandbits(64):016x}"
        self._nonces: OrderedDict[str, _Nonce] = OrderedDict()

    @property
    def header_name(self) -> str:
        return "Proxy-Authenticate" if self.proxy else "WWW-Authenticate"

    @property
    def status(self) -> int:
        return 407 if self.proxy else 401

    def headers(self, now: float, *, stale: bool = False) -> list[tuple[str, str]]:
        """The challenge headers of a 401/407 (one per algorithm), with a fresh nonce issued at ``now``
        (seconds). ``stale``: the last credentials were right but their nonce had expired (Verdict.STALE)."""
        nonce = f"{self._rng.getrandbits(128):032x}"
        # Nonces are kept in the order issued: the long expired and, past the bound, the oldest go.
        while self._nonces and (
            len(self._nonces) >= MAX_NONCES or now - next(iter(self._nonces.values())).issued_at > 2 * self.lifetime
        ):
            self._nonces.popitem(last=False)
        self._nonces[nonce] = _Nonce(issued_at=now)
        extra = ", stale=true" if stale else ""
        return [
            (
                self.header_name,
                f'Digest realm="{self.realm}", nonce="{nonce}", opaque="{self.opaque}", '
                f'algorithm={algorithm}, qop="auth"{extra}',
            )
            for algorithm in self.algorithms
        ]

    def verify(self, request: Request, username: str, password: str, now: float) -> Verdict:
        """Check the request's Authorization (Proxy-Authorization for a proxy) against our nonces."""
        name = "proxy-authorization" if self.proxy else "authorization"
        ours: _Scheme | None = None
        for value in request.headers.get_all(name):
            try:
                schemes = _read_schemes(value)
            except AuthError:
                return Verdict.REJECTED
            for scheme in schemes:
                if scheme.name.lower() == "digest" and scheme.params.get("realm") == self.realm:
                    ours = scheme
        if ours is None:
            return Verdict.MISSING
        p = ours.params
        state = self._nonces.get(p.get("nonce", ""))
        if state is None:
            return Verdict.UNKNOWN_NONCE
        expected = self._expected(ours, request.method, password)
        if expected is None or not hmac.compare_digest(p.get("username", "").encode("utf-8"), username.encode("utf-8")):
            return Verdict.REJECTED
        if not hmac.compare_digest(expected.encode(), p.get("response", "").lower().encode()):
            return Verdict.REJECTED
        # Without qop there is no count: such a nonce serves one request only.
        nc = int(p["nc"], 16) if "qop" in p else 1
        if nc <= state.last_nc:
            return Verdict.REPLAYED
        if now - state.issued_at > self.lifetime:
            return Verdict.STALE
        state.last_nc = nc
        return Verdict.ACCEPTED

    def _expected(self, creds: _Scheme, method: str, password: str) -> str | None:
        """The response the credentials should carry, or None when they do not fit our challenge
        (another opaque, an algorithm or qop we did not offer, a count that is not 8 hex digits)."""
        p = creds.params
        if creds.problem or p.get("opaque") != self.opaque:
            return None
        algorithm = _BY_NAME.get(p.get("algorithm", "MD5").lower())
        if algorithm is None or algorithm not in self.algorithms:
            return None
        qop = p.get("qop")
        if qop is None:
            return _digest(
                algorithm, p.get("username", ""), self.realm, password, p["nonce"], method, p.get("uri", ""), "", "", ""
            )
        nc = p.get("nc", "")
        cnonce = p.get("cnonce", "")
        if qop.lower() != "auth" or not cnonce or not re.fullmatch(r"[0-9A-Fa-f]{8}", nc) or int(nc, 16) == 0:
            return None
        return _digest(
            algorithm,
            p.get("username", ""),
            self.realm,
            password,
            p["nonce"],
            method,
            p.get("uri", ""),
            "auth",
            nc.lower(),
            cnonce,
        )
