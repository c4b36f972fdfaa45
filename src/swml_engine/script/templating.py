"""Filling ``${...}`` and ``%{...}`` placeholders in every string value of a step's parameters.

* A plain path (``call.from``, ``employees[1].name``) is looked up; a missing value is ``""``.
* Anything else is a JavaScript expression (see expressions.py).
* A string that is exactly one placeholder keeps the value's JSON type (number, bool, object, list);
  inside longer text values become text (objects and lists as JSON, ``true``/``false``, no ``.0``).
* ``${lc:...}``/``${enc:url:...}`` prefixes and ``@{fn ...}`` functions as template-functions.mdx.
* Placeholders may nest: ``${contacts.${lc:dept}}`` fills the inner one first.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from swml_engine.document.model import Block
from swml_engine.errors import ExpressionError, ParamError
from swml_engine.script.context import Variables, is_path
from swml_engine.script.expressions import JsEngine
from swml_engine.script.template_functions import AtFunctions, apply_prefixes, is_at_function, split_prefixes


@dataclass(frozen=True)
class _Placeholder:
    kind: str  # "$", "%" or "@"
    body: str


def scan(text: str) -> list[str | _Placeholder]:
    """Split text into literal parts and placeholders, matching braces outside JS string literals."""
    parts: list[str | _Placeholder] = []
    buf: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        if c in "$%@" and i + 1 < n and text[i + 1] == "{":
            end = _closing_brace(text, i + 1)
            if end > 0:
                body = text[i + 2 : end]
                if c != "@" or is_at_function(body):
                    if buf:
                        parts.append("".join(buf))
                        buf = []
                    parts.append(_Placeholder(c, body))
                    i = end + 1
                    continue
        buf.append(c)
        i += 1
    if buf:
        parts.append("".join(buf))
    return parts


def _closing_brace(text: str, open_at: int) -> int:
    depth = 0
    i = open_at
    quote: str | None = None
    while i < len(text):
        c = text[i]
        if quote is not None:
            if c == "\\":
                i += 2
                continue
            if c == quote:
                quote = None
        elif c in "\"'`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def has_placeholder(text: str) -> bool:
    return any(isinstance(p, _Placeholder) for p in scan(text))


def to_text(value: Any) -> str:
    """How a value reads inside a longer string."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    if isinstance(value, dict | list):
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return str(value)


class Templater:
    """Fills placeholders against a call's variables. One per call (it owns the call's JS context)."""

    def __init__(self, variables: Variables, js: JsEngine, now: Callable[[], float]) -> None:
        self.variables = variables
        self.js = js
        self.functions = AtFunctions(now)

    def take_pending_sleep(self) -> float:
        s = self.functions.pending_sleep
        self.functions.pending_sleep = 0.0
        return s

    def render(self, value: Any, path: str) -> Any:
        """Fill every string inside value (dicts and lists walked; nested step Blocks left alone)."""
        if isinstance(value, str):
            return self.render_str(value, path)
        if isinstance(value, Block):
            return value
        if isinstance(value, dict):
            return {k: self.render(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [self.render(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    def render_str(self, text: str, path: str) -> Any:
        parts = scan(text)
        if not any(isinstance(p, _Placeholder) for p in parts):
            return text
        try:
            if len(parts) == 1 and isinstance(parts[0], _Placeholder):
                return self._value(parts[0])
            return "".join(p if isinstance(p, str) else to_text(self._value(p)) for p in parts)
        except ExpressionError as e:
            raise ParamError(path, str(e)) from None

    def evaluate(self, source: str, path: str) -> Any:
        """Evaluate a bare JavaScript condition (``goto.when``, ``cond[].when``), placeholders filled first."""
        try:
            body = self._fill_nested(source)
            if is_path(body):
                _, v = self.variables.lookup(body)
                return v
            return self.js.evaluate(body, self.variables.js_scope())
        except ExpressionError as e:
            raise ParamError(path, str(e)) from None

    def _fill_nested(self, body: str) -> str:
        parts = scan(body)
        if not any(isinstance(p, _Placeholder) for p in parts):
            return body
        return "".join(p if isinstance(p, str) else to_text(self._value(p)) for p in parts)

    def _value(self, ph: _Placeholder) -> Any:
        body = self._fill_nested(ph.body)
        if ph.kind == "@":
            return self.functions.run(body)
        prefixes, rest = split_prefixes(body.strip())
        value = self._lookup_or_eval(rest)
        if prefixes:
            return apply_prefixes(prefixes, to_text(value))
        return value

    def _lookup_or_eval(self, body: str) -> Any:
        if is_path(body):
            found, value = self.variables.lookup(body)
            return value if found else ""
        if not body.strip():
            return ""
        return self.js.evaluate(body, self.variables.js_scope())
