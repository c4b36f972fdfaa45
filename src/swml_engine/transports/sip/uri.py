"""SIP URIs and name-addresses (RFC 3261 §19.1, §20.10, §25.1), read liberally and written plainly.

A ``sip:``/``sips:`` URI is taken apart (user, password, host, port, parameters, headers); any other scheme
(``tel:``, ``http:`` in a Contact) is kept whole in :attr:`Uri.opaque`, so a message carrying one still
parses and the policy decides what to do with it. Escapes (``%41``) are kept as written: comparisons that
need them undone say so (RFC 3261 §19.1.4).

Hostile input is bounded: a URI or header value longer than :data:`MAX_TEXT` is refused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

#: Longest URI or name-address taken (a real one is well under 1 KiB).
MAX_TEXT = 8192

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*")
_PORT = re.compile(r"[0-9]{1,5}")
#: A host: a name (letters, digits, '-', '.', '_'), an IPv4 address, or an IPv6 reference in brackets.
_HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9\-_.]*[A-Za-z0-9_])?\.?")
_IPV6_REF = re.compile(r"\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9]+)?\]")
#: RFC 3261 §25.1 token: header and parameter names, methods, unquoted display-name words.
TOKEN = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
#: A parameter value written without quotes: a token, a host (IPv6 in brackets) or a URI's paramchars —
#: anything but whitespace, quotes, angle brackets and commas, which only a quoted string may hold.
_BARE_VALUE = re.compile(r"[^\s\"<>,]+")
_NOT_IN_URI = re.compile(r"[\s<>\"]")
#: A quoted string at the start of a text: its content (quoted pairs still escaped), then the rest.
_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)


class UriError(ValueError):
    """A URI or name-address that cannot be read; the message says what is wrong."""


Params = tuple[tuple[str, str | None], ...]


def param_value(params: Params, name: str) -> str | None:
    """The value of parameter ``name`` (any case; "" for a flag), None when it is not there."""
    low = name.lower()
    for key, value in params:
        if key.lower() == low:
            return value if value is not None else ""
    return None


def _has_param(params: Params, name: str) -> bool:
    low = name.lower()
    return any(key.lower() == low for key, _ in params)


def parse_params(text: str) -> Params:
    """``;a=b;c`` (the leading ``;`` optional) as ordered (name, value) pairs (value None: a flag).

    Spaces around ``=`` and ``;`` are allowed and empty items (``;;``) skipped, as RFC 4475's valid
    messages need; a name that is not a token, or a value with spaces, quotes, ``<>`` or ``,`` outside a
    quoted string, is refused (an address list written where one address belongs: ``<a>, <b>``)."""
    if not text or text.isspace():
        return ()  # most URIs and addresses have none
    out: list[tuple[str, str | None]] = []
    for part in _split_outside_quotes(text, ";"):
        part = part.strip()
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = name.strip()
        if not TOKEN.fullmatch(name):
            raise UriError(f"{shown(part)!r} is not a parameter (name=value)")
        if not eq:
            out.append((name, None))
            continue
        value = value.strip()
        if not (_BARE_VALUE.fullmatch(value) or _is_quoted(value)):
            raise UriError(f"{shown(part)!r}: a value with spaces, quotes, '<>' or ',' must be quoted")
        out.append((name, value))
    return tuple(out)


def _is_quoted(value: str) -> bool:
    """Whether ``value`` is one whole quoted string (escapes allowed inside)."""
    if len(value) < 2 or value[0] != '"':
        return False
    try:
        _, rest = _quoted(value, value)
    except UriError:
        return False
    return rest == ""


def format_params(params: Params) -> str:
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params)


@dataclass(frozen=True)
class Uri:
    """A URI. For ``sip``/``sips`` its parts; for any other scheme, ``opaque`` holds what follows ``:``."""

    scheme: str
    host: str = ""
    user: str | None = None
    password: str | None = None
    port: int | None = None
    params: Params = ()
    #: The ``?h=v&...`` part, as written, without the ``?``.
    headers: str = ""
    opaque: str = ""

    @property
    def is_sip(self) -> bool:
        return self.scheme in ("sip", "sips")

    def param(self, name: str) -> str | None:
        """A URI parameter's value ("" for a flag such as ``lr``), None when absent."""
        return param_value(self.params, name)

    def has_param(self, name: str) -> bool:
        return _has_param(self.params, name)

    @property
    def transport(self) -> str:
        """``udp``, ``tcp`` ... from ``;transport=`` (``tls`` for sips), lower case; "" when not said."""
        given = self.param("transport")
        if given:
            return given.lower()
        return "tls" if self.scheme == "sips" else ""

    @property
    def host_port(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port is None else f"{host}:{self.port}"

    def with_params(self, params: Params) -> Uri:
        return replace(self, params=params)

    def __str__(self) -> str:
        if not self.is_sip:
            return f"{self.scheme}:{self.opaque}"
        userinfo = ""
        if self.user is not None:
            userinfo = self.user if self.password is None else f"{self.user}:{self.password}"
            userinfo += "@"
        text = f"{self.scheme}:{userinfo}{self.host_port}{format_params(self.params)}"
        return f"{text}?{self.headers}" if self.headers else text


def parse_uri(text: str) -> Uri:
    """Read a URI (RFC 3261 §19.1.1 for sip/sips; any ``scheme:rest`` otherwise). Raises UriError."""
    text = text.strip()
    if len(text) > MAX_TEXT:
        raise UriError(f"a URI of {len(text)} characters (at most {MAX_TEXT})")
    scheme, colon, rest = text.partition(":")
    if not colon or not _SCHEME.fullmatch(scheme):
        raise UriError(f"{shown(text)!r} is not a URI (expected e.g. sip:user@host)")
    scheme = scheme.lower()
    if _NOT_IN_URI.search(rest):
        raise UriError(f"{shown(text)!r}: a URI cannot hold spaces, '<', '>' or quotes")
    if scheme not in ("sip", "sips"):
        if not rest:
            raise UriError(f"{shown(text)!r}: nothing after the scheme")
        return Uri(scheme=scheme, opaque=rest)
    # The user part may hold '?', ';' and ',' (RFC 4475 §3.1.1.2, §3.1.1.9) but never '@', which neither
    # parameters nor headers may hold unescaped: so userinfo ends at the first '@'.
    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.partition("@")
        user, sep, pw = userinfo.partition(":")
        password = pw if sep else None
        if not user:
            raise UriError(f"{shown(text)!r}: an empty user before '@'")
    rest, _, headers = rest.partition("?")
    hostport, _, param_text = rest.partition(";")
    host, port = _host_port(hostport, text)
    return Uri(
        scheme=scheme,
        host=host,
        user=user,
        password=password,
        port=port,
        params=parse_params(param_text),
        headers=headers,
    )


def _host_port(hostport: str, text: str) -> tuple[str, int | None]:
    if hostport.startswith("["):
        end = hostport.find("]")
        if end < 0 or not _IPV6_REF.fullmatch(hostport[: end + 1]):
            raise UriError(f"{shown(text)!r}: an IPv6 host must be a bracketed address")
        host, after = hostport[1:end], hostport[end + 1 :]
    else:
        host, _, port_text = hostport.partition(":")
        after = f":{port_text}" if _ else ""
        if not host or not _HOST_NAME.fullmatch(host):
            raise UriError(f"{shown(host)!r} is not a host" if host else f"{shown(text)!r}: no host")
    port: int | None = None
    if after:
        if not after.startswith(":") or not _PORT.fullmatch(after[1:]) or not 0 < int(after[1:]) <= 65535:
            raise UriError(f"{shown(text)!r}: the port must be a number from 1 to 65535")
        port = int(after[1:])
    return host.lower(), port


@dataclass(frozen=True)
class NameAddr:
    """A From, To, Contact, Route or Record-Route value: an optional display name, a URI and the
    header's own parameters (``tag``, ``expires``, ``q`` ...). ``bracketed`` says whether the URI was
    written in ``<>`` (it is always written so)."""

    uri: Uri
    display: str | None = None
    params: Params = ()
    bracketed: bool = True

    def param(self, name: str) -> str | None:
        return param_value(self.params, name)

    @property
    def tag(self) -> str | None:
        tag = self.param("tag")
        return tag or None

    def with_param(self, name: str, value: str | None) -> NameAddr:
        kept = tuple((k, v) for k, v in self.params if k.lower() != name.lower())
        return replace(self, params=(*kept, (name, value)))

    def __str__(self) -> str:
        display = ""
        if self.display:
            escaped = self.display.replace("\\", "\\\\").replace('"', '\\"')
            display = f'"{escaped}" '
        return f"{display}<{self.uri}>{format_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Read ``"Name" <uri>;params``, ``Name <uri>;params``, ``<uri>;params`` or ``uri;params`` (with no
    brackets, ``;`` parameters belong to the header, RFC 3261 §20). Raises UriError."""
    text = text.strip()
    if len(text) > MAX_TEXT:
        raise UriError(f"an address of {len(text)} characters (at most {MAX_TEXT})")
    display: str | None = None
    rest = text
    if rest.startswith('"'):
        display, rest = _quoted(rest, text)
        rest = rest.lstrip()
    lt = rest.find("<")
    if lt >= 0:
        before = rest[:lt].strip()
        if before:
            if display is not None:
                raise UriError(f"{shown(text)!r}: text between the display name and '<'")
            words = before.split()
            if not all(TOKEN.fullmatch(word) for word in words):
                # RFC 4475 §3.1.2.15: `Bell, Alexander <sip:...>` — such a name must be quoted
                raise UriError(f"{shown(text)!r}: a display name with ',', ':' ... must be in quotes")
            display = " ".join(words)
        gt = rest.find(">", lt)
        if gt < 0:
            raise UriError(f"{shown(text)!r}: '<' without '>'")
        inside = rest[lt + 1 : gt]
        if inside != inside.strip():
            # RFC 4475 §3.1.2.14: `< sip:t.watson@example.org >` (LAQUOT/RAQUOT take no inner space)
            raise UriError(f"{shown(text)!r}: spaces inside '<>'")
        after = rest[gt + 1 :].lstrip()
        if after and not after.startswith(";"):
            raise UriError(f"{shown(after)!r} after '>': one address here, then ;params")
        return NameAddr(uri=parse_uri(inside), display=display, params=parse_params(after), bracketed=True)
    if display is not None:
        raise UriError(f"{shown(text)!r}: a display name needs the URI in '<>'")
    uri_text, _, param_text = rest.partition(";")
    if any(c in uri_text for c in ",?") and uri_text.startswith(("sip:", "sips:")):
        raise UriError(f"{shown(text)!r}: a URI with ',' or '?' must be written in '<>'")
    return NameAddr(uri=parse_uri(uri_text), params=parse_params(param_text), bracketed=False)


def _quoted(text: str, whole: str) -> tuple[str, str]:
    """A quoted string at the start of ``text`` (its content unescaped) and what follows it."""
    m = _QUOTED.match(text)
    if m is None:
        raise UriError(f"{shown(whole)!r}: a quoted string that does not end")
    return _QUOTED_PAIR.sub(r"\1", m.group(1)), text[m.end() :]


def split_list(value: str) -> list[str]:
    """A comma-separated header value's items, commas inside quotes or ``<>`` kept (Contact, Route ...)."""
    return [part.strip() for part in _split_outside_quotes(value, ",", brackets=True) if part.strip()]


def _split_outside_quotes(text: str, sep: str, *, brackets: bool = False) -> list[str]:
    # the common cases without a walk character by character: one item, or nothing quoted or bracketed
    if sep not in text:
        return [text]
    if '"' not in text and (not brackets or "<" not in text):
        return text.split(sep)
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    depth = 0
    for c in text:
        if escaped:
            escaped = False
        elif quoted and c == "\\":
            escaped = True
        elif c == '"':
            quoted = not quoted
        elif not quoted and brackets and c == "<":
            depth += 1
        elif not quoted and brackets and c == ">":
            depth = max(0, depth - 1)
        elif not quoted and depth == 0 and c == sep:
            parts.append("".join(current))
            current = []
            continue
        current.append(c)
    parts.append("".join(current))
    return parts


#: How much of a peer's text an error message repeats (errors become reason phrases and log lines).
SHOWN = 40


def shown(text: str) -> str:
    """Hostile text in an error message: one line, printable, at most :data:`SHOWN` characters."""
    one = "".join(c if c.isprintable() else "?" for c in " ".join(text.split()))
    return one if len(one) <= SHOWN else one[: SHOWN - 3] + "..."
