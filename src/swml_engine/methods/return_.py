"""``return``: leave the current section; the value (any JSON, placeholders filled) becomes ``return_value``.

The module is ``return_`` because ``return`` is a Python keyword.
"""

from __future__ import annotations

from typing import Any

from swml_engine.document.model import BlockLoader
from swml_engine.errors import ParamError
from swml_engine.methods.base import Method
from swml_engine.script.flow import Return as ReturnSignal
from swml_engine.script.step import StepContext


class Return(Method[Any]):
    name = "return"
    params = object

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        return raw  # any value, null and {} included

    def check(self, params: object, where: str) -> list[ParamError]:
        return []

    def parse(self, params: object, where: str) -> Any:
        return params

    async def run(self, ctx: StepContext, p: Any) -> None:
        ctx.result = "success"
        raise ReturnSignal(p)
