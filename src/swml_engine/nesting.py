"""How deep lists and objects nest in a JSON-like value (a parsed document, an expression's value).

The parsers read about 1000 levels, and V8 builds more; but the engine's walks over a value (the loader's
checks, filling placeholders, writing an event) recurse, and hit Python's recursion limit first: a list
900 deep in a ``set`` value was a RecursionError that ended ``swml run``. So deeper values are refused
where they come in, measured here without recursion.
"""

from __future__ import annotations

#: Lists and objects inside one another, counted from the document's top: room for the 50 nested blocks
#: a document may have (four levels each) with values inside them.
MAX_DEPTH = 300


def too_deep(value: object, limit: int = MAX_DEPTH) -> list[str | int] | None:
    """The first keys of a path along which lists and objects nest more than ``limit`` deep, or None."""
    if not _deeper_than(value, limit):
        return None
    # Found: measure each distinct list or object once (YAML aliases share them) to name the place.
    height: dict[int, int] = {}
    stack: list[tuple[object, bool]] = [(value, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in height:
            continue
        kids = [kid for _, kid in _nested(node)]
        if children_done:
            height[id(node)] = 1 + max((height[id(kid)] for kid in kids), default=0)
        else:
            stack.append((node, True))
            stack.extend((kid, False) for kid in kids if id(kid) not in height)
    keys: list[str | int] = []
    node = value
    for _ in range(8):  # the first few keys name the place; the rest is more of the same nesting
        key, node = max(_nested(node), key=lambda pair: height[id(pair[1])])
        keys.append(key)
    return keys


def _deeper_than(value: object, limit: int) -> bool:
    """The quick pass, for every value that comes in (a parse's aliases are already bounded: it may
    visit a shared list once per place it appears)."""
    stack: list[tuple[object, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
        for child in children:
            if isinstance(child, dict | list):
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def _nested(node: object) -> list[tuple[str | int, object]]:
    """The lists and objects directly inside ``node``, with their keys."""
    pairs: list[tuple[str | int, object]] = []
    if isinstance(node, dict):
        pairs = [(str(k), v) for k, v in node.items()]
    elif isinstance(node, list):
        pairs = list(enumerate(node))
    return [(k, v) for k, v in pairs if isinstance(v, dict | list)]
