"""Audio from a URL: ``http(s)://`` fetched over the network, ``file://`` when allowed, the call's own recordings.

Credentials written in the URL (``https://user:pass@host/a.wav``) are sent as HTTP basic auth, as the
play page allows, to that URL's origin only (a redirect elsewhere is followed without them), and never
shown: messages and events carry the URL redacted. A fetch has one deadline for all of it (the call's
``fetch_timeout``) and a size limit (``max_fetch_bytes``); see :mod:`swml_engine.fetch`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from swml_engine.call import CallOptions
from swml_engine.fetch import FetchControl, FetchError, Redirects, http_fetch
from swml_engine.urls import HttpTarget, UrlError, parse_http_url, redact, scheme_of

__all__ = ["FetchError", "fetch_audio", "file_path", "local_source", "split_auth", "target_of"]

#: The hosts a ``file://`` URL may name (RFC 8089): none, or this machine's.
_LOCAL_HOSTS = ("", "localhost")


def file_path(url: str) -> Path:
    """The absolute path a ``file://`` URL names; ValueError saying how to write it otherwise (a
    relative path, ``file://caller.wav``, reads as a host name with no path)."""
    parts = urlsplit(url)
    if parts.netloc.lower() in _LOCAL_HOSTS and parts.path.startswith("/") and parts.path != "/":
        return Path(unquote(parts.path))
    name = f"{parts.netloc}{parts.path}".strip("/") or "sound.wav"
    raise ValueError(f"a file URL needs an absolute path: file:///abs/path/{name}")


def split_auth(url: str) -> tuple[str, tuple[str, str] | None]:
    """Take ``user:pass@`` out of a URL, returning the clean URL and the credentials (UrlError if the
    URL does not parse strictly)."""
    target = parse_http_url(url)
    return target.url, target.auth


def target_of(url: str) -> HttpTarget:
    """The http(s) URL of a sound, parsed; FetchError (shown to the user) when it does not parse."""
    try:
        return parse_http_url(url)
    except UrlError as e:
        raise FetchError(str(e)) from None


def local_source(url: str, options: CallOptions) -> Path | None:
    """Blocking (file checks): the local file behind the URL — the call's own recording, or a
    ``file://`` path where allowed — or None for a URL to fetch over the network."""
    if options.url_resolver is not None:
        local = options.url_resolver(url)
        if local is not None:
            return local
    scheme = scheme_of(url)
    if scheme == "file":
        if not options.allow_file_urls:
            raise FetchError("file:// URLs are not allowed here (only in `swml run`)")
        try:
            path = file_path(url)
        except ValueError as e:
            raise FetchError(str(e)) from None
        if not path.is_file():
            raise FetchError(f"no such file: {path}")
        return path
    if scheme not in ("http", "https"):
        raise FetchError(f"{redact(url)}: unsupported URL scheme {scheme!r}; use http, https or file")
    return None


def fetch_audio(target: HttpTarget, options: CallOptions, control: FetchControl) -> bytes:
    """Blocking: the bytes behind an http(s) URL, within ``control``'s deadline and the size limit."""
    return http_fetch(target, control, limit=options.max_fetch_bytes, redirects=Redirects.ANY_ORIGIN).body
