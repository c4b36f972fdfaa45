"""``unset``: remove one variable (``unset: name``) or several (``unset: [a, b]``) from ``vars``."""

from __future__ import annotations

from swml_engine.document.model import BlockLoader
from swml_engine.document.params import describe
from swml_engine.errors import ParamError
from swml_engine.methods.base import Method
from swml_engine.script.step import StepContext


class Unset(Method[list[str]]):
    name = "unset"
    params = list

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        return [raw] if isinstance(raw, str) else raw

    def check(self, params: object, where: str) -> list[ParamError]:
        if not isinstance(params, list) or not params:
            return [ParamError(where, f"{describe(params)} is not a variable name or a list of names")]
        return [
            ParamError(f"{where}[{i}]", f"{describe(v)} is not a variable name")
            for i, v in enumerate(params)
            if not isinstance(v, str) or not v.strip()
        ]

    def parse(self, params: object, where: str) -> list[str]:
        errors = self.check(params, where)
        if errors:
            raise errors[0]
        assert isinstance(params, list)
        return [str(v).strip() for v in params]

    async def run(self, ctx: StepContext, p: list[str]) -> None:
        for name in p:
            if name.startswith("vars."):
                name = name[5:]
            ctx.variables.vars.pop(name, None)
            ctx.events.emit("vars.unset", name=name)
        ctx.result = "success"
