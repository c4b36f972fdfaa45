"""How a placeholder's value goes into JavaScript text: as a literal, never as code.

A ``${...}`` written inside an expression (a ``when`` condition, or nested in another ``${...}``) is
filled before V8 sees the text. Pasted as raw text, a caller's value (a SIP header such as
``silver' || 'a'=='a``) would become code and could flip a condition. So the value is written as what
the spot it stands in can hold, and nothing more:

* inside a string literal (``'...'``, ``"..."``, a template ````...````): the string's escaped content;
* inside a regular expression literal: characters that match themselves;
* inside a comment: nothing;
* glued to a name (``staff_${n}``, ``contacts.${lc:dept}``): a name part (letters, digits, ``_``, ``$``),
  else an error;
* anywhere else: a JSON literal in parentheses (text that is a plain decimal number becomes that
  number, as pasting it did; other text becomes a quoted string).

The spot is found by a small JavaScript lexer that reads the text around the placeholders.
"""

from __future__ import annotations

import enum
import json
import math
import re
from typing import Any

from swml_engine.errors import ExpressionError


class Spot(enum.Enum):
    """Where a placeholder stands in JavaScript text."""

    CODE = "code"
    NAME = "name"
    SINGLE_QUOTED = "'"
    DOUBLE_QUOTED = '"'
    TEMPLATE = "`"
    REGEX = "/"
    COMMENT = "comment"


class _State(enum.Enum):
    CODE = "code"
    SLASH = "code /"  # a "/" in code: a comment, a regex or a division, as the next character tells
    SINGLE_QUOTED = "'"
    DOUBLE_QUOTED = '"'
    TEMPLATE = "`"
    REGEX = "/"
    REGEX_CLASS = "["
    LINE_COMMENT = "//"
    BLOCK_COMMENT = "/*"


_QUOTES = {"'": _State.SINGLE_QUOTED, '"': _State.DOUBLE_QUOTED, "`": _State.TEMPLATE}
_SPOTS = {
    _State.SINGLE_QUOTED: Spot.SINGLE_QUOTED,
    _State.DOUBLE_QUOTED: Spot.DOUBLE_QUOTED,
    _State.TEMPLATE: Spot.TEMPLATE,
    _State.REGEX: Spot.REGEX,
    _State.REGEX_CLASS: Spot.REGEX,
    _State.LINE_COMMENT: Spot.COMMENT,
    _State.BLOCK_COMMENT: Spot.COMMENT,
}
#: Words after which a "/" starts a regular expression rather than a division.
_OPERATOR_WORDS = frozenset(
    {
        "return",
        "typeof",
        "instanceof",
        "in",
        "of",
        "new",
        "delete",
        "void",
        "throw",
        "case",
        "do",
        "else",
        "yield",
        "await",
    }
)
_NAME_CHAR = re.compile(r"[\w$]")
_NAME_PART = re.compile(r"^[\w$]*$", re.ASCII)
#: A plain decimal number, as JSON writes one (no leading zeros, a sign only in front).
_NUMBER = re.compile(r"^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?$")
_LINE_ENDS = "\n\r\u2028\u2029"


class JsLexer:
    """Follows JavaScript text fed piece by piece, enough to say where the next piece would stand."""

    def __init__(self) -> None:
        self.state = _State.CODE
        #: In code: whether the last token was a value (then "/" divides) rather than an operator.
        self._after_value = False
        self._word = ""
        self._escaped = False
        self._star = False  # in a block comment: the last character was "*"
        self._tail = ""  # the last three characters

    def spot(self, next_char: str) -> Spot:
        """Where a placeholder written here stands; ``next_char``: the text's character after it."""
        if self.state is _State.SLASH:
            return Spot.CODE if self._after_value else Spot.REGEX
        if self.state is not _State.CODE:
            return _SPOTS[self.state]
        last = self._tail[-1:]
        glued = bool(_NAME_CHAR.match(last)) or (last == "." and self._tail != "...")
        return Spot.NAME if glued or bool(next_char and _NAME_CHAR.match(next_char)) else Spot.CODE

    def feed(self, text: str) -> None:
        for c in text:
            self._step(c)
            self._tail = (self._tail + c)[-3:]

    def _step(self, c: str) -> None:
        state = self.state
        if state is _State.CODE:
            self._code(c)
        elif state is _State.SLASH:
            self._after_slash(c)
        elif state in (_State.SINGLE_QUOTED, _State.DOUBLE_QUOTED, _State.TEMPLATE):
            if self._escaped:
                self._escaped = False
            elif c == "\\":
                self._escaped = True
            elif c == state.value:
                self._end_of_literal()
            elif c in _LINE_ENDS and state is not _State.TEMPLATE:
                self.state = _State.CODE  # an unterminated string: V8 reports the syntax error
        elif state in (_State.REGEX, _State.REGEX_CLASS):
            self._regex(c)
        elif state is _State.LINE_COMMENT:
            if c in _LINE_ENDS:
                self.state = _State.CODE
        elif state is _State.BLOCK_COMMENT:
            if c == "/" and self._star:
                self.state = _State.CODE
            self._star = c == "*"

    def _code(self, c: str) -> None:
        if _NAME_CHAR.match(c):
            self._word += c
            return
        if self._word:
            self._after_value = self._word not in _OPERATOR_WORDS
            self._word = ""
        if c in _QUOTES:
            self.state = _QUOTES[c]
        elif c == "/":
            self.state = _State.SLASH
        elif c in ")]}":
            self._after_value = True
        elif not c.isspace():
            self._after_value = False

    def _after_slash(self, c: str) -> None:
        if c == "/":
            self.state = _State.LINE_COMMENT
        elif c == "*":
            self.state = _State.BLOCK_COMMENT
            self._star = False  # "/*/" does not close the comment it opens
        elif self._after_value:  # a division
            self.state = _State.CODE
            self._after_value = False
            self._code(c)
        else:
            self.state = _State.REGEX
            self._regex(c)

    def _regex(self, c: str) -> None:
        if self._escaped:
            self._escaped = False
        elif c == "\\":
            self._escaped = True
        elif c in _LINE_ENDS:
            self.state = _State.CODE
        elif self.state is _State.REGEX_CLASS:
            if c == "]":
                self.state = _State.REGEX
        elif c == "[":
            self.state = _State.REGEX_CLASS
        elif c == "/":
            self._end_of_literal()  # its flags then read as a name, still part of the value

    def _end_of_literal(self) -> None:
        self.state = _State.CODE
        self._after_value = True


def splice(value: Any, spot: Spot, source: str) -> str:
    """The text that stands for ``value`` at ``spot`` (``source``: the placeholder, for errors)."""
    if spot is Spot.COMMENT:
        return ""
    if spot is Spot.CODE:
        return _literal(value)
    text = as_text(value)
    if spot is Spot.NAME:
        if not _NAME_PART.match(text):
            raise ExpressionError(
                f"{source} is {text[:40]!r}, which cannot be part of a name where it stands in the expression"
                " (letters, digits, _ and $ only)"
            )
        return text
    if spot is Spot.REGEX:
        return "".join(c if c.isascii() and (c.isalnum() or c == "_") else _utf16_escape(c) for c in text)
    content = json.dumps(text)[1:-1]  # every quote, backslash and line end escaped; non-ASCII as \\u
    if spot is Spot.SINGLE_QUOTED:
        return content.replace("'", "\\'")
    if spot is Spot.TEMPLATE:
        return content.replace("`", "\\`").replace("$", "\\$")
    return content


def as_text(value: Any) -> str:
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


def _literal(value: Any) -> str:
    if isinstance(value, str):
        if len(value) <= 40 and _NUMBER.match(value):
            return f"({value})"
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool | int | float):
        return f"({as_text(value)})"
    return f"({json.dumps(value, default=str)})"


def _utf16_escape(c: str) -> str:
    units = c.encode("utf-16-be")
    return "".join(f"\\u{units[i]:02x}{units[i + 1]:02x}" for i in range(0, len(units), 2))
