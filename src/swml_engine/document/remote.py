"""SWML fetched over HTTP: ``execute`` to a URL and ``swml serve --script-url``.

The engine POSTs the call payload (``call``, ``vars``, ``params``, ``envs``) as JSON and accepts a
JSON or YAML reply. Credentials in the URL are sent as basic auth and never shown (logs and events
show ``***@``). What a hostile or broken server can cost is bounded (docs/documents.md, "Remote
documents"): one deadline for the fetch and the parse together, the reply streamed and refused past
4 MiB, YAML aliases bounded, and a redirect to another origin refused — the payload, ``envs``
included, goes only to the origin the operator or the script named.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from swml_engine.call import CallOptions
from swml_engine.document.loader import load_text
from swml_engine.document.model import Document, MethodTable
from swml_engine.errors import DocumentError, ParamError
from swml_engine.events import jsonable
from swml_engine.fetch import FetchControl, FetchError, Redirects, http_fetch
from swml_engine.urls import UrlError, parse_http_url, redact

#: A SWML document larger than this is refused (the download stops there).
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
ACCEPT = "application/json, application/yaml, text/x-yaml"


def _error(message: str) -> DocumentError:
    return DocumentError([ParamError("", message)])


def fetch_document(url: str, payload: dict[str, Any], control: FetchControl, *, methods: MethodTable) -> Document:
    """Blocking: POST the payload, parse the reply and check it against ``methods``, all within
    ``control``'s deadline; DocumentError says what went wrong and where (the URL redacted)."""
    try:
        target = parse_http_url(url)
    except UrlError as e:
        raise _error(f"cannot fetch SWML from {e}") from None
    try:
        reply = http_fetch(
            target,
            control,
            limit=MAX_DOCUMENT_BYTES,
            redirects=Redirects.SAME_ORIGIN,
            # Strict JSON, as vars.json: a variable holding NaN (a sum over an empty prompt_value) made
            # every fetch fail 'Out of range float values are not JSON compliant'.
            json_body=jsonable(payload),
            headers={"Accept": ACCEPT},
            what="SWML from ",
        )
    except FetchError as e:
        raise _error(str(e)) from None
    try:
        text = reply.body.decode("utf-8")
    except UnicodeDecodeError:
        raise _error(f"the reply from {target.shown} is not UTF-8 text") from None
    try:
        # Parsing and checking count against the same deadline: a reply that takes long to read
        # (megabytes of YAML) fails like one that takes long to arrive.
        return load_text(text, target.shown, budget=control.check, methods=methods)
    except FetchError as e:
        raise _error(f"reading the SWML: {e}") from None


async def fetch_remote(url: str, payload: dict[str, Any], options: CallOptions, methods: MethodTable) -> Document:
    """Fetch a document for a call, on the call's fetch slots (FetchStopped if the call ends first), and
    check it against ``methods``."""
    fetch = partial(fetch_document, url, payload, methods=methods)
    return await options.fetches.run(fetch, options.fetch_timeout, redact(url))
