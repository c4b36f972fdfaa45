"""The web console of ``swml serve --http`` (docs/console.md): one page at ``/``, the phone at ``/phone``
(docs/phone.md: a browser calls the engine over WebRTC) and their files under ``/console/``.

The page is plain HTML, ES modules and CSS shipped in this package (``static/``): no build step, nothing
fetched from elsewhere. It holds no data itself — everything it shows comes from ``/api`` with the session
cookie — so the files are served without credentials, like a sign-in page. They are the only files served:
names are looked up in the set read from ``static/`` at start, never joined to a path from the request.

Every answer carries a strict Content-Security-Policy: scripts, styles, media and connections from this
origin only, no inline script or style, no framing, no plugins, forms posting nowhere but here. So a value
that slipped into the page as markup (a caller's name, say) could not run, and the page cannot be framed
to trick a signed-in operator into a click.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response

from swml_engine.service.sessions import COOKIE

#: Where the page's own files are (also the URL prefix they are served under).
ASSET_PREFIX: Final = "/console/"

#: Everything from this origin, nothing inline, nothing framed (see the module's docstring).
CONTENT_SECURITY_POLICY: Final = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "media-src 'self'",
        "connect-src 'self'",
        "form-action 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    )
)

#: Headers on every console answer. ``no-cache``: a browser checks again at each load, so a new
#: version's page and scripts are never mixed with the old ones.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}

#: The pages, by their path, and the file each is (their scripts and styles are under ASSET_PREFIX).
PAGES: Final = {"/": "index.html", "/phone": "phone.html"}

#: In each page, what tells the page whether the browser sent a session cookie (the page cannot see the
#: cookie itself: it is HttpOnly). Without one the page shows the sign-in at once instead of asking the API,
#: whose refusal a browser would log as an error.
SIGNED_OUT_MARK: Final = b'<meta name="swml-session" content="none">'
SIGNED_IN_MARK: Final = b'<meta name="swml-session" content="cookie">'

#: The content type of each kind of file the console ships (a file of another kind is not served).
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}


@dataclass(frozen=True)
class Asset:
    body: bytes
    content_type: str


def load_assets() -> dict[str, Asset]:
    """The console's files by name, read once from the package (a wheel or a source tree)."""
    found: dict[str, Asset] = {}
    for entry in resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            found[entry.name] = Asset(entry.read_bytes(), CONTENT_TYPES[suffix])
    for page in PAGES.values():
        if page not in found:
            raise RuntimeError(f"the console's {page} is missing from {__package__}/static: reinstall swml-engine")
    return found


def marked(page: str, asset: Asset) -> tuple[Asset, Asset]:
    """A page as served to a browser without a session cookie, and as served to one with it."""
    if SIGNED_OUT_MARK not in asset.body:
        raise RuntimeError(f"the console's {page} lacks {SIGNED_OUT_MARK.decode()}: reinstall swml-engine")
    return asset, Asset(asset.body.replace(SIGNED_OUT_MARK, SIGNED_IN_MARK), asset.content_type)


def add_console(app: FastAPI) -> None:
    """Serve the console on ``app``: its pages (PAGES), ``/console/<name>`` their files (GET and HEAD)."""
    assets = load_assets()

    for path, name in PAGES.items():
        add_page(app, path, *marked(name, assets[name]))

    # ({name:path}: a name with a slash in it, or one that decodes to one, is answered here too, so every
    # answer under the prefix — a refusal as well — carries the console's headers)
    @app.api_route(ASSET_PREFIX + "{name:path}", methods=["GET", "HEAD"], include_in_schema=False)
    async def asset(name: str) -> Response:
        found = assets.get(name)
        if found is None:
            raise HTTPException(404, f"the console has no file {name[:80]!r}", headers=SECURITY_HEADERS)
        return answer(found)


def add_page(app: FastAPI, path: str, signed_out: Asset, with_cookie: Asset) -> None:
    """Serve one page at ``path``, marked by whether the browser sent a session cookie."""

    @app.api_route(path, methods=["GET", "HEAD"], include_in_schema=False)
    async def page(request: Request) -> Response:
        # (whether the cookie is still valid, the page asks GET /api/session)
        return answer(with_cookie if COOKIE in request.cookies else signed_out)


def answer(asset: Asset) -> Response:
    return Response(asset.body, media_type=asset.content_type, headers=SECURITY_HEADERS)
