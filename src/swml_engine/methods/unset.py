"""``unset``: remove one variable (``unset: name``) or several (``unset: [a, b]``) from ``vars``."""

from __future__ import annotations

from swml_engine.document.model import BlockLoader
from swml_engine.document.params import describe, is_templated
from swml_engine.errors import ParamError
from swml_engine.methods.base import Method
from swml_engine.script.context import not_a_variable_name, variable_name
from swml_engine.script.step import StepContext


class Unset(Method[list[str]]):
    name = "unset"
    params = list

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        return [raw] if isinstance(raw, str) else raw

    def check(self, params: object, where: str) -> list[ParamError]:
        if not isinstance(params, list) or not params:
            return [ParamError(where, f"{describe(params)} is not a variable name or a list of names")]
        errors = []
        for i, v in enumerate(params):
            why = f"{describe(v)} is not a variable name" if not isinstance(v, str) or not v.strip() else None
            if why is None and not is_templated(v):  # a placeholder is checked once filled, as the step runs
                why = not_a_variable_name(v)
            if why is not None:
                errors.append(ParamError(f"{where}[{i}]", why))
        return errors

    def parse(self, params: object, where: str) -> list[str]:
        errors = self.check(params, where)
        if errors:
            raise errors[0]
        assert isinstance(params, list)
        return [variable_name(str(v)) for v in params]

    async def run(self, ctx: StepContext, p: list[str]) -> None:
        for name in p:
            ctx.variables.vars.pop(name, None)
            ctx.events.emit("vars.unset", name=name)
        ctx.result = "success"
