"""What every SWML method module provides: a parameter class, shorthands, and how it runs."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from swml_engine.document.model import BlockLoader, Document, MethodTable, Step
from swml_engine.document.params import check_params, parse_params
from swml_engine.errors import ParamError

if TYPE_CHECKING:
    from swml_engine.script.step import StepContext

P = TypeVar("P")


class NoParams:
    """Parameters of a method that takes none (``denoise: {}``)."""


class Method(ABC, Generic[P]):
    """One SWML method. Subclasses live one per module under ``swml_engine.methods``.

    Lifecycle of a step: ``prepare`` turns the written form (shorthands included) into the canonical
    mapping at load time, ``check`` reports literal errors at load time, and when the step runs the
    runner fills the placeholders (unless ``substitute`` is false), ``parse`` builds the typed
    parameters and ``run`` does the work.
    """

    name: ClassVar[str]
    params: ClassVar[type[Any]]
    #: False for methods that fill placeholders themselves (``set`` evaluates key by key).
    substitute: ClassVar[bool] = True
    #: The variable set to ``failed`` when the step cannot run (bad value at run time).
    result_var: ClassVar[str | None] = None

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        """Turn the written value into the canonical parameter mapping; shorthands are handled here."""
        if raw is None:
            return {}
        return raw

    def check(self, params: object, where: str) -> list[ParamError]:
        if self.params is NoParams:
            if isinstance(params, dict) and not params:
                return []
            return [ParamError(where, "takes no parameters; write it as {}")]
        return check_params(self.params, params, where)

    def check_references(
        self, step: Step, doc: Document, labels: dict[str, int], methods: MethodTable
    ) -> list[ParamError]:
        """Errors in what a loaded step names elsewhere: ``labels`` are its section's, ``methods`` the
        table the document is loaded against (for a document inside the step). Most name nothing."""
        return []

    def parse(self, params: object, where: str) -> P:
        if self.params is NoParams:
            errors = self.check(params, where)
            if errors:
                raise errors[0]
            return NoParams()  # type: ignore[return-value]
        return parse_params(self.params, params, where)  # type: ignore[no-any-return]

    def failed(self, ctx: StepContext, raw: object, error: ParamError) -> None:
        """The step could not run (``raw``: its parameters as substituted, when they got that far).
        Methods whose failures have listeners beyond the script (status callbacks) tell them here."""

    async def after_failure(self, ctx: StepContext) -> None:
        """After :meth:`failed`: steps the document gave for the method's failure run here (connect's
        ``result``), as they would after a failure the method met running."""

    @abstractmethod
    async def run(self, ctx: StepContext, p: P) -> None:
        """Do the work. Control flow (goto, return, hangup) is raised as exceptions of script.flow."""
