"""``cond``: the first entry whose ``when`` holds runs its ``then``; an entry with ``else`` runs otherwise."""

from __future__ import annotations

from dataclasses import dataclass

from swml_engine.document.model import Block, BlockLoader
from swml_engine.document.params import describe
from swml_engine.errors import ParamError
from swml_engine.methods.base import Method
from swml_engine.script.step import StepContext


@dataclass(frozen=True, kw_only=True)
class Branch:
    when: object  # JavaScript text, or None for the else branch
    steps: Block


class Cond(Method[list[Branch]]):
    name = "cond"
    params = list
    #: Each ``when`` is JavaScript: its placeholders are filled as literals when it is evaluated (a
    #: caller's value pasted in as text could change the condition), and only up to the entry that holds.
    substitute = False

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        if isinstance(raw, dict):
            raw = [raw]
        if not isinstance(raw, list) or not raw:
            raise ParamError(where, f"{describe(raw)} is not a list of {{when, then}} / {{else}} entries")
        out: list[dict[str, object]] = []
        else_at: str | None = None  # where the else is: it runs whenever it is reached
        for i, item in enumerate(raw):
            path = f"{where}[{i}]"
            if not isinstance(item, dict):
                raise ParamError(path, f"{describe(item)} is not a {{when, then}} or {{else}} entry")
            if else_at is not None:  # cond.mdx: "a single, optional condition with just an else"
                raise ParamError(
                    path, f"never runs: the else at {else_at} runs whenever it is reached (one else, at the end)"
                )
            if "else" in item:
                else_at = f"{path}.else" if "when" in item else path
            extra = set(map(str, item)) - {"when", "then", "else"}
            if extra:
                raise ParamError(f"{path}.{sorted(extra)[0]}", "unknown key; a cond entry has when + then, or else")
            if "when" in item:
                if "then" not in item:
                    raise ParamError(f"{path}.then", "is required with when")
                if isinstance(item["when"], dict | list) or item["when"] is None:
                    raise ParamError(f"{path}.when", f"{describe(item['when'])} is not a JavaScript condition")
                out.append({"when": item["when"], "then": blocks(item["then"], f"{path}.then")})
                if "else" in item:  # when/then/else in one entry: else applies when this one fails
                    out.append({"else": blocks(item["else"], f"{path}.else")})
            elif "else" in item:
                out.append({"else": blocks(item["else"], f"{path}.else")})
            else:
                raise ParamError(path, "a cond entry needs when + then, or else")
        return out

    def check(self, params: object, where: str) -> list[ParamError]:
        return []

    def parse(self, params: object, where: str) -> list[Branch]:
        assert isinstance(params, list)
        return [Branch(when=e.get("when"), steps=e["then"] if "then" in e else e["else"]) for e in params]

    async def run(self, ctx: StepContext, p: list[Branch]) -> None:
        for i, branch in enumerate(p):
            if branch.when is None or await ctx.holds(branch.when, f"{ctx.where}[{i}].when"):
                ctx.result = "else" if branch.when is None else f"when[{i}]"
                await ctx.run_block(branch.steps)
                return
        ctx.result = "no_match"
