"""Waiting for one thing unless another comes first: a step's work against the end of its call, a far
leg's next state against the dial plan giving it up.

Each wait gives up cleanly: the work not finished is cancelled and its clean-up has run when the wait
returns (a transfer stops listening, a queue's getter leaves no digit half taken).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def unless(stop: asyncio.Event, work: Awaitable[T], timeout: float | None = None) -> T | None:
    """``work``'s result; None when ``stop`` is set (or ``timeout`` seconds pass) first. An exception of
    the work is raised here."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopped.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # its clean-up runs now, not after we returned
    return None if task.cancelled() else task.result()
