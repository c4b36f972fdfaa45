"""The console's API on a real `swml serve`: sessions (cookie flags, CSRF, sign-out on every worker, a
limit on wrong tokens), recording search, the events streams of a real sipp call, and waveforms."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable

from .peers import Engine, free_port

EngineFactory = Callable[..., Engine]
TOKEN = "test-token-0123456789"
SCRIPT = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - hangup\n"


def http(
    method: str, url: str, *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    """One request on a new connection (with --workers, any worker may take it)."""
    req = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


def sign_in(base: str, token: str = TOKEN) -> tuple[int, dict[str, str], bytes]:
    body = json.dumps({"token": token}).encode()
    return http("POST", f"{base}/api/session", body=body, headers={"Content-Type": "application/json"})


def signed_in(base: str) -> tuple[dict[str, str], str]:
    """The Cookie header of a new session, and its CSRF token."""
    code, headers, body = sign_in(base)
    assert code == 200, body
    return {"Cookie": headers["set-cookie"].split(";")[0]}, json.loads(body)["csrf_token"]


def test_a_session_cookie_lets_a_browser_in_on_every_worker_until_it_signs_out(engine: EngineFactory) -> None:
    port = free_port()
    eng = engine(SCRIPT, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN, "--workers", "2")
    base = f"http://127.0.0.1:{port}"

    code, headers, body = sign_in(base)
    assert code == 200 and headers["cache-control"] == "no-store"
    flags = [f.strip() for f in headers["set-cookie"].split(";")]
    assert flags[0].startswith("swml_session=") and len(flags[0]) > 40
    assert {"HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=43200"} <= set(flags) and "Secure" not in flags
    csrf = json.loads(body)["csrf_token"]
    cookie = {"Cookie": flags[0]}

    # Several connections: both workers take the cookie (the session is in the index they share).
    for _ in range(6):
        assert http("GET", f"{base}/api/recordings", headers=cookie)[0] == 200
    code, _, body = http("GET", f"{base}/api/session", headers=cookie)
    assert code == 200 and json.loads(body)["csrf_token"] == csrf

    # A change with the cookie needs the CSRF header; with it, the request goes through (404: no such
    # recording). The bearer token alone needs none.
    nosuch = f"{base}/api/recordings/00000000-0000-0000-0000-000000000000"
    assert http("DELETE", nosuch, headers=cookie)[0] == 403
    assert http("DELETE", nosuch, headers={**cookie, "X-CSRF-Token": "wrong"})[0] == 403
    assert http("DELETE", nosuch, headers={**cookie, "X-CSRF-Token": csrf})[0] == 404
    assert http("DELETE", nosuch, headers={"Authorization": f"Bearer {TOKEN}"})[0] == 404

    # Sign-out: the cookie is cleared, and the session is dead on every worker.
    assert http("DELETE", f"{base}/api/session", headers=cookie)[0] == 403  # (CSRF too)
    code, headers, _ = http("DELETE", f"{base}/api/session", headers={**cookie, "X-CSRF-Token": csrf})
    assert code == 204 and "Max-Age=0" in headers["set-cookie"]
    for _ in range(6):
        assert http("GET", f"{base}/api/recordings", headers=cookie)[0] == 401

    # A form cannot sign in (no JSON), nor can a wrong or forged cookie get in.
    form = http("POST", f"{base}/api/session", body=b"token=" + TOKEN.encode(), headers={"Content-Type": "text/plain"})
    assert form[0] in (415, 422)
    assert http("GET", f"{base}/api/recordings", headers={"Cookie": "swml_session=" + "A" * 43})[0] == 401
    assert "Traceback" not in eng.log()


def test_wrong_tokens_are_refused_then_limited_per_address_and_https_makes_the_cookie_secure(
    engine: EngineFactory,
) -> None:
    port = free_port()
    engine(SCRIPT, "--http", f"127.0.0.1:{port}", "--api-token", TOKEN, "--public-url", f"https://example.test:{port}")
    base = f"http://127.0.0.1:{port}"
    code, headers, _ = sign_in(base)
    assert code == 200 and "Secure" in [f.strip() for f in headers["set-cookie"].split(";")]
    codes = [sign_in(base, "wrong-token-0123456789")[0] for _ in range(11)]
    assert codes == [401] * 10 + [429]
    code, headers, _ = sign_in(base)  # the right token waits too: this address is guessing
    assert code == 429 and 0 < int(headers["retry-after"]) <= 60
