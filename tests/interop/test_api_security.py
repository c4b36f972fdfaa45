"""The HTTP port of `swml serve` against someone who does not hold the token, or who means harm: bodies
that are never read, connections that are capped and timed out, malformed signed URLs, secrets that
would disable protection, file modes, a relative --data, bad option values, a stale index after a full
disk, and a stop past its grace period. Each test attacks a real `swml serve` over real sockets."""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import HttpServer, small_filesystem

from .peers import Engine, free_port, run_sipp, scenario, wait_for
from .test_api import TOKEN, call_in_background, request

EngineFactory = Callable[..., Engine]
MB = 1024 * 1024
IDLE = "version: 1.0.0\nsections:\n  main:\n    - answer\n"
RECORD = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {}\n    - sleep: 1500\n"


def rss_kib(pid: int) -> int:
    """Resident memory of a process, from /proc/<pid>/status (KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))


def read_status(sock: socket.socket) -> int:
    """The status code of the response on ``sock`` (0 when the server closed without one)."""
    data = b""
    with contextlib.suppress(ConnectionResetError):
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else 0


def closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed ``sock`` (reads give EOF or a reset; pending response bytes are
    read and dropped)."""
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def get(port: int, path: str, source: str = "127.0.0.1") -> int:
    with connect(port, source) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        return read_status(sock)


def send_large_body(port: int, path: str, size: int, *, token: str | None, chunked: bool = False) -> tuple[int, int]:
    """POST a ``size``-byte JSON body (whitespace) while reading the answer at the same time, as an
    attacker's client would; returns the status that came back and how many bytes could be sent before
    the server closed the connection."""
    sock = connect(port)
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    head += f"Authorization: Bearer {token}\r\n" if token else ""
    head += "Transfer-Encoding: chunked\r\n\r\n" if chunked else f"Content-Length: {size}\r\n\r\n"
    sock.sendall(head.encode())
    sent = [0]

    def pour() -> None:
        block = b" " * MB
        frame = f"{len(block):x}\r\n".encode() + block + b"\r\n" if chunked else block
        with contextlib.suppress(OSError):
            while sent[0] < size:
                sock.sendall(frame)
                sent[0] += len(block)

    sender = threading.Thread(target=pour, daemon=True)
    sender.start()
    status = read_status(sock)
    sock.close()  # the sender stops at its next write
    sender.join(60)
    return status, sent[0]


# --- item 1: bodies -------------------------------------------------------------------------------


def test_a_large_body_without_the_token_is_refused_before_it_is_read(engine: EngineFactory) -> None:
    """Issue 11.1: a 300 MB body without a token took RSS from 92 MB to 706 MB before a 422."""
    http = free_port()
    eng = engine(IDLE, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    assert eng.proc is not None
    base = f"http://127.0.0.1:{http}"
    for token in (None, TOKEN):  # first requests warm the application up before memory is measured
        request("POST", f"{base}/api/recordings/x/pause", token=token, body={"behavior": "skip"})
    before = rss_kib(eng.proc.pid)
    status, sent = send_large_body(http, "/api/recordings/x/pause", 300 * MB, token=None)
    assert status == 401
    assert sent < 64 * MB, f"the server read {sent // MB} MB of a body it refused"
    status, sent = send_large_body(http, "/api/recordings/x/pause", 300 * MB, token=None, chunked=True)
    assert status == 401 and sent < 64 * MB
    grown = rss_kib(eng.proc.pid) - before
    assert grown < 8 * 1024, f"RSS grew {grown} KiB"

    # With the token, a body over the cap is refused as soon as it is announced, or as it streams.
    assert send_large_body(http, "/api/recordings/x/pause", 20 * MB, token=TOKEN)[0] == 413
    assert send_large_body(http, "/api/recordings/x/pause", 20 * MB, token=TOKEN, chunked=True)[0] == 413
    # A body of the size the API takes is read as ever (no such recording here: 404).
    assert request("POST", f"{base}/api/recordings/x/pause", body={"behavior": "skip"})[0] == 404
    assert request("GET", f"{base}/health", token=None)[0] == 200


# --- item 3: connections --------------------------------------------------------------------------


def test_connections_are_capped_per_address_and_in_total(engine: EngineFactory) -> None:
    """Issue 11.3: connections had no limit; idle ones from one host could take every descriptor."""
    http = free_port()
    args = ("--max-connections", "6", "--max-connections-per-address", "4", "--header-timeout", "120")
    eng = engine(IDLE, "--http", f"127.0.0.1:{http}", *args)
    held = [connect(http) for _ in range(4)]
    extra = connect(http)
    assert read_status(extra) == 503  # a fifth from the same address
    held += [connect(http, "127.0.0.3") for _ in range(2)]
    assert read_status(connect(http, "127.0.0.4")) == 503  # a seventh in all
    assert all(not closed_by_server(s) for s in held)
    held.pop(0).close()
    assert wait_for(lambda: get(http, "/health", "127.0.0.2") == 200, 10)
    assert "HTTP connection from 127.0.0.1 refused: 4 connections open from 127.0.0.1" in eng.log()
    for sock in held:
        sock.close()


def test_idle_and_half_sent_connections_are_closed_after_the_header_timeout(engine: EngineFactory) -> None:
    """Issue 11.3: 1000 half-sent HTTP requests were all still open after 40 s."""
    http = free_port()
    eng = engine(
        IDLE, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN, "--header-timeout", "2", "--idle-timeout", "1"
    )
    idle = [connect(http) for _ in range(5)]
    half = [connect(http) for _ in range(5)]
    for sock in half:
        with contextlib.suppress(OSError):  # (on a very slow machine it may be closed already)
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # the header block never ends
    slow_body = connect(http)
    slow_body.sendall(
        f"POST /api/recordings/x/pause HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
        "Content-Type: application/json\r\nContent-Length: 40\r\n\r\n{".encode()
    )
    kept_alive = connect(http)
    kept_alive.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_status(kept_alive) == 200
    assert read_status(slow_body) == 408
    every = [*idle, *half, kept_alive]
    assert wait_for(lambda: all(closed_by_server(s) for s in every), 30), [closed_by_server(s) for s in every]
    assert get(http, "/health") == 200
    assert eng.alive()
    for sock in [*every, slow_body]:
        sock.close()


def test_connections_cannot_take_the_descriptors_calls_need(engine: EngineFactory, tmp_path: Path) -> None:
    """Issue 11.3: 1100 idle connections under `ulimit -n 1024` made every new call fail (no RTP port).
    The engine's limit is lowered to 400 once it runs; 500 idle connections come from ten addresses."""
    http = free_port()
    eng = engine(RECORD, "--http", f"127.0.0.1:{http}", "--header-timeout", "120")
    assert eng.proc is not None
    resource.prlimit(eng.proc.pid, resource.RLIMIT_NOFILE, (400, 400))
    socks = [connect(http, f"127.0.0.{10 + i % 10}") for i in range(500)]
    refused = sum(1 for s in socks[-100:] if read_status(s) == 503)
    assert refused == 100  # the last ones found the reserve reached
    assert "file descriptors in use (256 are kept for calls' media and recordings)" in eng.log()
    out = run_sipp(tmp_path / "sipp", scenario("answered_then_engine_bye", expect="PCMA", bye_timeout=20000), eng.port)
    assert out.returncode == 0, out.stdout[-2000:] + eng.log()[-3000:]
    (meta,) = eng.recordings(1)
    assert meta["state"] == "finished" and float(str(meta["duration"])) > 1.0
    for sock in socks:
        sock.close()
    assert wait_for(lambda: get(http, "/health") == 200, 10)


# --- item 4: signed URLs --------------------------------------------------------------------------


def test_malformed_signed_urls_get_403_not_a_traceback(engine: EngineFactory) -> None:
    """Issue 11.4: `?expires=%C2%B2&signature=x` (a digit to str.isdigit, not to int) or 5000 digits → 500."""
    http = free_port()
    eng = engine(IDLE, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}/recordings/00000000-0000-0000-0000-000000000000.wav"
    sig = "0" * 64
    queries = [
        "expires=%C2%B2&signature=x",
        f"expires=%C2%B2&signature={sig}",
        f"expires={'9' * 5000}&signature={sig}",
        "expires=%EF%BC%99%EF%BC%99&signature=" + sig,  # fullwidth digits
        "expires=99999999999&signature=%C3%A9",  # a non-ASCII signature (compare_digest refuses it)
        "expires=-5&signature=" + sig,
        "expires=&signature=",
    ]
    assert [request("GET", f"{base}?{q}", token=None)[0] for q in queries] == [403] * len(queries)
    assert "Traceback" not in eng.log() and "Exception" not in eng.log()


# --- item 11: secrets, the scheme, HEAD, OpenAPI ----------------------------------------------------


def serve(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, **popen: object
) -> subprocess.CompletedProcess[str]:
    """`swml serve` expected to stop at start (a usage error); its exit code and output."""
    script = tmp_path / "idle.yaml"
    script.write_text(IDLE)
    cmd = [sys.executable, "-m", "swml_engine", "serve", "--sip", f"127.0.0.1:{free_port()}", "--script", str(script)]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [*cmd, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=full_env,
        **popen,  # type: ignore[call-overload]
    )


def test_empty_or_short_secrets_refuse_to_start(tmp_path: Path) -> None:
    """Issue 11.11: empty api-token and url-secret files started silently with auth and signing off."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "api-token").write_text("")
    (data / "url-secret").write_text("\n")
    http = ("--http", f"127.0.0.1:{free_port()}", "--data", str(data))
    r = serve(tmp_path, *http)
    assert r.returncode == 2 and "api-token holds 0 characters" in r.stderr and "delete it" in r.stderr, r.stderr
    (data / "api-token").write_text("x" * 40)
    r = serve(tmp_path, *http)
    assert r.returncode == 2 and "url-secret holds 0 characters" in r.stderr, r.stderr
    r = serve(tmp_path, *http, "--api-token", "short")
    assert r.returncode == 2 and "--api-token is 5 characters long: give at least 16" in r.stderr, r.stderr
    r = serve(tmp_path, *http, env={"SWML_API_TOKEN": "\u00a0"})
    assert r.returncode == 2 and "SWML_API_TOKEN is 1 characters long" in r.stderr, r.stderr
    r = serve(tmp_path, *http, "--api-token", "sixteen chars ok")
    assert r.returncode == 2 and "spaces or characters other than visible ASCII" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def _limit_file_size() -> None:
    # RLIMIT_FSIZE refuses writes past the limit with EFBIG, as a full disk refuses them with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (16, 16))


def test_a_full_disk_at_first_start_is_reported_and_leaves_no_empty_secret(
    engine: EngineFactory, tmp_path: Path
) -> None:
    """Issue 11.11: a disk full at first start left a 0-byte api-token (then: no auth) and said "cannot listen"."""
    data = tmp_path / "data-0"  # where the engine fixture's first engine keeps its data
    r = serve(tmp_path, "--http", f"127.0.0.1:{free_port()}", "--data", str(data), preexec_fn=_limit_file_size)
    assert r.returncode == 2 and "cannot keep the secret in" in r.stderr and "File too large" in r.stderr, r.stderr
    assert "cannot listen" not in r.stderr
    assert not (data / "api-token").exists() and not list(data.glob(".*tmp"))
    http = free_port()
    eng = engine(IDLE, "--http", f"127.0.0.1:{http}")  # with room again: made whole
    token = (eng.data / "api-token").read_text().strip()
    assert len(token) >= 32 and request("GET", f"http://127.0.0.1:{http}/api/calls", token=token)[0] == 200


def test_bearer_scheme_any_case_token_never_stripped_head_and_openapi(
    engine: EngineFactory, http_server: HttpServer, tmp_path: Path
) -> None:
    http = free_port()
    status = http_server.url("/status")
    script = f"version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{status}'}}\n    - sleep: 1500\n"
    eng = engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}"

    def with_header(value: str) -> int:
        return request("GET", f"{base}/api/calls", token=None, headers={"Authorization": value})[0]

    assert [with_header(f"{scheme} {TOKEN}") for scheme in ("Bearer", "bearer", "BEARER")] == [200] * 3
    # (Spaces around a header's value are not part of it in HTTP; anything else is compared as sent.)
    refused = [f"Bearer  {TOKEN}", f"Bearer {TOKEN}\u00a0", f"Bearer \u00a0{TOKEN}", "Bearer \u00a0", "Bearer", TOKEN]
    assert [with_header(v) for v in refused] == [401] * len(refused)

    call_in_background(eng, tmp_path / "sipp", bye_timeout=10000).join(30)
    assert wait_for(lambda: any(r["json"]["params"]["state"] == "finished" for r in http_server.requests), 10)
    final = [r["json"]["params"] for r in http_server.requests if r["path"] == "/status"][-1]
    rid = final["recording_id"]
    # HEAD: the headers a GET would have, no body — for the audio by signed URL and by the API, and metadata.
    for url, token in ((final["url"], None), (f"{base}/api/recordings/{rid}/audio", TOKEN)):
        code, headers, body = request("HEAD", url, token=token)
        assert code == 200 and body == b"" and int(headers["content-length"]) == final["size"]
        assert headers["content-type"] == "audio/wav" and headers["x-content-type-options"] == "nosniff"
    code, headers, body = request("HEAD", f"{base}/api/recordings/{rid}")
    assert code == 200 and body == b"" and int(headers["content-length"]) > 0
    assert headers["x-content-type-options"] == "nosniff"
    refused = request("HEAD", f"{base}/api/recordings/{rid}", token=None)
    assert refused[0] == 401 and refused[1]["x-content-type-options"] == "nosniff"

    spec = json.loads(request("GET", f"{base}/openapi.json", token=None)[2])
    schemes = spec["components"]["securitySchemes"]
    assert [s["scheme"].lower() for s in schemes.values() if s["type"] == "http"] == ["bearer"]
    # Either the bearer token or the console's session cookie (POST /api/session) lets a request in.
    bearer = next(name for name, s in schemes.items() if s["type"] == "http")
    [cookie] = [name for name, s in schemes.items() if s["type"] == "apiKey" and s["in"] == "cookie"]
    assert spec["paths"]["/api/recordings/{recording_id}"]["get"]["security"] == [{bearer: []}, {cookie: []}]
    assert "head" in spec["paths"]["/api/recordings/{recording_id}/audio"]


def test_guessing_the_token_as_a_bearer_is_limited_as_the_sign_in_is(engine: EngineFactory) -> None:
    """Wrong bearer tokens were never limited (the sign-in's 10 a minute could be bypassed by guessing
    in the Authorization header of any /api route, or of /metrics); now every wrong token counts
    towards the same per-address limit, and once it is reached even the right one waits."""
    http = free_port()
    engine(IDLE, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}"
    other = {"Authorization": f"Bearer wrong-{TOKEN}"}
    codes = [request("GET", f"{base}/api/calls", token=None, headers=other)[0] for _ in range(6)]
    codes += [request("GET", f"{base}/metrics", token=None, headers=other)[0] for _ in range(4)]
    assert codes == [401] * 10
    code, headers, _ = request("GET", f"{base}/api/calls", token=None, headers=other)
    assert code == 429 and 0 < int(headers["retry-after"]) <= 60
    assert request("GET", f"{base}/api/calls")[0] == 429  # the right token waits too
    assert request("GET", f"{base}/metrics")[0] == 429
    signing_in = {"Content-Type": "application/json"}
    assert request("POST", f"{base}/api/session", token=None, body={"token": TOKEN}, headers=signing_in)[0] == 429
    # No token at all is no guess: /metrics still says 401 to a scraper without one.
    assert request("GET", f"{base}/metrics", token=None)[0] == 401


def test_a_sign_out_ends_the_event_streams_its_session_opened(engine: EngineFactory) -> None:
    """An /api/events stream opened with a session cookie went on after the sign-out (keep-alives, and
    every call's events) for as long as its client held it: the sign-out now ends it (within the
    stream's session check), while a stream opened with the bearer token goes on."""
    http = free_port()
    engine(IDLE, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}"
    code, headers, body = request(
        "POST", f"{base}/api/session", token=None, body={"token": TOKEN}, headers={"Content-Type": "application/json"}
    )
    assert code == 200
    cookie, csrf = headers["set-cookie"].split(";")[0], json.loads(body)["csrf_token"]

    def open_stream(auth: str) -> socket.socket:
        sock = connect(http)
        sock.sendall(f"GET /api/events HTTP/1.1\r\nHost: x\r\n{auth}\r\n\r\n".encode())
        head = b""
        while b": connected" not in head:
            chunk = sock.recv(4096)
            assert chunk, head
            head += chunk
        assert head.startswith(b"HTTP/1.1 200 ")
        return sock

    by_cookie, by_token = open_stream(f"Cookie: {cookie}"), open_stream(f"Authorization: Bearer {TOKEN}")
    code = request("DELETE", f"{base}/api/session", token=None, headers={"Cookie": cookie, "X-CSRF-Token": csrf})[0]
    assert code == 204
    by_cookie.settimeout(30)
    rest = b""
    while b"\r\n0\r\n\r\n" not in rest:  # the response's last chunk (the connection may stay open)
        chunk = by_cookie.recv(4096)
        assert chunk, rest
        rest += chunk
    assert b'"type": "stream.end", "reason": "the session has ended: sign in again"' in rest
    assert not closed_by_server(by_token)
    by_cookie.close()
    by_token.close()


# --- item 12: file modes --------------------------------------------------------------------------


def _modes(data: Path) -> dict[str, int]:
    return {str(p.relative_to(data)): p.stat().st_mode & 0o777 for p in [data, *data.rglob("*")]}


def test_data_is_private_after_a_real_call(engine: EngineFactory, tmp_path: Path) -> None:
    """Issue 11.12: the data directory was 755 and recordings, call logs and index.sqlite3 644."""
    http = free_port()
    eng = engine(RECORD, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    call_in_background(eng, tmp_path / "sipp").join(30)
    eng.recordings(1)
    modes = _modes(eng.data)
    names = set(modes)
    assert {"recordings", "calls", "index.sqlite3", "url-secret"} <= names
    assert any(n.startswith("recordings/") and n.endswith(".wav") for n in names)
    assert any(n.startswith("calls/") and n.endswith(".jsonl") for n in names)
    assert modes["."] == 0o700
    open_to_others = {n: oct(m) for n, m in modes.items() if m & 0o077}
    assert not open_to_others


def test_umask_027_shares_the_data_with_a_group(engine: EngineFactory, tmp_path: Path) -> None:
    http = free_port()
    eng = engine(RECORD, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN, "--umask", "027")
    call_in_background(eng, tmp_path / "sipp").join(30)
    eng.recordings(1)
    modes = _modes(eng.data)
    assert modes.pop("url-secret") == 0o600  # secrets stay the owner's
    assert modes["."] == 0o750
    assert all(m & 0o007 == 0 and m & 0o040 for m in modes.values()), {n: oct(m) for n, m in modes.items()}


def test_an_existing_open_data_directory_is_closed(engine: EngineFactory, tmp_path: Path) -> None:
    """A data directory an older version made 755 is made 700 at start."""
    (tmp_path / "data-0").mkdir(mode=0o755)
    os.chmod(tmp_path / "data-0", 0o755)
    eng = engine(IDLE, "--http", f"127.0.0.1:{free_port()}", "--api-token", TOKEN)
    assert eng.data == tmp_path / "data-0" and _modes(eng.data)["."] == 0o700


# --- item 15: relative --data ---------------------------------------------------------------------


def test_audio_downloads_with_a_relative_data_directory(
    engine: EngineFactory, http_server: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11.15: `--data data/x` made every audio download a 500 (a relative path has no file URI)."""
    monkeypatch.chdir(tmp_path)
    http = free_port()
    status = http_server.url("/status")
    script = f"version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {{status_url: '{status}'}}\n    - sleep: 1500\n"
    eng = engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN, "--data", "data/x")
    call_in_background(eng, tmp_path / "sipp").join(30)
    assert wait_for(lambda: any(r["json"]["params"]["state"] == "finished" for r in http_server.requests), 10)
    final = [r["json"]["params"] for r in http_server.requests if r["path"] == "/status"][-1]
    audio = (tmp_path / "data" / "x" / "recordings" / f"{final['recording_id']}.wav").read_bytes()
    code, _, signed = request("GET", final["url"], token=None)
    assert code == 200 and signed == audio
    code, _, by_api = request("GET", f"http://127.0.0.1:{http}/api/recordings/{final['recording_id']}/audio")
    assert code == 200 and by_api == audio and len(audio) == final["size"]


# --- item 18: option values -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("--url-ttl", "inf"), "--url-ttl: 'inf' is out of range: give 1 to 3.1536e+07 seconds (1 s to 1 year)"),
        (("--url-ttl", "nan"), "--url-ttl: 'nan' is out of range"),
        (("--url-ttl", "0"), "--url-ttl: '0' is out of range"),
        (("--url-ttl", "-5"), "--url-ttl: '-5' is out of range"),
        (("--url-ttl", "soon"), "--url-ttl: 'soon': give a number"),
        (("--max-calls", "-1"), "--max-calls: '-1' is out of range: give 0 to 100000"),
        (("--max-lag", "-0.1"), "--max-lag: '-0.1' is out of range: give 0 to 10 seconds"),
        (("--workers", "0"), "--workers: '0' is out of range: give 1 to 64"),
        (("--workers", "1.5"), "--workers: '1.5': give a whole number"),
        (("--stop-grace", "inf"), "--stop-grace: 'inf' is out of range"),
        (("--header-timeout", "0"), "--header-timeout: '0' is out of range"),
        (("--max-connections", "0"), "--max-connections: '0' is out of range"),
        (("--max-connections", "5", "--max-connections-per-address", "6"), "cannot be more than --max-connections"),
        (("--umask", "022"), "--umask: '022': others must get nothing"),
    ],
)
def test_bad_option_values_are_usage_errors(tmp_path: Path, args: tuple[str, ...], says: str) -> None:
    """Issue 11.18: `--url-ttl inf|nan` failed every record_call; 0 or negative made born-expired URLs."""
    r = serve(tmp_path, "--http", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "d"), *args)
    assert r.returncode == 2 and says in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


# --- item 9: the script URL from the environment --------------------------------------------------


def test_script_url_from_the_environment_keeps_credentials_off_the_command_line(
    engine: EngineFactory, http_server: HttpServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11.9: a --script-url with user:pass could only be given on the command line (seen in ps)."""
    http_server.files["/swml"] = (RECORD.encode(), "application/yaml")
    url = http_server.url("/swml").replace("http://", "http://alice:s3cret-pass@")
    monkeypatch.setenv("SWML_SCRIPT_URL", url)
    eng = engine(None)
    assert eng.proc is not None
    assert b"s3cret" not in Path(f"/proc/{eng.proc.pid}/cmdline").read_bytes()
    call_in_background(eng, tmp_path / "sipp").join(30)
    (meta,) = eng.recordings(1)
    assert meta["state"] == "finished"
    (fetch,) = [r for r in http_server.requests if r["path"] == "/swml"]
    assert fetch["method"] == "POST" and fetch["headers"]["Authorization"].startswith("Basic ")
    monkeypatch.delenv("SWML_SCRIPT_URL")
    r = subprocess.run(
        [sys.executable, "-m", "swml_engine", "serve", "--sip", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "give --script FILE or --script-url URL (or set SWML_SCRIPT_URL)" in r.stderr
    # A URL that does not parse (an unencoded '@' in the password) stops the start, its password unshown.
    for given in (["--script-url", "http://alice:p@ss@127.0.0.1:1/swml"], []):
        r = subprocess.run(
            [sys.executable, "-m", "swml_engine", "serve", "--sip", "127.0.0.1:0", *given],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "SWML_SCRIPT_URL": "http://alice:p@ss@127.0.0.1:1/swml"},
        )
        assert r.returncode == 2 and "--script-url:" in r.stderr and "percent-encode" in r.stderr, r.stderr
        assert "p@ss" not in r.stderr and "Traceback" not in r.stderr


# --- item 19: the index after a full disk ---------------------------------------------------------


@pytest.fixture
def small_data_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 320 KiB filesystem (tmpfs) as the engine's whole data directory (recordings and index)."""
    with small_filesystem(tmp_path / "data-0", "320k") as root:  # the engine fixture's first data directory
        yield root


def test_a_recording_the_full_disk_ended_is_not_live_in_the_api(
    engine: EngineFactory, small_data_disk: Path, tmp_path: Path
) -> None:
    """Issue 11.19: after a disk-full recording the index still said `recording`: DELETE → 409 "live:
    stop it first" while stop → 409 "not live". The disk is a real small tmpfs holding the whole data
    directory, so the recording and the index's writes fail together with ENOSPC, as on a full disk."""
    http = free_port()
    script = "version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {stereo: true}\n    - sleep: 12000\n"
    eng = engine(script, "--http", f"127.0.0.1:{http}", "--api-token", TOKEN)
    base = f"http://127.0.0.1:{http}"
    call = call_in_background(eng, tmp_path / "sipp")
    (meta,) = eng.recordings(1, timeout=30)  # ended by the full disk, while the call goes on
    assert meta["state"] == "error", meta
    rid = meta["recording_id"]
    code, _, body = request("GET", f"{base}/api/recordings/{rid}")
    assert code == 200 and json.loads(body)["state"] == "error"  # what its metadata file says
    assert "cannot be written" in eng.log()
    assert json.loads(request("GET", f"{base}/health", token=None)[2])["index"] == "behind"
    (listed,) = json.loads(request("GET", f"{base}/api/recordings")[2])["recordings"]
    assert listed["recording_id"] == rid and listed["state"] == "error"
    assert json.loads(request("GET", f"{base}/api/recordings?state=recording")[2])["recordings"] == []
    code, _, body = request("POST", f"{base}/api/recordings/{rid}/stop")
    assert code == 409 and "not live" in json.loads(body)["detail"]
    assert request("DELETE", f"{base}/api/recordings/{rid}")[0] == 204  # frees the disk, too
    assert request("GET", f"{base}/api/recordings/{rid}")[0] == 404
    call.join(40)
    # With room again, the rows that waited are written: the call is over in the index.
    assert wait_for(lambda: json.loads(request("GET", f"{base}/health", token=None)[2])["index"] == "open", 20)
    (row,) = json.loads(request("GET", f"{base}/api/calls")[2])["calls"]
    assert row["state"] == "ended", row
