"""http(s) URLs the engine sends requests to: parsed strictly, credentials taken out, shown redacted.

A URL may carry ``user:pass@`` (the play page allows it for audio; ``--script-url`` and ``status_url``
too): it is sent as HTTP basic auth and never shown. Every URL that reaches a log line, an event or an
error message goes through :func:`redact` (``https://***@host/path``).

Parsing is strict (RFC 3986's authority): one ``@`` at most, a numeric port, an IPv6 host in brackets.
A password holding ``@ : / ? #`` unencoded (some SDKs build them so) is refused with a message saying
to percent-encode it, when the document is validated, rather than failing later inside a call.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import unquote

#: What a URL may not hold anywhere (it would be cut or read differently by another parser).
_FORBIDDEN = re.compile(r"[\x00-\x20\x7f\\]")
#: A registered host name (letters, digits, ``-._~``, percent-escapes and RFC 3986's sub-delims).
_REG_NAME = re.compile(r"^[A-Za-z0-9\-._~%!$&'()*+,;=]+$")
#: userinfo as RFC 3986 allows it (``@`` is not in it: it ends the userinfo).
_USERINFO = re.compile(r"^[A-Za-z0-9\-._~%!$&'()*+,;=:]*$")
#: The start of a URL's authority up to the last ``@`` before a blank: what :func:`redact_text` hides.
_USERINFO_IN_TEXT = re.compile(r"(?i)\b([a-z][a-z0-9+.\-]*://)[^\s'\"<>]*@")

ENCODE_HINT = "percent-encode @ : / ? # in the user or password (%40 %3A %2F %3F %23)"
DEFAULT_PORTS = {"http": 80, "https": 443}


class UrlError(ValueError):
    """A URL that cannot be used; the message names what is wrong and never shows a password."""


@dataclass(frozen=True)
class HttpTarget:
    """A parsed http(s) URL: where to send (no credentials in it), basic auth, and its origin."""

    url: str
    auth: tuple[str, str] | None
    scheme: str
    host: str
    port: int

    @property
    def origin(self) -> tuple[str, str, int]:
        return (self.scheme, self.host.lower(), self.port)

    @property
    def shown(self) -> str:
        """The URL as logs and events show it: ``***@`` where credentials were."""
        if self.auth is None:
            return self.url
        return self.url.replace("://", "://***@", 1)


def parse_http_url(text: str) -> HttpTarget:
    """Parse an http(s) URL strictly; raises UrlError (its message shows the URL redacted)."""
    shown = _cut(redact_text(text))
    if _FORBIDDEN.search(text):
        raise UrlError(f"{shown!r}: a URL may not hold spaces, control characters or backslashes")
    scheme, sep, rest = text.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in DEFAULT_PORTS:
        raise UrlError(f"{shown!r} is not an http(s) URL")
    end = min((i for i in (rest.find(c) for c in "/?#") if i != -1), default=len(rest))
    authority, tail = rest[:end], rest[end:]
    hint = f" ({ENCODE_HINT})" if "@" in rest else ""
    if authority.count("@") > 1:
        raise UrlError(f"{shown!r}: more than one '@' before the host; {ENCODE_HINT}")
    userinfo, at, hostport = authority.rpartition("@")
    if at and not _USERINFO.match(userinfo):
        raise UrlError(f"{shown!r}: the user or password has characters a URL cannot hold; {ENCODE_HINT}")
    host, port = _host_port(hostport, scheme, shown, hint)
    auth = None
    if at:
        user, _, password = userinfo.partition(":")
        auth = (unquote(user), unquote(password))
    url = f"{scheme}://{hostport}{tail.partition('#')[0]}"
    return HttpTarget(url, auth, scheme, host, port)


def _host_port(hostport: str, scheme: str, shown: str, hint: str) -> tuple[str, int]:
    if hostport.startswith("["):
        inside, bracket, after = hostport[1:].partition("]")
        try:
            ipaddress.IPv6Address(inside.partition("%25")[0])
        except ValueError:
            raise UrlError(f"{shown!r}: {inside!r} in brackets is not an IPv6 address{hint}") from None
        if not bracket or (after and not after.startswith(":")):
            raise UrlError(f"{shown!r}: the host is not written [IPv6]:PORT{hint}")
        host, port_text = f"[{inside}]", after[1:] if after else ""
    else:
        host, _, port_text = hostport.partition(":")
        if not host:
            raise UrlError(f"{shown!r}: the URL needs a host, e.g. https://example.com/...{hint}")
        if not _REG_NAME.match(host):
            raise UrlError(f"{shown!r}: {host!r} is not a host name{hint}")
    if port_text and not port_text.isdigit():
        raise UrlError(f"{shown!r}: the port must be a number{hint}")
    port = int(port_text) if port_text else DEFAULT_PORTS[scheme]
    if not 0 < port <= 65535 or len(port_text) > 5:
        raise UrlError(f"{shown!r}: the port must be 1-65535{hint}")
    return host, port


def scheme_of(text: str) -> str:
    """The scheme of a URL, lowercase ("" without ``://``); never raises, unlike urlsplit on a bad host."""
    scheme, sep, _ = text.partition("://")
    return scheme.strip().lower() if sep else ""


def redact(url: str) -> str:
    """A URL for logs and events: its credentials replaced by ``***`` (any text: see redact_text)."""
    try:
        return parse_http_url(url).shown
    except UrlError:
        return redact_text(url)


def redact_text(text: str) -> str:
    """Hide ``user:pass@`` in every URL in a piece of text (a message that quotes one or several).
    Without a strict parse the userinfo's end is the last ``@`` before a blank: a password holding
    ``/`` or ``#`` is hidden too, at the price of hiding more than needed when a path holds ``@``."""
    return _USERINFO_IN_TEXT.sub(r"\1***@", text)


def _cut(text: str, limit: int = 120) -> str:
    """A URL cut short for a message (a substituted value can be megabytes)."""
    return text if len(text) <= limit else f"{text[:limit]}… ({len(text)} characters)"


def same_origin(a: HttpTarget, b: HttpTarget) -> bool:
    return a.origin == b.origin
