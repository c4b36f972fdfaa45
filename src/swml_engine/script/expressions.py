"""JavaScript expressions in V8 (mini-racer), as the hosted engine evaluates ``${...}``.

Each expression sees the call's variables: the scope objects ``call``, ``params``, ``vars``, ``envs`` and
every variable unprefixed (vars, then envs, then call). A name that is not defined reads as
``undefined`` instead of throwing, so ``${x == null ? 'a' : 'b'}`` works before ``x`` is set.

Limits: each evaluation is stopped after ``timeout`` seconds (a runaway loop fails that step, the call
goes on) and V8's heap is capped. Compiled expressions are cached in the context by source text.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from swml_engine.errors import ExpressionError

_PRELUDE = r"""
var __swml_cache = new Map();
function __swml_eval(src, scope) {
  var f = __swml_cache.get(src);
  if (f === undefined) {
    // One expression, not statements: text that closes our parenthesis early ("1); (2") would parse
    // inside it, but cannot also parse inside brackets.
    new Function("return [" + src + "\n];");
    f = new Function("__s", "with (__s) { return (" + src + "\n); }");
    if (__swml_cache.size > 2000) { __swml_cache.clear(); }
    __swml_cache.set(src, f);
  }
  var view = new Proxy(scope, {
    has: function (t, k) { return (k in t) || !(k in globalThis); },
    get: function (t, k) { return t[k]; }
  });
  var v = f(view);
  if (typeof v === "function") { throw new TypeError("the expression is a function, not a value"); }
  if (typeof v === "number" && !isFinite(v)) { return JSON.stringify({n: String(v)}); }
  return JSON.stringify({v: v});
}
"""

#: Default per-evaluation limit. The spec asks expressions to finish in 150 ms; the engine stops a
#: runaway well inside 100 ms so one bad script cannot stall the media of other calls for long.
DEFAULT_TIMEOUT = 0.05
DEFAULT_MAX_MEMORY = 64 * 1024 * 1024


class JsEngine:
    """One V8 context, created on first use (it must be created inside the running event loop)."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT, max_memory: int = DEFAULT_MAX_MEMORY) -> None:
        self.timeout = timeout
        self.max_memory = max_memory
        self._ctx: Any = None

    def _context(self) -> Any:
        if self._ctx is None:
            # mini-racer binds a context to the event loop running where it is created and then refuses
            # per-call timeouts from that loop. Created in a thread with no loop, it runs V8 on its own
            # loop thread, and a synchronous call with ``timeout_sec`` works from ours.
            with ThreadPoolExecutor(1) as pool:
                self._ctx = pool.submit(_new_context).result()
        return self._ctx

    def evaluate(self, source: str, scope: dict[str, Any]) -> Any:
        """Evaluate one expression; returns a JSON-typed Python value (None for undefined/null)."""
        from py_mini_racer import JSEvalException, JSTimeoutException

        ctx = self._context()
        try:
            out = ctx.call(
                "__swml_eval",
                source,
                scope,
                timeout_sec=self.timeout,
                max_memory=self.max_memory,
                encoder=_Encoder,
            )
        except JSTimeoutException:
            # V8 may still be busy with what was stopped (freeing a huge value): later evaluations on
            # that context would time out too, or read its leftovers. A fresh context starts clean.
            self._discard()
            ms = round(self.timeout * 1000)
            raise ExpressionError(f"expression took longer than {ms} ms and was stopped: {_short(source)}") from None
        except JSEvalException as e:
            raise ExpressionError(f"{_first_line(str(e))} in expression {_short(source)}") from None
        except Exception as e:  # mini-racer raises its own types for memory limits and V8 failures
            raise ExpressionError(f"{type(e).__name__}: {_first_line(str(e))} in expression {_short(source)}") from None
        if not isinstance(out, str):
            return None
        decoded = json.loads(out)
        if "n" in decoded:
            return {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}[decoded["n"]]
        return decoded.get("v")

    def _discard(self) -> None:
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            threading.Thread(target=_close_quietly, args=(ctx,), name="swml-js-close", daemon=True).start()

    def close(self) -> None:
        if self._ctx is not None:
            # A stopped runaway may still post a late callback to the context's loop thread; one more
            # round trip lets it land before the loop closes (otherwise it is reported as unraisable).
            with contextlib.suppress(Exception):
                self._ctx.eval("0")
            self._ctx.close()
            self._ctx = None


def _new_context() -> Any:
    from py_mini_racer import MiniRacer

    ctx = MiniRacer()
    ctx.eval(_PRELUDE)
    return ctx


class _Encoder(json.JSONEncoder):
    def default(self, o: object) -> Any:
        return str(o)


def _close_quietly(ctx: Any) -> None:
    """Close a context that may still be busy (in a thread: it waits for V8 to let go). One round
    trip first lets a late callback of the stopped evaluation land while its loop still runs."""
    with contextlib.suppress(Exception):
        ctx.eval("0", timeout_sec=5)
    with contextlib.suppress(Exception):
        ctx.close()


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
