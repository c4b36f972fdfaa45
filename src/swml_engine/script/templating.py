"""Filling ``${...}`` and ``%{...}`` placeholders in every string value of a step's parameters.

* A plain path (``call.from``, ``employees[1].name``) is looked up; a missing value is ``""``.
* Anything else is a JavaScript expression (see expressions.py).
* A string that is exactly one placeholder keeps the value's JSON type (number, bool, object, list);
  inside longer text values become text (objects and lists as JSON, ``true``/``false``, no ``.0``).
* ``${lc:...}``/``${enc:url:...}`` prefixes and ``@{fn ...}`` functions as template-functions.mdx.
* Placeholders may nest: ``${contacts.${lc:dept}}`` fills the inner one first.
* A placeholder inside JavaScript (a ``when`` condition, or nested in another ``${...}``) is filled as a
  literal, never as code (see splice.py): a caller's value cannot change what the expression does.
* JavaScript runs off the event loop (expressions.py), so filling is async.
"""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from swml_engine.document.model import Block, Verbatim
from swml_engine.document.params import closing_brace
from swml_engine.errors import ExpressionError, ParamError
from swml_engine.script.context import Variables, is_path
from swml_engine.script.expressions import JsEngine
from swml_engine.script.splice import JsLexer, as_text, splice
from swml_engine.script.template_functions import (
    AT_OPENER,
    AtFunctions,
    apply_prefixes,
    is_at_function,
    split_prefixes,
)

T = TypeVar("T")

#: Step parameters that are JavaScript (``goto.when``; ``cond`` fills its entries' own): left as written
#: by :meth:`Templater.render_params`, and filled as literals when the condition is evaluated.
CONDITION_KEYS = frozenset({"when"})

#: Evaluates one JavaScript expression against a scope.
JsCall = Callable[[str, dict[str, Any]], Awaitable[Any]]


@dataclass(frozen=True)
class _Placeholder:
    kind: str  # "$", "%" or "@"
    body: str

    def __str__(self) -> str:
        return f"{self.kind}{{{self.body}}}"


def scan(text: str) -> list[str | _Placeholder]:
    """Split text into literal parts and placeholders, matching braces outside JS string literals."""
    parts: list[str | _Placeholder] = []
    buf: list[str] = []
    i = 0
    n = len(text)
    while i < n:
        c = text[i]
        # (An @{ that opens no function is text: reading each to its close cost the text's length
        # squared, on the event loop, for a value of many.)
        if c in "$%@" and i + 1 < n and text[i + 1] == "{" and (c != "@" or AT_OPENER.match(text, i)):
            end = closing_brace(text, i + 1)
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


class Templater:
    """Fills placeholders against a call's variables. One per call (it owns the call's JS context)."""

    def __init__(self, variables: Variables, js: JsEngine, now: Callable[[], float]) -> None:
        self.variables = variables
        self.js = js
        self.functions = AtFunctions(now)
        self._fill = _Fill(self, js.evaluate)

    def take_pending_sleep(self) -> float:
        s = self.functions.pending_sleep
        self.functions.pending_sleep = 0.0
        return s

    async def render_params(self, params: Any, path: str) -> Any:
        """A step's parameters filled, except its JavaScript conditions (CONDITION_KEYS)."""
        if isinstance(params, dict):
            return {
                k: v if k in CONDITION_KEYS and isinstance(v, str) else await self.render(v, f"{path}.{k}")
                for k, v in params.items()
            }
        return await self.render(params, path)

    async def render(self, value: Any, path: str) -> Any:
        """Fill every string inside value (dicts and lists walked; nested step Blocks left alone)."""
        if isinstance(value, Block | Verbatim):
            return value
        if isinstance(value, str):
            return await self.render_str(value, path)
        if isinstance(value, dict):
            return {k: await self.render(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, list):
            return [await self.render(v, f"{path}[{i}]") for i, v in enumerate(value)]
        return value

    async def render_str(self, text: str, path: str) -> Any:
        try:
            return await self._fill.text(text)
        except ExpressionError as e:
            raise ParamError(path, str(e)) from None

    async def evaluate(self, source: str, path: str) -> Any:
        """Evaluate a bare JavaScript condition (``goto.when``, ``cond[].when``), placeholders filled first."""
        try:
            return await self._fill.condition(source)
        except ExpressionError as e:
            raise ParamError(path, str(e)) from None


class _Fill:
    """Filling placeholders, running JavaScript with ``js``."""

    def __init__(self, templater: Templater, js: JsCall) -> None:
        self.t = templater
        self.js = js

    async def text(self, text: str) -> Any:
        parts = scan(text)
        if not any(isinstance(p, _Placeholder) for p in parts):
            return text
        if len(parts) == 1 and isinstance(parts[0], _Placeholder):
            return await self._value(parts[0])
        return "".join([p if isinstance(p, str) else as_text(await self._value(p)) for p in parts])

    async def condition(self, source: str) -> Any:
        parts = scan(source)
        if len(parts) == 1 and isinstance(parts[0], _Placeholder):
            return await self._value(parts[0])  # a whole-placeholder condition: its value, judged as is
        return await self._lookup_or_eval(await self._javascript(parts))

    async def _javascript(self, parts: list[str | _Placeholder]) -> str:
        """JavaScript text with its placeholders filled as literals where each stands (splice.py)."""
        if not any(isinstance(p, _Placeholder) for p in parts):
            return "".join(p for p in parts if isinstance(p, str))
        lexer = JsLexer()
        out: list[str] = []
        for i, part in enumerate(parts):
            if isinstance(part, _Placeholder):
                after = parts[i + 1] if i + 1 < len(parts) else ""
                spot = lexer.spot(after[:1] if isinstance(after, str) else "")
                part = splice(await self._value(part), spot, str(part))
            lexer.feed(part)
            out.append(part)
        return "".join(out)

    async def _value(self, ph: _Placeholder) -> Any:
        if ph.kind == "@":  # a template function's arguments are text, not JavaScript
            parts = scan(ph.body)
            body = "".join([p if isinstance(p, str) else as_text(await self._value(p)) for p in parts])
            return self.t.functions.run(body)
        prefixes, rest = split_prefixes(ph.body.strip())
        value = await self._lookup_or_eval(await self._javascript(scan(rest)))
        if prefixes:
            return apply_prefixes(prefixes, as_text(value))
        return value

    async def _lookup_or_eval(self, body: str) -> Any:
        variables = self.t.variables
        if is_path(body):
            found, value = variables.lookup(body)
            # A copy, not the variable itself: `set: {snapshot: '${vars}'}` put vars inside vars, a loop
            # that no event, vars.json or payload could be written from (swml run died of RecursionError).
            return copy.deepcopy(value) if found else ""
        if not body.strip():
            return ""
        return await self.js(body, variables.js_scope())
