"""Who may use the HTTP API, and signed recording URLs that work without it.

Every ``/api`` request carries ``Authorization: Bearer <token>`` (the scheme name in any case, the token
exactly as given: nothing is stripped from it). The token comes from ``--api-token`` or
``SWML_API_TOKEN``; with neither, one is generated on first start, kept in ``<data>/api-token`` (mode
600, shared by every worker and every later start) and printed once.

``record_call_url``/``record_url`` under ``swml serve --http`` are ``<public>/recordings/<id>.<fmt>``
with ``expires`` (Unix time) and ``signature`` (HMAC-SHA256 of the path and expiry with a secret kept
in ``<data>/url-secret``): a status-callback receiver can fetch the audio without the API token, and a
changed path, expiry or signature, or a URL past its expiry, gets 403.

A secret shorter than :data:`MIN_SECRET` characters — given, or found in a file (a start that ran out
of disk space once left an empty one, and an empty token matched an empty presented one) — is refused
with :class:`SecretError`: the service does not start rather than run without protection.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import time
from pathlib import Path

TOKEN_FILE = "api-token"
SECRET_FILE = "url-secret"
#: The shortest token or signing key accepted (a generated one is 43 or 64 characters).
MIN_SECRET = 16
#: A secret is visible ASCII (what an HTTP header carries unchanged), without spaces.
SECRET_CHARS = re.compile(r"[\x21-\x7e]+")
#: How long a reader waits for a secret file another process is still writing (one written by an
#: older version, in place), before calling it short.
WRITER_WAIT = 2.0
#: ``expires`` is Unix time in ASCII digits: 12 reach the year 33658, more is an attack on int().
MAX_EXPIRES_DIGITS = 12
SIGNATURE = re.compile(r"[0-9a-f]{64}")


class SecretError(Exception):
    """A token or signing key that would leave the API unprotected, or that cannot be written."""


def check_secret(value: str, where: str) -> str:
    """``value`` if it is a usable secret; else :class:`SecretError` saying why, naming ``where``."""
    if len(value) < MIN_SECRET:
        raise SecretError(
            f"{where} is {len(value)} characters long: give at least {MIN_SECRET} "
            f"(python3 -c 'import secrets; print(secrets.token_urlsafe(32))' makes one)"
        )
    if not SECRET_CHARS.fullmatch(value):
        raise SecretError(f"{where} holds spaces or characters other than visible ASCII: a header cannot carry it")
    return value


def _write_new(path: Path, text: str) -> bool:
    """Create ``path`` holding ``text`` — complete or not at all — unless it exists; True if this call
    made it. The text goes to a private temporary file, is synced, then linked at its name: a full
    disk or a kill leaves no short file under the name, and of two workers racing only one link wins."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: rename (workers are started after the secrets)
            if path.exists():
                return False
            os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the name itself durable too
            dirfd = os.open(path.parent, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
        return True
    finally:
        tmp.unlink(missing_ok=True)


def _read_complete(path: Path) -> str:
    """A secret file's text, waiting (bounded) while it is shorter than a secret: another process may
    still be writing it."""
    deadline = time.monotonic() + WRITER_WAIT
    while True:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
        if len(text) >= MIN_SECRET or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if len(text) < MIN_SECRET:
        raise SecretError(
            f"{path} holds {len(text)} characters, too short to be a secret (a start that ran out of disk "
            f"space can leave it so): delete it to have a new one made"
        )
    return check_secret(text, str(path))


def _read_or_create(path: Path, make: str) -> tuple[str, bool]:
    """The secret kept in ``path``, creating it with ``make`` when missing; also whether this call made it."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() and _write_new(path, make):
            return make, True
        return _read_complete(path), False
    except OSError as e:
        raise SecretError(f"cannot keep the secret in {path}: {e.strerror or e}") from e


def given_token(option: str | None, environment: str | None) -> tuple[str, str] | None:
    """The token the operator gave, and where (``--api-token`` wins over ``SWML_API_TOKEN``; an empty
    variable counts as unset, an empty option does not)."""
    if option is not None:
        return option, "--api-token"
    if environment:
        return environment, "SWML_API_TOKEN"
    return None


def api_token(data: Path, given: tuple[str, str] | None) -> tuple[str, bool]:
    """The API token, and whether it was generated just now (to be printed once)."""
    if given is not None:
        return check_secret(*given), False
    return _read_or_create(data / TOKEN_FILE, secrets.token_urlsafe(32))


def token_matches(header: str | bytes | None, token: str) -> bool:
    """Whether an ``Authorization`` header value carries ``token`` with the bearer scheme. The header
    is compared byte for byte as it came (Starlette decodes headers as Latin-1)."""
    if not header:
        return False
    raw = header.encode("latin-1", errors="replace") if isinstance(header, str) else header
    scheme, sep, credentials = raw.partition(b" ")
    if not sep or scheme.lower() != b"bearer":
        return False
    return hmac.compare_digest(credentials, token.encode())


class UrlSigner:
    """Signs and checks recording URLs."""

    def __init__(self, data: Path) -> None:
        self._key = _read_or_create(data / SECRET_FILE, secrets.token_hex(32))[0].encode()

    def signature(self, path: str, expires: int) -> str:
        return hmac.new(self._key, f"{path}\n{expires}".encode(), hashlib.sha256).hexdigest()

    def sign(self, path: str, expires: int) -> str:
        """``path?expires=..&signature=..``"""
        return f"{path}?expires={expires}&signature={self.signature(path, expires)}"

    def valid(self, path: str, expires: str | None, signature: str | None, now: float) -> bool:
        # Only ASCII digits of bounded length: str.isdigit() takes '²' (int() does not) and int() of
        # thousands of digits is slow; the signature is 64 lowercase hex digits or nothing we made.
        if not expires or not signature or len(expires) > MAX_EXPIRES_DIGITS:
            return False
        if not (expires.isascii() and expires.isdigit()) or not SIGNATURE.fullmatch(signature):
            return False
        if int(expires) < now:
            return False
        return hmac.compare_digest(self.signature(path, int(expires)), signature)
