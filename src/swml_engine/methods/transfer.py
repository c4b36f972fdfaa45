"""``transfer``: hand the rest of the call to a section, a document at a URL, or an inline JSON document.

transfer.mdx: "Transfer the execution of the script to a different SWML section, URL ... Once the
transfer is complete, the script will continue executing SWML from the new location" — where execute.mdx
runs its destination "as a subroutine, and upon completion, return[s] to the current document". So a
transfer does not come back: the steps after it never run, and when the new location's steps end (or it
``return``s) the script ends (``script_end``), as when ``main`` ends. The corpus reads the same way:
transfer.mdx's menu plays music after a ``switch`` whose sales and marketing cases transfer — music
meant for "anything else", which a transfer that came back would play to everyone.

``dest`` is read as execute's (methods/execute.py: a section name, an http(s) URL POSTed the call
payload with ``params``, under the remote-document limits, or an inline JSON document); ``params``
become ``params`` there; ``meta`` is accepted and ignored. ``relay:`` destinations are "not supported
by this engine". The schema has no string form (``transfer: main``), and a list of one-key objects
(transfer.mdx's third example) is not an object: both are errors naming the place.

A chain of transfers does not nest: the first transfer step of a script runs the destination, and a
transfer made anywhere inside it (a ``switch``, an ``execute``'d section) unwinds to that first step,
which runs the new destination in place of the old. A menu that transfers to itself on every wrong key
(prompt.mdx) is a loop, not a recursion; a destination that transfers again with nothing to wait for
is stopped after :data:`MAX_PER_SECOND` transfers in one second of the call.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from swml_engine.document.model import BlockLoader, Document, MethodTable, Step
from swml_engine.document.params import MapOf, NotSupported, Str, describe, param
from swml_engine.errors import ParamError, SwmlError
from swml_engine.methods.base import Method
from swml_engine.methods.execute import Execute, ExecuteParams, with_inline_dest
from swml_engine.script.flow import EndScript
from swml_engine.script.step import ScriptRunner, SectionRun, StepContext

#: Transfers a chain may make within one second of the call's clock before the next fails: far beyond
#: a menu (each pass waits for the caller), and it stops a section that transfers to itself at once.
MAX_PER_SECOND = 100

#: A destination this engine cannot reach (transfer.mdx: "relay application to notify").
RELAY_PREFIX = "relay:"


@dataclass(frozen=True, kw_only=True)
class TransferParams:
    dest: str = param(Str(allow_empty=False), required=True)
    params: dict[str, Any] = param(MapOf(), default={})
    meta: dict[str, Any] = param(MapOf(), default={})  # user data: ignored, as transfer.mdx says


def _is_relay(dest: object) -> bool:
    return isinstance(dest, str) and dest.strip().lower().startswith(RELAY_PREFIX)


class Transfer(Method[TransferParams]):
    name = "transfer"
    params = TransferParams

    def prepare(self, raw: object, where: str, blocks: BlockLoader) -> object:
        if not isinstance(raw, dict):
            example = "transfer: {dest: main}" if isinstance(raw, str) else "transfer: {dest: ..., params: {...}}"
            raise ParamError(where, f"{describe(raw)} is not an object with dest (write {example})")
        return with_inline_dest(raw)

    def check(self, params: object, where: str) -> list[ParamError]:
        errors = super().check(params, where)
        dest = params.get("dest") if isinstance(params, dict) else None
        if _is_relay(dest):
            errors.append(NotSupported(f"{where}.dest", f"{describe(dest)} (a Relay application)"))
        return errors

    def check_references(
        self, step: Step, doc: Document, labels: dict[str, int], methods: MethodTable
    ) -> list[ParamError]:
        if _is_relay(step.params.get("dest") if isinstance(step.params, dict) else None):
            return []  # reported "not supported" by check()
        return Execute().check_references(step, doc, labels, methods)  # the same destinations as execute's

    async def run(self, ctx: StepContext, p: TransferParams) -> None:
        if _is_relay(p.dest):  # substituted at run time
            raise ParamError(
                f"{ctx.where}.dest", f"{describe(p.dest)} (a Relay application): not supported by this engine"
            )
        chain = _CHAIN.get()
        if chain is not None and chain.runner is ctx.runner:
            chain.admit(ctx.call.now())
        target = await Execute().target(ctx, ExecuteParams(dest=p.dest, params=p.params))  # execute's fetch, load
        ctx.result = "success"
        await transfer_to(ctx, target, p.params)


@dataclass
class TransferChain:
    """The transfers a script has made since its first (whose step runs each destination in turn), and
    how many came within the current second of the call."""

    runner: ScriptRunner
    second_began: float
    in_second: int = 0

    def admit(self, now: float) -> None:
        """Count one more transfer; raise when too many came within a second (a loop with no wait)."""
        if now - self.second_began >= 1.0:
            self.second_began, self.in_second = now, 0
        self.in_second += 1
        if self.in_second > MAX_PER_SECOND:
            raise SwmlError(
                f"more than {MAX_PER_SECOND} transfers within a second of the call: not made "
                "(a section that transfers to itself with nothing to wait for?)"
            )


class _Onward(EndScript):
    """A transfer made inside a transferred-to location: it unwinds to the chain's first transfer step,
    which runs ``target`` next. An EndScript, so every step and section it leaves ends as for a hangup."""

    def __init__(self, target: SectionRun, params: dict[str, Any]) -> None:
        super().__init__("transfer")
        self.target = target
        self.params = params


#: The chain of the script running in this task (a call's script runs in one task; its runner is named
#: in the chain too, so another script's task copying the context cannot mistake it for its own).
_CHAIN: ContextVar[TransferChain | None] = ContextVar("transfer_chain", default=None)


async def transfer_to(ctx: StepContext, target: SectionRun, params: dict[str, Any]) -> NoReturn:
    """Run ``target`` with ``params`` in place of the rest of the script; the script ends after it.

    ``transfer`` and connect's ``transfer_after_bridge`` both come here. Within a chain the target is
    handed to the chain's first step (:class:`_Onward`); that step runs each in turn at its own depth."""
    runner = ctx.runner
    chain = _CHAIN.get()
    if chain is not None and chain.runner is runner:
        raise _Onward(target, params)
    token = _CHAIN.set(TransferChain(runner, ctx.call.now()))
    depth = target.depth
    try:
        while True:
            try:
                # Its return's value (null if it ran out of steps) is return_value, as an execute's is.
                runner.set_var("return_value", await runner.execute_section(target, params))
                break
            except _Onward as onward:
                target, params = replace(onward.target, depth=depth), onward.params
    finally:
        _CHAIN.reset(token)
    raise EndScript


async def transfer_dest(ctx: StepContext, dest: str, where: str) -> None:
    """connect's ``transfer_after_bridge``: like a ``transfer`` to ``dest`` without params. When ``dest``
    cannot be reached the connect itself went well (its variables stand): an ``error`` event at
    ``where``, and the script goes on, as after a failed transfer."""
    try:
        target = await Execute().target(ctx, ExecuteParams(dest=dest))
    except ParamError as e:
        ctx.events.emit("error", where=where, message=e.message)
        return
    await transfer_to(ctx, target, {})
