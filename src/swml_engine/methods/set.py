"""``set``: set script variables (``vars``). Values are filled key by key, so a later key may use an earlier one."""

from __future__ import annotations

from typing import Any

from swml_engine.document.params import describe
from swml_engine.errors import ParamError, SwmlError
from swml_engine.methods.base import Method
from swml_engine.script.context import not_a_variable_name, variable_name
from swml_engine.script.step import StepContext


class Set(Method[dict[str, Any]]):
    name = "set"
    params = dict
    substitute = False

    def check(self, params: object, where: str) -> list[ParamError]:
        if not isinstance(params, dict):
            return [ParamError(where, f"{describe(params)} is not an object of name: value")]
        errors = []
        for k in params:
            why = "a variable name must not be empty" if not str(k).strip() else not_a_variable_name(str(k))
            if why is not None:
                errors.append(ParamError(f"{where}.{k}", why))
        return errors

    def parse(self, params: object, where: str) -> dict[str, Any]:
        errors = self.check(params, where)
        if errors:
            raise errors[0]
        assert isinstance(params, dict)
        return {variable_name(str(k)): v for k, v in params.items()}

    async def run(self, ctx: StepContext, p: dict[str, Any]) -> None:
        # A key that fails (a bad expression) does not keep the others from being set; the step fails
        # with the first error and every other one is reported too.
        errors: list[SwmlError] = []
        for name, raw in p.items():
            try:
                ctx.set_var(name, await ctx.render(raw, f"{ctx.where}.{name}"))
            except SwmlError as e:
                errors.append(e)
        for later in errors[1:]:
            ctx.events.emit("error", where=ctx.where, message=str(later))
        if errors:
            raise errors[0]
        ctx.result = "success"
