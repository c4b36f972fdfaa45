"""How a call comes to the service's script runner, whatever transport brought it (server.py's
``Service.take_call``): a SIP INVITE (server.py's ``SipArrival``) or a browser's offer (phone.py)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from swml_engine.transports.base import Transport
from swml_engine.transports.sip.call import SipReject

if TYPE_CHECKING:
    from swml_engine.call import Call


class CallRefused(Exception):
    """The service takes no call now (stopping, over --max-calls, overloaded): the message says why."""


class Arrival(ABC):
    """A new call as its transport brings it, up to its script: what :meth:`Service.take_call` needs
    from the transport's side."""

    transport: Transport
    #: How log lines name the call before it has the engine's id (the SIP Call-ID, the browser's address).
    label: str
    #: The index row's SIP Call-ID ("" when no SIP carried the call).
    sip_call_id: str = ""

    async def prepare(self) -> None:
        """Before the call exists: take the transport's resources (raise SipReject when that fails)."""

    @abstractmethod
    def info(self) -> dict[str, Any]:
        """``from``, ``to`` and ``headers`` for the call scope (and whatever :meth:`scope` adds)."""

    def scope(self, info: dict[str, Any]) -> dict[str, Any]:
        """Call-scope variables beyond those every transport gives."""
        return {}

    def started(self, call: Call) -> None:
        """The call exists (its events go to its log): say where it came from."""

    @abstractmethod
    def refuse(self, rejection: SipReject) -> None:
        """Answer the call with our refusal (its script cannot be had or used, no ports ...)."""

    @abstractmethod
    def fail(self) -> None:
        """End the call after an error of ours."""
