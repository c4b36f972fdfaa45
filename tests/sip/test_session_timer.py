"""Session timers (transports/sip/session_timer.py, RFC 4028): headers read and written, the UAS's
422 and choice of refresher, the UAC's offer, retry after 422 and reading of the 2xx, and the times at
which a refresh is due and a session is over (seconds, plain numbers)."""

from __future__ import annotations

import pytest

from swml_engine.transports.sip.dialog import Role
from swml_engine.transports.sip.message import BadHeader, Response, response_to
from swml_engine.transports.sip.session_timer import (
    MIN_SE,
    Agreed,
    SessionExpires,
    SessionTimer,
    SessionTimerError,
    TimerOffer,
    TooSmall,
    answer_request,
    read_min_se,
    read_session_expires,
    supports_timer,
)

from .core_messages import invite


def _response(status: int, *headers: tuple[str, str]) -> Response:
    return response_to(invite(), status, to_tag="b1", headers=headers)


def test_headers_are_read_with_their_refresher_and_compact_name() -> None:
    assert read_session_expires(invite(("Session-Expires", "1800;refresher=uac"))) == SessionExpires(1800, Role.UAC)
    assert read_session_expires(invite(("x", "600 ; Refresher=UAS;foo"))) == SessionExpires(600, Role.UAS)
    assert read_session_expires(invite()) is None and read_min_se(invite()) is None
    assert read_min_se(invite(("Min-SE", " 120;ext=1"))) == 120
    assert supports_timer(invite(("Supported", "100rel, timer"))) and supports_timer(invite(("Require", "timer")))
    assert not supports_timer(invite(("Supported", "100rel")))
    assert str(SessionExpires(90, Role.UAS)) == "90;refresher=uas" and str(SessionExpires(90)) == "90"


@pytest.mark.parametrize(
    "headers",
    [
        [("Session-Expires", "soon")],
        [("Session-Expires", "-5")],
        [("Session-Expires", "99999999999")],
        [("Session-Expires", "1800;refresher=both")],
        [("Session-Expires", "1800;refresher")],
        [("Session-Expires", "1800"), ("x", "900")],
        [("Min-SE", "many")],
    ],
)
def test_unreadable_timer_headers_are_bad_headers_named(headers: list[tuple[str, str]]) -> None:
    with pytest.raises(BadHeader) as caught:
        read_session_expires(invite(*headers))
        read_min_se(invite(*headers))
    assert caught.value.header in ("Session-Expires", "Min-SE")
    with pytest.raises(BadHeader):
        answer_request(invite(("Supported", "timer"), *headers))


# --- as the UAS -------------------------------------------------------------------------------------


def test_a_short_interval_from_a_uac_that_does_timers_gets_422_with_our_minimum() -> None:
    answer = answer_request(invite(("Supported", "timer"), ("Session-Expires", "60")))
    assert answer == TooSmall(MIN_SE) and answer.status == 422 and answer.headers() == [("Min-SE", "90")]
    assert answer_request(invite(("Supported", "timer"), ("Session-Expires", "200")), min_se=300) == TooSmall(300)
    assert isinstance(answer_request(invite(("Supported", "timer"), ("Session-Expires", "90"))), Agreed)


def test_a_short_interval_a_proxy_asked_for_is_raised_and_we_refresh() -> None:
    # no Supported: timer: the UAC would not understand a 422, so the call goes on at our minimum
    answer = answer_request(invite(("Session-Expires", "60")), min_se=120)
    assert answer == Agreed(SessionTimer(120, Role.UAS, Role.UAS, 120))
    assert isinstance(answer, Agreed) and answer.timer is not None and answer.timer.we_refresh
    assert answer.headers() == [("Session-Expires", "120;refresher=uas")]  # no Require: it does not do timers


def test_the_refresher_is_the_requests_else_our_preference_and_always_us_for_a_uac_without_timers() -> None:
    plain = invite(("Supported", "timer"), ("Session-Expires", "1800"))
    uac = answer_request(plain)
    assert isinstance(uac, Agreed) and uac.timer == SessionTimer(1800, Role.UAC, Role.UAS)
    assert uac.headers() == [("Session-Expires", "1800;refresher=uac"), ("Require", "timer")]
    assert uac.timer is not None and not uac.timer.we_refresh
    ours = answer_request(plain, prefer=Role.UAS)
    assert isinstance(ours, Agreed) and ours.headers()[0] == ("Session-Expires", "1800;refresher=uas")
    named = answer_request(invite(("Supported", "timer"), ("Session-Expires", "1800;refresher=uas")))
    assert isinstance(named, Agreed) and named.timer is not None and named.timer.refresher is Role.UAS
    without = answer_request(invite(("Session-Expires", "1800;refresher=uac")))
    assert isinstance(without, Agreed) and without.timer == SessionTimer(1800, Role.UAS, Role.UAS)
    assert without.headers() == [("Session-Expires", "1800;refresher=uas")]


def test_no_session_expires_means_no_timer_and_bad_values_are_refused() -> None:
    assert answer_request(invite(("Supported", "timer"))) == Agreed(None)
    assert Agreed(None).headers() == []
    with pytest.raises(BadHeader, match="below the request's own Min-SE"):
        answer_request(invite(("Supported", "timer"), ("Session-Expires", "100"), ("Min-SE", "200")))
    with pytest.raises(SessionTimerError, match="90 s at the least"):
        answer_request(invite(), min_se=30)
    # the request's Min-SE is remembered as the floor for the session's refreshes
    kept = answer_request(invite(("Supported", "timer"), ("Session-Expires", "600"), ("Min-SE", "400")))
    assert isinstance(kept, Agreed) and kept.timer is not None and kept.timer.min_se == 400


# --- times ------------------------------------------------------------------------------------------


def test_a_refresh_is_due_at_half_the_interval_and_the_session_expires_before_the_interval() -> None:
    ours = SessionTimer(1800, Role.UAC, Role.UAC)
    assert ours.refresh_at(10.5) == 10.5 + 900
    assert ours.expires_at(10.5) == 10.5 + 1800 - 32  # 32 s: less than a third
    short = SessionTimer(90, Role.UAS, Role.UAS)
    assert short.refresh_at(0) == 45 and short.expires_at(0) == 60  # a third (30 s): less than 32
    theirs = SessionTimer(1800, Role.UAC, Role.UAS)
    assert theirs.refresh_at(0) is None and theirs.expires_at(0) == 1768


# --- as the UAC -------------------------------------------------------------------------------------


def test_our_offer_and_its_bounds() -> None:
    assert TimerOffer().headers() == [("Supported", "timer"), ("Session-Expires", "1800"), ("Min-SE", "90")]
    assert TimerOffer(600, refresher=Role.UAC).headers()[1] == ("Session-Expires", "600;refresher=uac")
    for bad in ({"interval": 60}, {"interval": 100, "min_se": 200}, {"min_se": 30}, {"interval": 2**32}):
        with pytest.raises(SessionTimerError, match="RFC 4028"):
            TimerOffer(**bad)  # type: ignore[arg-type]


def test_after_a_422_we_retry_with_its_min_se_and_refuse_a_loop() -> None:
    retry = TimerOffer(1800).after_422(_response(422, ("Min-SE", "3600")))
    assert retry == TimerOffer(3600, 3600) and ("Min-SE", "3600") in retry.headers()
    with pytest.raises(SessionTimerError, match="would loop"):
        TimerOffer(1800).after_422(_response(422, ("Min-SE", "1000")))
    with pytest.raises(SessionTimerError, match="no Min-SE"):
        TimerOffer(1800).after_422(_response(422))
    with pytest.raises(SessionTimerError, match="not a 422"):
        TimerOffer(1800).after_422(_response(486))
    with pytest.raises(SessionTimerError, match="Min-SE"):
        TimerOffer(1800).after_422(_response(422, ("Min-SE", "x")))


def test_the_2xx_says_who_refreshes_or_that_there_is_no_timer() -> None:
    offer = TimerOffer(1800, min_se=120)
    we = offer.agreed(_response(200, ("Session-Expires", "1800;refresher=uac"), ("Require", "timer")))
    assert we == SessionTimer(1800, Role.UAC, Role.UAC, 120) and we.we_refresh
    they = offer.agreed(_response(200, ("Session-Expires", "900;refresher=uas")))
    assert they is not None and not they.we_refresh and they.interval == 900
    assert offer.agreed(_response(200)) is None
    inserted = offer.agreed(_response(200, ("Session-Expires", "1200")))
    assert inserted is not None and inserted.refresher is Role.UAC and inserted.we_refresh
    assert offer.agreed(_response(200, ("Session-Expires", "30;refresher=uac"))) == SessionTimer(
        MIN_SE, Role.UAC, Role.UAC, 120
    )
    with pytest.raises(SessionTimerError, match="a 486 agrees no timer"):
        offer.agreed(_response(486))
    with pytest.raises(SessionTimerError, match="Session-Expires"):
        offer.agreed(_response(200, ("Session-Expires", "never")))


def test_uac_and_uas_agree_through_a_422_and_a_refresh() -> None:
    """Our outbound INVITE meets a UAS whose minimum is 3600 s: 422, retry, agreement, then our refresh
    carries the agreed interval and names us as refresher."""
    offer = TimerOffer(1800)
    first = answer_request(invite(*offer.headers()), min_se=3600)
    assert isinstance(first, TooSmall)
    retry = offer.after_422(_response(first.status, *first.headers()))
    second = answer_request(invite(*retry.headers()), min_se=3600)
    assert isinstance(second, Agreed) and second.require
    timer = retry.agreed(_response(200, *second.headers()))
    assert timer == SessionTimer(3600, Role.UAC, Role.UAC, 3600) and timer.refresh_at(0) == 1800
    refresh = timer.refresh_offer()
    assert ("Session-Expires", "3600;refresher=uac") in refresh.headers() and ("Min-SE", "3600") in refresh.headers()
    # the far end answers our refresh as a UAS of that transaction: the interval holds, we still refresh
    again = answer_request(invite(*refresh.headers()), min_se=3600)
    assert isinstance(again, Agreed) and again.timer is not None and again.timer.refresher is Role.UAC
