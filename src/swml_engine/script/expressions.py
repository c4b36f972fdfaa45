"""JavaScript expressions in V8 (mini-racer), as the hosted engine evaluates ``${...}``.

Each expression sees the call's variables: the scope objects ``call``, ``params``, ``vars``, ``envs`` and
every variable unprefixed (vars, then envs, then call). A name that is not defined reads as
``undefined`` instead of throwing, so ``${x == null ? 'a' : 'b'}`` works before ``x`` is set.

What an expression may take (a document may come from a server the operator does not control):

* Memory: V8's heap is capped (64 MiB). What lives outside that heap is taken away before any
  expression runs: ``ArrayBuffer`` and every typed array, ``DataView``, ``SharedArrayBuffer``,
  ``Atomics``, ``WebAssembly`` (V8 also runs ``--jitless``, which leaves WebAssembly out), and
  ``FinalizationRegistry``/``setTimeout`` (their callbacks run later, outside every limit). Each is a
  global that cannot be redefined and throws "... is not available in expressions".
* Time: one evaluation may run 150 ms (of the process's time on the cores: a machine too busy to run
  it meanwhile gives it up to a second of wall clock), then it is stopped and fails its step; work it leaves behind
  (a promise reaction, an ``async`` function after its first ``await``) must end within another 150 ms,
  or it is stopped the same way. The expressions of one step may take 250 ms in all and those of a call
  10 s; beyond, an expression fails at once without running, and the call goes on.
* The event loop: V8 runs on a thread of its own ("swml-js", one per process, driving every call's
  context), never on the loop that carries the calls' media. One evaluation at a time per process, so
  a hostile script costs at most one core and one evaluation's memory, whatever the number of calls.

Compiled expressions are cached in the call's context by source text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import enum
import json
import math
import os
import re
import threading
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from swml_engine.errors import ExpressionError
from swml_engine.media.clock import VirtualTimeLoop
from swml_engine.nesting import MAX_DEPTH, too_deep

T = TypeVar("T")

#: Globals whose memory V8's heap cap does not count, or whose callbacks run after the evaluation
#: (typed arrays are matched by name, so a new one in a later V8 is covered too).
_UNAVAILABLE = ("ArrayBuffer", "SharedArrayBuffer", "Atomics", "DataView", "WebAssembly", "FinalizationRegistry")

_PRELUDE = r"""
(function (g) {
  var unavailable = __UNAVAILABLE__;
  var typed = /^(Big)?(Ui|I)nt\d+(Clamped)?Array$|^Float\d+Array$/;
  Object.getOwnPropertyNames(g).forEach(function (n) { if (typed.test(n)) { unavailable.push(n); } });
  unavailable.forEach(function (n) {
    Object.defineProperty(g, n, {
      get: function () { throw new TypeError(n + " is not available in expressions"); },
      configurable: false, enumerable: false
    });
  });
  // mini-racer's timers (plain var globals: writable, not deletable) would run code after the evaluation.
  ["setTimeout", "clearTimeout"].forEach(function (n) {
    g[n] = function () { throw new TypeError(n + " is not available in expressions"); };
  });
  // What evaluate() uses is kept here, out of reach of expressions that replace globals or prototypes.
  var Fn = Function, Px = Proxy, Pr = Promise, Str = String, bare = Object.create;
  var stringify = JSON.stringify, finite = isFinite, SynErr = SyntaxError;
  function holds(text, c) {  // (indexing only: String.prototype may have been replaced)
    for (var i = 0; i < text.length; i++) { if (text[i] === c) { return true; } }
    return false;
  }
  var cache = bare(null), cached = 0;
  function evaluate(src, scope) {
    var f = cache[src];
    if (f === undefined) {
      // One expression, not statements: text that closes our parenthesis early ("1); (2") would parse
      // inside it, but cannot also parse inside brackets.
      try {
        new Fn("return [" + src + "\n];");
      } catch (e) {
        // V8 names the first token it could not take; when that is our bracket (the text has none),
        // the text ended before its expression did ("x ===", "(1"), and our bracket means nothing to
        // the user.
        if (e && e.message === "Unexpected token ']'" && !holds(src, "]")) {
          throw new SynErr("the expression ends before it is complete (a value or a closing parenthesis missing?)");
        }
        throw e;
      }
      f = new Fn("__s", "with (__s) { return (" + src + "\n); }");
      if (cached > 2000) { cache = bare(null); cached = 0; }
      cache[src] = f;
      cached++;
    }
    var view = new Px(scope, {
      has: function (t, k) { return (k in t) || !(k in g); },
      get: function (t, k) { return t[k]; }
    });
    var v = f.call(scope, view);  // (this: the variables, not the global object and its internals)
    if (typeof v === "function") { throw new TypeError("the expression is a function, not a value"); }
    if (v instanceof Pr) {
      throw new TypeError("the expression's value is a promise; expressions run synchronously" +
        " (no async, await or import())");
    }
    // A box with no prototype: an Object.prototype.toJSON set by an expression cannot reshape it.
    var box = bare(null);
    if (typeof v === "number" && !finite(v)) { box.n = Str(v); } else { box.v = v; }
    return stringify(box);
  }
  Object.defineProperty(g, "__swml_eval", {value: evaluate, writable: false, configurable: false});
})(globalThis);
""".replace("__UNAVAILABLE__", json.dumps(list(_UNAVAILABLE)))

#: V8 flags: mini-racer's own, and no JIT (no executable memory to spray; no WebAssembly either).
_V8_FLAGS = ("--jitless",)

#: How long a stopped evaluation waits for its context to close (V8 may be inside a builtin that cannot
#: be interrupted, still allocating); past this the close goes on alone in its thread.
CLOSE_WAIT = 2.0


#: Past an evaluation's time, how long an answer already on its way to the V8 thread's loop may take.
_GRACE = 0.005
#: How long (wall clock) an evaluation kept from running by a busy machine may wait for its time.
STARVED_WAIT = 1.0


@dataclass(frozen=True)
class ExpressionLimits:
    #: Seconds one evaluation may run: the 150 ms the spec gives an expression (expressions.mdx), no less —
    #: V8 runs here without its JIT, so a heavy but valid expression takes longer than on the hosted
    #: engine. (It runs off the event loop: a runaway holds the expression thread, never the media.)
    timeout: float = 0.15
    #: Seconds of evaluation the expressions of one step may take together (a step normally needs
    #: well under a millisecond: 40 expressions of 45 ms in one ``set`` stop here).
    per_step: float = 0.25
    #: Seconds of evaluation one call may take in all (about 30 000 ordinary expressions).
    per_call: float = 10.0
    #: V8 heap of the call's context, in bytes.
    max_memory: int = 64 * 1024 * 1024


class _End(enum.Enum):
    """How an evaluation ended on the V8 thread."""

    VALUE = "value"
    ERROR = "error"  # a JavaScript exception: the context stays usable
    STOPPED = "stopped"  # over its time (or its leftovers were): the context is discarded
    BROKEN = "broken"  # memory limit or a V8 failure: the context is discarded


@dataclass(frozen=True)
class _Outcome:
    end: _End
    seconds: float
    value: Any = None
    message: str = ""


_LEFT_RUNNING = "work the expression left running (a promise reaction, an async function)"


class JsEngine:
    """A call's JavaScript: one V8 context (made on first use), its time budget, its evaluations."""

    def __init__(self, limits: ExpressionLimits | None = None) -> None:
        self.limits = limits or ExpressionLimits()
        #: The V8 context; created, used and closed on the host thread only.
        self._v8: _Context | None = None
        self._step_spent = 0.0
        self._call_spent = 0.0

    def begin_step(self) -> None:
        """A new step starts: its expressions get the per-step budget afresh."""
        self._step_spent = 0.0

    async def evaluate(self, source: str, scope: dict[str, Any]) -> Any:
        """Evaluate one expression on the V8 thread; the event loop runs other calls meanwhile.
        Returns a JSON-typed Python value (None for undefined/null)."""
        code = self._admit(source, scope)
        outcome = await _result_of(_host().submit(self._run(code)))
        return self._settle(outcome, source)

    def close(self) -> None:
        """The call is over: its context is closed on the V8 thread (the caller never waits)."""
        if self._v8 is not None:
            _host().submit(self._drop_context(wait=False))

    # --- the budget -----------------------------------------------------------------------------------

    def _admit(self, source: str, scope: dict[str, Any]) -> str:
        """The code to run for ``source``, unless this step's or this call's budget is used up."""
        limits = self.limits
        if self._call_spent >= limits.per_call:
            raise ExpressionError(
                f"not evaluated: this call's expressions used the {limits.per_call:g} s of expression time"
                f" a call may take: {_short(source)}"
            )
        if self._step_spent >= limits.per_step:
            raise ExpressionError(
                f"not evaluated: this step's expressions used the {round(limits.per_step * 1000)} ms of"
                f" expression time a step may take: {_short(source)}"
            )
        args = json.dumps(scope, separators=(",", ":"), cls=_Encoder)
        return f"__swml_eval({json.dumps(source)},{args})"

    def _settle(self, outcome: _Outcome, source: str) -> Any:
        self._step_spent += outcome.seconds
        self._call_spent += outcome.seconds
        if outcome.end is _End.STOPPED:
            ms = round(self.limits.timeout * 1000)
            what = outcome.message or "expression"
            raise ExpressionError(f"{what} took longer than {ms} ms and was stopped: {_short(source)}")
        if outcome.end is not _End.VALUE:
            raise ExpressionError(f"{outcome.message} in expression {_short(source)}")
        if too_deep(outcome.value) is not None:  # (a document may not hold it either: nesting.py)
            raise ExpressionError(
                f"the value has lists and objects nested more than {MAX_DEPTH} levels deep: {_short(source)}"
            )
        return outcome.value

    # --- on the V8 thread -----------------------------------------------------------------------------

    async def _run(self, code: str) -> _Outcome:
        async with _host().turn:
            return await self._run_in_turn(code)

    async def _run_in_turn(self, code: str) -> _Outcome:
        if self._v8 is None:
            self._v8 = _Context.open(self.limits.max_memory)
        racer = self._v8.racer
        started = time.perf_counter()
        try:
            outcome = await self._evaluate_on(racer, code)
        except asyncio.CancelledError:  # the call is over: what V8 was doing is stopped with its context
            await self._drop_context(wait=False)
            raise
        if outcome.end in (_End.STOPPED, _End.BROKEN) or racer.was_hard_memory_limit_reached():
            # V8 may still be busy with what was stopped (a builtin that cannot be interrupted, still
            # allocating): the next evaluation gets a fresh context. In its turn, the evaluation waits
            # for the close, so one stopped evaluation's memory is gone before the next may take its
            # own, and the time counts in its budget.
            await self._drop_context(wait=True)
        return _Outcome(outcome.end, time.perf_counter() - started, outcome.value, outcome.message)

    async def _evaluate_on(self, racer: Any, code: str) -> _Outcome:
        from py_mini_racer import JSEvalException, JSOOMException

        timeout = self.limits.timeout
        try:
            outcome = _Outcome(_End.VALUE, 0.0, value=_decode(await _within(racer.eval_cancelable(code), timeout)))
        except TimeoutError:
            return _Outcome(_End.STOPPED, 0.0)
        except JSOOMException:
            return _Outcome(_End.BROKEN, 0.0, message="out of memory (V8 heap limit)")
        except JSEvalException as e:
            outcome = _Outcome(_End.ERROR, 0.0, message=_first_line(str(e)))
        except Exception as e:  # mini-racer raises its own types for V8 failures
            return _Outcome(_End.BROKEN, 0.0, message=f"{type(e).__name__}: {_first_line(str(e))}")
        # Work the expression queued (promise reactions) runs after its value came back, before V8
        # takes the next task: a trivial task returning is the sign that it has ended.
        try:
            await _within(racer.eval_cancelable("0"), timeout)
        except TimeoutError:
            return _Outcome(_End.STOPPED, 0.0, message=_LEFT_RUNNING)
        except Exception as e:
            return _Outcome(_End.BROKEN, 0.0, message=f"{type(e).__name__}: {_first_line(str(e))}")
        return outcome

    async def _drop_context(self, *, wait: bool) -> None:
        context, self._v8 = self._v8, None
        if context is not None:
            closed = _host().close_in_thread(context)
            if wait:
                await asyncio.wait({closed}, timeout=CLOSE_WAIT)


def starved(cpu: float, wall: float, timeout: float) -> bool:
    """Whether an evaluation not done after ``wall`` seconds, while this process ran ``cpu`` seconds on
    its cores, was kept from running rather than running long: then it may wait on, up to STARVED_WAIT.

    The process's time counts everything it ran meanwhile (the calls' media, other threads), so V8 had
    at most that much: an evaluation is stopped once the process has run ``timeout`` in all — a runaway
    on an idle machine at ``timeout``, as before — but a machine so busy that it gave this process a
    fraction of that time (another job beside it) no longer stops a trivial expression."""
    return cpu < timeout and wall < STARVED_WAIT


async def _within(work: Coroutine[Any, Any, T], timeout: float) -> T:
    """``work``'s result, or TimeoutError (and ``work`` cancelled: V8 stops it) after ``timeout`` of
    this process's time (see :func:`starved`).

    Unlike ``asyncio.wait_for``, a result that came as the time ran out still counts: on a loaded
    machine this thread may wake late, with V8's answer and the timer due together, and a trivial
    expression was then reported stopped.
    """
    task = asyncio.ensure_future(work)
    cpu0, wall0 = time.process_time(), time.monotonic()
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
        while not done and starved(time.process_time() - cpu0, time.monotonic() - wall0, timeout):
            done, _ = await asyncio.wait({task}, timeout=_GRACE)
        if not done:
            done, _ = await asyncio.wait({task}, timeout=_GRACE)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        raise TimeoutError
    return task.result()


async def _result_of(future: concurrent.futures.Future[_Outcome]) -> _Outcome:
    """Wait for an evaluation on the V8 thread; cancelling the wait cancels the evaluation.

    On the virtual clock, time stands still meanwhile (V8's work is real work), as ``clock.hold`` does;
    the hold ends in the callback that hands the result over, and a result that arrives after the loop
    closed is dropped quietly (nobody waits for it any more).
    """
    loop = asyncio.get_running_loop()
    virtual = loop if isinstance(loop, VirtualTimeLoop) else None
    waiter: asyncio.Future[_Outcome] = loop.create_future()
    held = virtual is not None
    if virtual is not None:
        virtual.holds += 1

    def release() -> None:
        nonlocal held
        if held and virtual is not None:
            virtual.holds -= 1
            held = False

    def arrive(done: concurrent.futures.Future[_Outcome]) -> None:  # on the loop
        release()
        if waiter.done():
            return
        if done.cancelled():
            waiter.cancel()
        elif (error := done.exception()) is not None:
            waiter.set_exception(error)
        else:
            waiter.set_result(done.result())

    def handed_over(done: concurrent.futures.Future[_Outcome]) -> None:  # on the V8 thread
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits any more
            loop.call_soon_threadsafe(arrive, done)

    future.add_done_callback(handed_over)
    try:
        return await waiter
    except asyncio.CancelledError:
        future.cancel()
        raise
    finally:
        release()


class _Context:
    """One call's V8 context, bound to the host's loop (made and closed by the host thread)."""

    def __init__(self, maker: Any, racer: Any) -> None:
        self._maker = maker
        self.racer = racer

    @classmethod
    def open(cls, max_memory: int) -> _Context:
        from py_mini_racer import mini_racer

        maker = mini_racer(event_loop=_host().loop)
        racer = maker.__enter__()
        racer.eval(_PRELUDE)  # trusted code, before any expression runs
        racer.set_hard_memory_limit(max_memory)
        return cls(maker, racer)

    def close(self) -> None:
        """Blocks until V8 lets go of the context (it stops what still runs there)."""
        self._maker.__exit__(None, None, None)


class _Host:
    """The thread that drives every call's V8 context in this process, and its one-at-a-time turn."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.loop = asyncio.new_event_loop()
        self.turn = asyncio.Lock()
        threading.Thread(target=self.loop.run_forever, name="swml-js", daemon=True).start()

    def submit(self, coro: Coroutine[Any, Any, _Outcome | None]) -> concurrent.futures.Future[Any]:
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def close_in_thread(self, context: _Context) -> asyncio.Future[None]:
        """Close a context in a daemon thread of its own (a close can block while V8 finishes a builtin;
        a daemon never holds up the process's exit). The future is done when it is closed."""
        done: asyncio.Future[None] = self.loop.create_future()

        def closed() -> None:
            if not done.done():
                done.set_result(None)

        def close() -> None:
            with contextlib.suppress(Exception):  # nothing left to tell: the context is gone either way
                context.close()
            self.loop.call_soon_threadsafe(closed)

        threading.Thread(target=close, name="swml-js-close", daemon=True).start()
        return done


_host_lock = threading.Lock()
_the_host: _Host | None = None


def _host() -> _Host:
    """This process's host (a forked worker starts its own: threads do not survive a fork)."""
    global _the_host  # one per process by design
    with _host_lock:
        if _the_host is None or _the_host.pid != os.getpid():
            _start_v8()
            _the_host = _Host()
        return _the_host


def _start_v8() -> None:
    from py_mini_racer import DEFAULT_V8_FLAGS, LibAlreadyInitializedError, init_mini_racer

    # If V8 was started before us (with its default flags), the globals are still taken away.
    with contextlib.suppress(LibAlreadyInitializedError):
        init_mini_racer(flags=(*DEFAULT_V8_FLAGS, *_V8_FLAGS))


def _decode(raw: object) -> Any:
    """The value out of evaluate()'s box: ``{"v": value}``, or ``{"n": "NaN"}`` for numbers JSON lacks."""
    decoded = json.loads(raw) if isinstance(raw, str) else None
    if not isinstance(decoded, dict):
        return None
    if "n" in decoded:
        return _NOT_JSON.get(decoded["n"])
    return decoded.get("v")


_NOT_JSON = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


class _Encoder(json.JSONEncoder):
    def default(self, o: object) -> Any:
        return str(o)


def _first_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    # mini-racer puts the source location first and the JavaScript error further down; keep the error.
    for line in lines:
        if "Error" in line:
            # (its "undefined:3:" prefix is a place in our wrapper function, not in the user's text)
            return re.sub(r"^(undefined|<anonymous>):\d+:\s*", "", line)
    return lines[0] if lines else "JavaScript error"


def _short(source: str) -> str:
    s = source.strip()
    return repr(s if len(s) <= 80 else s[:77] + "...")
