"""Template functions of template-functions.mdx: prefix functions ``${lc:...}``, ``${enc:url:...}`` and
the ``@{name args}`` functions ``strftime_tz``, ``fmt_ph``, ``expr``, ``echo``, ``separate``, ``sleep``.

The hosted engine offers them in SWAIG contexts only; this engine accepts them in every string value
(a superset: a script valid there runs the same here).
"""

from __future__ import annotations

import ast
import operator
import re
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from swml_engine.errors import ExpressionError

PREFIXES: dict[str, Callable[[str], str]] = {
    "lc:": str.lower,
    "uc:": str.upper,
    "enc:url:": lambda s: urllib.parse.quote(s, safe=""),
}

_PREFIX = re.compile(r"^(?:lc:|uc:|enc:url:)+")

AT_FUNCTIONS = ("strftime_tz", "fmt_ph", "expr", "echo", "separate", "sleep")

#: The ``@{`` of a function call (its name, then a space or the closing brace: what is_at_function
#: takes); any other ``@{`` is text, and need not be read to its closing brace.
AT_OPENER = re.compile(r"@\{(?=\s*(?:" + "|".join(AT_FUNCTIONS) + r")(?: |\s*\}))")


def split_prefixes(body: str) -> tuple[list[str], str]:
    """``lc:enc:url:args.q`` -> (["lc:", "enc:url:"], "args.q")."""
    m = _PREFIX.match(body)
    if not m:
        return [], body
    chain = m.group(0)
    found: list[str] = []
    while chain:
        for p in PREFIXES:
            if chain.startswith(p):
                found.append(p)
                chain = chain[len(p) :]
                break
    return found, body[m.end() :]


def apply_prefixes(prefixes: list[str], text: str) -> str:
    for p in prefixes:  # applied in the order written, left to right
        text = PREFIXES[p](text)
    return text


def is_at_function(body: str) -> bool:
    name = body.strip().split(" ", 1)[0]
    return name in AT_FUNCTIONS


class AtFunctions:
    """Runs ``@{...}`` bodies. ``now`` gives Unix time from the call's clock; ``sleep`` only records a delay
    that the runner waits for before the step, since filling placeholders never blocks."""

    def __init__(self, now: Callable[[], float]) -> None:
        self.now = now
        self.pending_sleep = 0.0

    def run(self, body: str) -> str:
        name, _, arg = body.strip().partition(" ")
        arg = arg.strip()
        if name == "echo":
            return arg
        if name == "separate":
            return " ".join(ch for ch in arg if not ch.isspace())
        if name == "expr":
            return _format_number(_arith(arg))
        if name == "sleep":
            try:
                seconds = float(arg)
            except ValueError:
                raise ExpressionError(f"@{{sleep}} needs a number of seconds, got {arg!r}") from None
            if not 0 <= seconds <= 3600:
                raise ExpressionError(f"@{{sleep}} seconds must be between 0 and 3600, got {arg!r}")
            self.pending_sleep += seconds
            return ""
        if name == "strftime_tz":
            tz_name, _, fmt = arg.partition(" ")
            try:
                tz = ZoneInfo(tz_name)
            except (ZoneInfoNotFoundError, ValueError):
                raise ExpressionError(f"@{{strftime_tz}}: unknown time zone {tz_name!r}") from None
            return datetime.fromtimestamp(self.now(), UTC).astimezone(tz).strftime(fmt or "%Y-%m-%d %H:%M:%S")
        if name == "fmt_ph":
            fmt, _, number = arg.partition(" ")
            return format_phone(fmt, number.strip())
        raise ExpressionError(f"unknown template function @{{{name}}}")


_OPS: dict[type[ast.AST], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _arith(text: str) -> float:
    """Arithmetic on literal numbers only: + - * / and parentheses."""
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        raise ExpressionError(f"@{{expr}} cannot read {text!r}: use numbers, + - * / and parentheses") from None

    def ev(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
            return float(node.value)
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
            v = ev(node.operand)
            return -v if isinstance(node.op, ast.USub) else v
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            try:
                return _OPS[type(node.op)](ev(node.left), ev(node.right))
            except ZeroDivisionError:
                raise ExpressionError(f"@{{expr}} divides by zero: {text!r}") from None
        raise ExpressionError(f"@{{expr}} accepts only literal numbers, + - * / and parentheses: {text!r}")

    return ev(tree)


def _format_number(v: float) -> str:
    return str(int(v)) if v.is_integer() else repr(v)


def format_phone(fmt: str, number: str) -> str:
    """``@{fmt_ph national|international|RFC3966|e164[:sep:X] number}``.

    North American numbers (+1, or 10 digits) get their usual grouping (3-3-4); other numbers keep the
    country code and group the rest in threes and fours. No external phone-number database is used.
    """
    sep: str | None = None
    if ":sep:" in fmt:
        fmt, sep = fmt.split(":sep:", 1)
    fmt = fmt or "national"
    digits = re.sub(r"\D", "", number)
    if not digits:
        return number
    if number.strip().startswith("+"):
        cc, rest = _split_country(digits)
    elif len(digits) == 10:
        cc, rest = "1", digits
    elif len(digits) == 11 and digits.startswith("1"):
        cc, rest = "1", digits[1:]
    else:
        cc, rest = "", digits
    groups = [rest[:3], rest[3:6], rest[6:]] if cc == "1" and len(rest) == 10 else _groups(rest)
    low = fmt.lower()
    if low == "e164":
        return f"+{cc}{rest}" if cc else f"+{rest}"
    if low == "rfc3966":
        return "tel:" + "-".join(([f"+{cc}"] if cc else []) + groups)
    if low == "international":
        s = sep if sep is not None else " "
        return s.join(([f"+{cc}"] if cc else []) + groups)
    if sep is not None:
        return sep.join(groups)
    if cc == "1" and len(rest) == 10:
        return f"({groups[0]}) {groups[1]}-{groups[2]}"
    return " ".join(groups)


def _split_country(digits: str) -> tuple[str, str]:
    if digits.startswith("1"):
        return "1", digits[1:]
    two = {"20", "27", "30", "31", "32", "33", "34", "36", "39", "40", "41", "43", "44", "45", "46", "47", "48",
           "49", "51", "52", "53", "54", "55", "56", "57", "58", "60", "61", "62", "63", "64", "65", "66", "81",
           "82", "84", "86", "90", "91", "92", "93", "94", "95", "98"}  # fmt: skip
    if digits[:1] == "7":
        return "7", digits[1:]
    if digits[:2] in two:
        return digits[:2], digits[2:]
    return digits[:3], digits[3:]


def _groups(rest: str) -> list[str]:
    out: list[str] = []
    while len(rest) > 4:
        out.append(rest[:3])
        rest = rest[3:]
    if rest:
        out.append(rest)
    return out
