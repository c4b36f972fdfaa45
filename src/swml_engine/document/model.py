"""The loaded form of a SWML document: sections of steps, each step one method with its parameters.

Also what loading needs of the methods (:class:`LoadableMethod`, :data:`MethodTable`): the loader is
handed a method table by its caller (``swml_engine.methods.REGISTRY``) and never imports the methods,
which import this package for their parameters.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from swml_engine.errors import ParamError


@dataclass
class Step:
    """One step: ``method`` with its parameters as written (after shorthands), placeholders not yet filled.

    ``params`` holds nested step lists (``cond``'s ``then``, ``switch``'s cases, ...) as :class:`Block`
    objects, already loaded and checked, so placeholders inside them are filled only when they run.
    """

    method: str
    params: Any
    path: str  # e.g. "sections.main[2]"

    @property
    def index(self) -> int:
        """The step's position in its list (``2`` for ``sections.main[2]`` or ``...cond[0].then[2]``)."""
        tail = self.path.rsplit("[", 1)
        return int(tail[1][:-1]) if len(tail) == 2 and tail[1][:-1].isdigit() and tail[1].endswith("]") else 0

    @property
    def where(self) -> str:
        """Path of the method's parameters, the prefix of every error about this step."""
        return f"{self.path}.{self.method}"


@dataclass
class Block:
    """A nested list of steps inside a step's parameters."""

    steps: list[Step]
    path: str


class Verbatim(str):
    """Text in a step's parameters that the step's placeholders are not filled in: an inline document
    (``execute``/``transfer`` ``dest``), whose own steps are filled when they run, with its own
    ``params`` — as a nested Block's are."""

    __slots__ = ()


@dataclass
class Document:
    sections: dict[str, list[Step]]
    source: str = "<document>"
    version: str | None = None
    #: Methods used anywhere that this engine does not run (reported by ``swml validate`` with exit 3).
    unsupported: list[str] = field(default_factory=list)

    def labels(self, section: str) -> dict[str, int]:
        """Index of every ``label`` step at the top level of a section."""
        found: dict[str, int] = {}
        for i, step in enumerate(self.sections.get(section, [])):
            if step.method == "label" and isinstance(step.params, dict):
                name = step.params.get("name")
                if isinstance(name, str):
                    found.setdefault(name, i)
        return found


#: Loads a nested list of steps (``then``, ``case``, ``on_return``...) found at a path.
BlockLoader = Callable[[object, str], Block]


class LoadableMethod(Protocol):
    """What the loader needs of a method (:class:`swml_engine.methods.base.Method` has it all)."""

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        """The written value (shorthands included) as the canonical parameter mapping."""
        ...

    def check(self, params: object, where: str) -> list[ParamError]:
        """Errors in the literal values (placeholders are checked when the step runs)."""
        ...

    def check_references(
        self, step: Step, doc: Document, labels: dict[str, int], methods: MethodTable
    ) -> list[ParamError]:
        """Errors in what the step names elsewhere (a label, a section, an inline document)."""
        ...


#: Method name → the method: what a document is loaded (and run) against.
MethodTable = Mapping[str, LoadableMethod]
