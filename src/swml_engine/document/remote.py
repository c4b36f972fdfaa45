"""SWML fetched over HTTP: ``execute`` to a URL and ``swml serve --script-url``.

The engine POSTs the call payload (``call``, ``vars``, ``params``, ``envs``) as JSON and accepts a
JSON or YAML reply. Credentials in the URL are sent as basic auth.
"""

from __future__ import annotations

from typing import Any

import httpx

from swml_engine.document.loader import load_document, parse_text
from swml_engine.document.model import Document
from swml_engine.errors import DocumentError, ParamError
from swml_engine.media.sources.url import split_auth

#: A SWML document larger than this is refused.
MAX_DOCUMENT_BYTES = 4 * 1024 * 1024


def fetch_document(url: str, payload: dict[str, Any], timeout: float) -> Document:
    """Blocking: POST the payload, parse the reply; DocumentError says what went wrong and where."""
    clean, auth = split_auth(url)
    try:
        with httpx.Client(timeout=timeout, follow_redirects=True, auth=auth) as client:
            resp = client.post(clean, json=payload, headers={"Accept": "application/json, application/yaml"})
    except httpx.TimeoutException:
        raise DocumentError([ParamError("", f"{clean} did not answer within {timeout:g} s")]) from None
    except httpx.HTTPError as e:
        raise DocumentError([ParamError("", f"cannot fetch SWML from {clean}: {e or type(e).__name__}")]) from None
    if resp.status_code != 200:
        raise DocumentError([ParamError("", f"HTTP {resp.status_code} from {clean}")])
    if len(resp.content) > MAX_DOCUMENT_BYTES:
        raise DocumentError([ParamError("", f"the SWML from {clean} is larger than 4 MiB")])
    try:
        text = resp.content.decode("utf-8")
    except UnicodeDecodeError:
        raise DocumentError([ParamError("", f"the reply from {clean} is not UTF-8 text")]) from None
    return load_document(parse_text(text, clean), clean)
