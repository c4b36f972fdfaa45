"""Audio from a URL: ``http(s)://`` fetched with httpx, ``file://`` when allowed, the engine's own recordings.

Credentials written in the URL (``https://user:pass@host/a.wav``) are sent as HTTP basic auth, as the
play page allows. A server that does not answer fails after the fetch timeout; a file larger than the
limit is refused rather than filling memory.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import httpx

from swml_engine.call import CallOptions


class FetchError(Exception):
    """The URL could not be fetched; the message is meant for the user."""


def split_auth(url: str) -> tuple[str, tuple[str, str] | None]:
    """Take ``user:pass@`` out of a URL, returning the clean URL and the credentials."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    clean = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    return clean, (unquote(parts.username), unquote(parts.password or ""))


def fetch(url: str, options: CallOptions) -> bytes | Path:
    """Blocking: the bytes behind an http(s) URL, or the local path of a file/recording URL."""
    if options.url_resolver is not None:
        local = options.url_resolver(url)
        if local is not None:
            return local
    scheme = urlsplit(url).scheme.lower()
    if scheme == "file":
        if not options.allow_file_urls:
            raise FetchError("file:// URLs are not allowed here (only in `swml run`)")
        path = Path(unquote(urlsplit(url).path))
        if not path.is_file():
            raise FetchError(f"no such file: {path}")
        return path
    if scheme not in ("http", "https"):
        raise FetchError(f"unsupported URL scheme {scheme!r}; use http, https or file")
    clean, auth = split_auth(url)
    limit = options.max_fetch_bytes
    try:
        with (
            httpx.Client(timeout=options.fetch_timeout, follow_redirects=True, auth=auth) as client,
            client.stream("GET", clean) as resp,
        ):
            if resp.status_code != 200:
                raise FetchError(f"HTTP {resp.status_code} from {clean}")
            chunks: list[bytes] = []
            size = 0
            for chunk in resp.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise FetchError(f"{clean} is larger than {limit // (1024 * 1024)} MiB")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.TimeoutException:
        raise FetchError(f"{clean} did not answer within {options.fetch_timeout:g} s") from None
    except httpx.HTTPError as e:
        raise FetchError(f"cannot fetch {clean}: {e or type(e).__name__}") from None
