"""The variable scopes of a call: ``call``, ``params``, ``vars``, ``envs`` (calling-overview.mdx).

``call`` and ``envs`` are read-only to the script; ``vars`` is set by ``set`` and by methods' outcome
variables; ``params`` is replaced by each ``execute`` and restored when it returns.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

SCOPES = ("call", "params", "vars", "envs")

_PATH = re.compile(r"^\s*[A-Za-z_$][\w$]*(?:\s*\.\s*[A-Za-z_$][\w$]*|\s*\[\s*\d+\s*\])*\s*$")
_TOKEN = re.compile(r"[A-Za-z_$][\w$]*|\[\s*(\d+)\s*\]")

_MISSING = object()


#: Bare words that JavaScript reads as values, not variable names.
_JS_WORDS = frozenset({"true", "false", "null", "undefined", "NaN", "Infinity", "this"})


def is_path(body: str) -> bool:
    """A plain variable path such as ``call.from`` or ``employees[1].name`` (anything else is JavaScript)."""
    if _PATH.match(body) is None:
        return False
    head = _TOKEN.match(body.strip())
    return head is None or head.group(0) not in _JS_WORDS


def path_tokens(body: str) -> list[str | int]:
    tokens: list[str | int] = []
    for m in _TOKEN.finditer(body):
        tokens.append(int(m.group(1)) if m.group(1) is not None else m.group(0))
    return tokens


def variable_name(key: str) -> str:
    """The variable a ``set`` or ``unset`` key names: ``x``, or ``vars.x`` (the scope written out, as
    ``${vars.x}`` reads it)."""
    key = key.strip()
    return key[len("vars.") :] if key.startswith("vars.") else key


def not_a_variable_name(key: str) -> str | None:
    """Why a ``set``/``unset`` key names no variable a placeholder could read, or None. ``set`` writes
    whole variables: a key ``obj.c`` made a variable of that name, which ``${obj.c}`` never reads (it
    reads field ``c`` of ``obj``), and ``unset: obj.c`` removed nothing."""
    name = variable_name(key)
    if "." not in name and "[" not in name:
        return None
    head = re.split(r"[.\[]", name, maxsplit=1)[0].strip()
    if head in SCOPES:
        return f"{key!r} is not a variable name: {head} is read-only (set and unset change vars)"
    if not head:
        return f"{key!r} is not a variable name"
    return (
        f"{key!r} is not a variable name: ${{{name}}} reads a field of {head}, never a variable of this name; "
        f"set or unset {head} as a whole"
    )


@dataclass
class Variables:
    call: dict[str, Any] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    vars: dict[str, Any] = field(default_factory=dict)
    envs: dict[str, Any] = field(default_factory=dict)

    def scope(self, name: str) -> dict[str, Any]:
        return {"call": self.call, "params": self.params, "vars": self.vars, "envs": self.envs}[name]

    def lookup(self, path: str) -> tuple[bool, Any]:
        """Resolve a plain path; unprefixed names are looked up in vars, then envs, then call."""
        tokens = path_tokens(path)
        if not tokens or not isinstance(tokens[0], str):
            return False, None
        head = tokens[0]
        if head in SCOPES:
            value = _walk(self.scope(head), tokens[1:])
        else:
            value = _MISSING
            for scope in (self.vars, self.envs, self.call):
                if head in scope:
                    value = _walk(scope, tokens)
                    break
        if value is _MISSING:
            return False, None
        return True, value

    def js_scope(self) -> dict[str, Any]:
        """The names visible to a JavaScript expression: scope objects, then unprefixed fallbacks."""
        merged: dict[str, Any] = {}
        merged.update(self.call)
        merged.update(self.envs)
        merged.update(self.vars)
        merged.update({"call": self.call, "params": self.params, "vars": self.vars, "envs": self.envs})
        return merged

    def payload(self) -> dict[str, Any]:
        """The body POSTed to remote SWML (execute to a URL, --script-url)."""
        return {"call": self.call, "vars": self.vars, "params": self.params, "envs": self.envs}


def _walk(value: Any, tokens: list[str | int]) -> Any:
    for tok in tokens:
        if isinstance(tok, int):
            if isinstance(value, list) and -len(value) <= tok < len(value):
                value = value[tok]
            else:
                return _MISSING
        elif isinstance(value, dict) and tok in value:
            value = value[tok]
        else:
            return _MISSING
    return value
