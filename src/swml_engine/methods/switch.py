"""``switch``: run the ``case`` whose key equals the variable's value (as text), else ``default``."""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.model import Block, BlockLoader
from swml_engine.document.params import MapOf, Steps, Str, describe, param
from swml_engine.errors import ParamError
from swml_engine.methods.base import Method
from swml_engine.script.splice import as_text
from swml_engine.script.step import StepContext


@dataclass(frozen=True, kw_only=True)
class SwitchParams:
    #: A variable path (``call.type``, ``prompt_value``) or a ``${...}`` expression.
    variable: str = param(Str(), required=True)
    case: dict[str, Block] = param(MapOf(), default={})
    default: Block | None = param(Steps())


class Switch(Method[SwitchParams]):
    name = "switch"
    params = SwitchParams
    substitute = False  # the variable is looked up here; the case keys are literal

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        if not isinstance(raw, dict):
            raise ParamError(where, f"{describe(raw)} is not an object with variable, case and default")
        if "transform" in raw:
            raise ParamError(
                f"{where}.transform", "transform is a messaging-only switch feature; use ${...} in variable"
            )
        out = dict(raw)
        case = raw.get("case", {})
        if not isinstance(case, dict):
            raise ParamError(f"{where}.case", f"{describe(case)} is not an object of value: [steps]")
        for k in case:
            if isinstance(k, bool) or k is None:
                raise ParamError(f"{where}.case", _yaml_key_message(k))
        out["case"] = {str(k): blocks(v, f"{where}.case.{k}") for k, v in case.items()}
        if "default" in raw:
            out["default"] = blocks(raw["default"], f"{where}.default")
        return out

    async def run(self, ctx: StepContext, p: SwitchParams) -> None:
        name = p.variable.strip()
        if "${" in name or "%{" in name:
            value = await ctx.render(name, f"{ctx.where}.variable")
        else:
            found, value = ctx.variables.lookup(name)
            if not found:
                value = await ctx.evaluate(name, f"{ctx.where}.variable") if not _plain(name) else ""
        key = as_text(value)
        block = p.case.get(key)
        if block is not None:
            ctx.result = f"case {key}"
            await ctx.run_block(block)
        elif p.default is not None:
            ctx.result = "default"
            await ctx.run_block(p.default)
        else:
            ctx.result = "no_match"


#: How YAML 1.1 spells the keys it reads as something other than text.
_YAML_SPELLINGS = {True: "yes, on or true", False: "no, off or false", None: "~, null or nothing"}


def _yaml_key_message(key: bool | None) -> str:
    """A case key that YAML read as a boolean or null: it was compared as 'True' / 'None' and matched
    nothing (a variable holding 'yes' never reached ``yes:``)."""
    spelled = _YAML_SPELLINGS[key]
    shown = "null" if key is None else str(key).lower()
    example = {True: "'yes'", False: "'no'", None: "'' for a missing or empty value"}[key]
    return (
        f"a key YAML reads as {shown}, not text (written {spelled} unquoted), which no value matches: "
        f"quote it, e.g. {example}"
    )


def _plain(name: str) -> bool:
    from swml_engine.script.context import is_path

    return is_path(name)
