"""The /api/phone signalling's checks of what a page sends (service/phone.py), without sockets."""

from __future__ import annotations

import asyncio

import pytest

from swml_engine.service.phone import DIGITS_PER_SECOND, MAX_DIGITS, BadMessage, DigitBudget, parse_message


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("not json", "a message must be a JSON object"),
        ("[1, 2]", "a message must be a JSON object"),
        ('{"type": "offer"}', "offer.sdp: the SDP offer (a string) is missing"),
        ('{"type": "offer", "sdp": 5}', "offer.sdp: the SDP offer (a string) is missing"),
        ('{"type": "dtmf"}', "dtmf.digits: a string of keys is missing"),
        ('{"type": "dtmf", "digits": "1x2!"}', "dtmf.digits: '!x' is not a key (0-9 * # A-D)"),
        ('{"type": "dtmf", "digits": "' + "1" * 33 + '"}', f"dtmf.digits: at most {MAX_DIGITS} keys in one message"),
        ('{"type": "bye"}', "type: 'bye' is not a message the phone takes (offer, dtmf, hangup)"),
        ("{}", "type: None is not a message the phone takes (offer, dtmf, hangup)"),
    ],
)
def test_a_message_the_protocol_does_not_allow_is_refused_with_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(BadMessage) as e:
        parse_message(text)
    assert str(e.value) == why


def test_the_messages_of_the_protocol_are_taken() -> None:
    assert parse_message('{"type": "offer", "sdp": "v=0\\r\\n"}')["sdp"] == "v=0\r\n"
    assert parse_message('{"type": "dtmf", "digits": "0123456789*#ABCD"}')["digits"] == "0123456789*#ABCD"
    assert parse_message('{"type": "hangup"}') == {"type": "hangup"}


def test_keypad_digits_are_taken_in_bursts_and_at_a_steady_rate_not_beyond() -> None:
    now = [100.0]
    budget = DigitBudget(lambda: now[0])
    assert budget.take(MAX_DIGITS)  # a burst a page may send at once
    assert not budget.take(1)  # and nothing more at that moment
    now[0] += 0.5  # half a second later: half a second's worth
    assert budget.take(DIGITS_PER_SECOND // 2)
    assert not budget.take(1)
    now[0] += 60  # a long pause refills the burst, no more
    assert budget.take(MAX_DIGITS)
    assert not budget.take(1)


@pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")  # (its own client, in memory)
def test_a_page_that_sends_no_offer_in_time_is_told_and_closed_1008() -> None:
    """The offer's deadline, on the ASGI app in memory (Starlette's test client): no socket, no wait of 10 s."""
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.testclient import TestClient
    from starlette.websockets import WebSocket, WebSocketDisconnect

    from swml_engine.service.arrival import Arrival
    from swml_engine.service.phone import POLICY, PhoneSession

    class NoCalls:
        browser_announce = None

        def start_browser_call(self, arrival: Arrival) -> asyncio.Task[None]:
            raise AssertionError("no call may start without an offer")

    async def phone(ws: WebSocket) -> None:
        await ws.accept()
        await PhoneSession(ws, NoCalls(), offer_timeout=0.2).run()

    app = Starlette(routes=[WebSocketRoute("/api/phone", phone)])
    with TestClient(app).websocket_connect("/api/phone") as ws:
        assert ws.receive_json() == {"type": "error", "message": "no offer within 0.2 s"}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert closed.value.code == POLICY
