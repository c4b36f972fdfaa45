"""The legs the engine places (outbound.py), with real sockets on loopback: the service runs in the test's
event loop, its dialer places a call to our own far party (far_party.py), and a Call runs on the far
transport as connect's dial plan makes it. What is checked is what a user would: the INVITE on the wire,
the steps the dial plan reads and the failure it is told, the tone each side hears, digits both ways."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import dtmf_tones, tone
from swml_engine.call import Call, CallOptions
from swml_engine.connections import ConnectionLimits
from swml_engine.dialing import CannotDial, DialTarget
from swml_engine.media.audio import frames_of
from swml_engine.media.inband_dtmf import InbandDtmfDetector
from swml_engine.service.server import Service
from swml_engine.transports.base import DtmfPath
from swml_engine.transports.sip.auth import DigestChallenge, Verdict
from swml_engine.transports.sip.message import Request
from swml_engine.transports.sip.outbound import SipFarTransport, parse_trunk
from swml_engine.vocabulary import DialState

from .far_party import FarParty, Heard, Step, running_service, until
from .rtp_parties import share

CALLER_ID = "+15550001111"


def run(
    body: Callable[[Service], Awaitable[None]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config: Any
) -> None:
    """``body`` with a running service, in an event loop of its own."""

    async def main() -> None:
        async with running_service(tmp_path, monkeypatch, **config) as service:
            await body(service)

    asyncio.run(main())


class FarCall(Call):
    """A far leg's call that keeps how each digit came (``path``: the bridge forwards events only)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.digits: list[tuple[str, DtmfPath]] = []

    def on_dtmf(self, digit: str, path: DtmfPath = "event") -> None:
        self.digits.append((digit, path))
        super().on_dtmf(digit, path)


class Leg:
    """A far leg as the dial plan has it: the transport, a Call on it, and what that call heard."""

    def __init__(self, service: Service, to: str, rate: int = 8000, *, listen: bool = True, **target: Any) -> None:
        target.setdefault("from_", CALLER_ID)
        self.far = service.dialer.place(DialTarget(to=to, **target), rate)
        assert isinstance(self.far, SipFarTransport)
        self.call = FarCall(self.far, call_id="far-leg", options=CallOptions())
        self.heard = Heard()
        if listen:  # (a tap keeps the call at its first rate: Call.change_rate)
            self.call.add_tap(self.heard)
        self.call.start()
        self.far.dial()
        self.states: list[DialState] = []
        self._playing: asyncio.Future[str] | None = None

    async def until_state(self, *wanted: DialState, timeout: float = 20.0) -> list[DialState]:
        """The states reported until one of ``wanted`` (all of them, in order)."""
        async with asyncio.timeout(timeout):
            while not self.states or self.states[-1] not in wanted:
                self.states.append(await self.far.next_state())
        return self.states

    def play(self, freq: float, seconds: float = 4.0) -> None:
        frames = frames_of(tone(freq, seconds, self.call.rate), self.call.rate)
        self._playing = asyncio.ensure_future(self.call.play_frames(frames))

    async def end(self) -> None:
        await self.call.hangup("hangup")
        await self.call.finish()


async def dialled(service: Service, party: FarParty, **target: Any) -> Leg:
    leg = Leg(service, party.uri, **target)
    await leg.until_state("answered", "failed")
    return leg


# --- the INVITE ----------------------------------------------------------------------------------------


def test_the_invite_offers_our_codecs_and_carries_caller_id_headers_and_session_timer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with FarParty() as party:
            leg = await dialled(
                service,
                party,
                from_name='Alice "A" Example',
                headers=(("X-Account", "42"), ("X-Note", "from connect")),
                session_timeout=1800,
            )
            assert leg.states == ["ringing", "answered"], leg.far.failure
            invite = party.invite
            assert invite is not None
            assert invite.from_.display == 'Alice "A" Example' and invite.from_.uri.user == CALLER_ID
            assert invite.uri == party.uri and str(invite.to.uri) == party.uri
            assert invite.headers.get("x-account") == "42" and invite.headers.get("x-note") == "from connect"
            assert invite.headers.get("session-expires") == "1800"
            assert "timer" in (invite.headers.get("supported") or "")
            [m] = [line for line in invite.text.splitlines() if line.startswith("m=audio")]
            assert m.split()[3:] == ["0", "8", "9", "101"]  # PCMU, PCMA, G.722, telephone-event
            assert "a=rtpmap:101 telephone-event/8000" in invite.text
            await leg.end()
            # a wideband caller's leg offers G.722 first; connect.codecs narrows and orders
            wide = Leg(service, party.uri, rate=16000)
            narrow = Leg(service, party.uri, codecs=("pcma", "G722@16000h", "OPUS"))
            await until(lambda: sum(r.method == "INVITE" and r.to.tag is None for r in party.requests) >= 3)
            offers = [r.text for r in party.requests if r.method == "INVITE" and r.to.tag is None][1:]
            lines = sorted(next(x.split()[3:] for x in o.splitlines() if x.startswith("m=audio")) for o in offers)
            assert lines == [["8", "9", "101"], ["9", "0", "8", "101"]]
            await wide.end()
            await narrow.end()

    run(body, tmp_path, monkeypatch)


def test_a_destination_that_cannot_be_dialled_is_refused_by_the_dialer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        refusals = {}
        for to, extra in [
            ("+15551234567", {}),  # no --trunk
            ("sips:bob@example.com", {}),
            ("sip:bob@example.com;transport=tls", {}),
            ("tel:+15551234567", {}),
            ("sip:bob@example.com", {"codecs": ("G729",)}),
            ("sip:bob@example.com", {"headers": (("Call-ID", "mine"),)}),
            ("sip:bob@example.com", {"from_name": "Bob\r\nVia: evil"}),
            ("sip:bob@example.com", {"from_": "1" * 129}),
        ]:
            with pytest.raises(CannotDial) as refused:
                service.dialer.place(DialTarget(to=to, **({"from_": CALLER_ID} | extra)), 8000)
            refusals[(to, tuple(extra))] = (refused.value.failure.reason, refused.value.failure.text)
        assert refusals[("+15551234567", ())] == ("unreachable", "+15551234567: phone numbers need swml serve --trunk")
        assert refusals[("sips:bob@example.com", ())][0] == "unreachable"
        assert "TLS" in refusals[("sips:bob@example.com", ())][1]
        assert refusals[("sip:bob@example.com;transport=tls", ())][0] == "unreachable"
        assert refusals[("tel:+15551234567", ())][0] == "error"
        assert "G729: none is one this engine speaks" in refusals[("sip:bob@example.com", ("codecs",))][1]
        assert "written by the SIP core" in refusals[("sip:bob@example.com", ("headers",))][1]
        assert "printable" in refusals[("sip:bob@example.com", ("from_name",))][1]
        assert refusals[("sip:bob@example.com", ("from_",))] == ("error", "from: at most 128 characters (got 129)")
        assert service.dialer.legs == set()

    run(body, tmp_path, monkeypatch)


# --- answered: media both ways -------------------------------------------------------------------------


def test_an_answered_leg_hears_the_far_party_and_the_far_party_hears_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with FarParty(freq=1000.0) as party:
            leg = await dialled(service, party)
            assert leg.states == ["ringing", "answered"] and leg.call.answered
            assert await until(party.acked.is_set)
            leg.play(440.0)
            await asyncio.sleep(1.5)
            said = leg.heard.audio(last=1.0)
            assert share(said, 1000.0) > 0.8, share(said, 1000.0)
            heard = party.heard_audio()
            assert len(heard) >= 8000 and share(heard[-8000:], 440.0) > 0.8
            # a far party that goes on hold (a re-INVITE, sendonly) stays on the call, still heard
            hold = party.request("INVITE", body=party.sdp("sendonly"))
            assert await until(lambda: bool(party.answers_to(hold)))
            [ok] = party.answers_to(hold)
            assert ok.status == 200 and "a=recvonly" in ok.text
            await asyncio.sleep(0.5)
            assert leg.far.state == "answered" and share(leg.heard.audio(last=0.4), 1000.0) > 0.8
            await leg.end()
            assert await until(party.bye.is_set)  # our side hung up: BYE
            assert leg.far.state == "ended"

    run(body, tmp_path, monkeypatch)


def test_a_g722_answer_runs_the_far_leg_at_16_khz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(service: Service) -> None:
        async with FarParty(codec="G722", freq=6000.0) as party:  # 6 kHz: only a wideband leg carries it
            leg = await dialled(service, party, listen=False)
            assert leg.states[-1] == "answered"
            assert leg.far.rate == 16000 and leg.call.rate == 16000
            leg.call.add_tap(leg.heard)
            await asyncio.sleep(1.0)
            said = leg.heard.audio(last=0.6)
            assert len(said) == 0.6 * 16000 and share(said, 6000.0, 16000) > 0.6
            await leg.end()

    run(body, tmp_path, monkeypatch)


def test_early_media_is_heard_before_the_answer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(service: Service) -> None:
        steps = (Step(183, sdp=True), Step(200, sdp=True, delay=1.5))
        async with FarParty(steps, freq=800.0) as party:
            leg = Leg(service, party.uri)
            assert await leg.until_state("early_media") == ["ringing", "early_media"]
            await asyncio.sleep(0.8)
            assert not party.answered.is_set()
            assert share(leg.heard.audio(last=0.5), 800.0) > 0.8
            assert await leg.until_state("answered") == ["ringing", "early_media", "answered"]
            await leg.end()

    run(body, tmp_path, monkeypatch)


def test_digits_cross_both_ways_as_rfc_4733_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(service: Service) -> None:
        async with FarParty() as party:
            leg = await dialled(service, party)
            await until(lambda: bool(party.heard))
            await leg.call.send_dtmf("5", 0.1)
            assert await until(lambda: party.heard_digits() == [5])
            party.send_digit("7")
            assert await until(lambda: leg.call.digits == [("7", "event")])
            await leg.end()

    run(body, tmp_path, monkeypatch)


def test_without_telephone_events_digits_cross_as_tones_in_the_audio(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        keys = np.concatenate([np.zeros(4000, np.int16), dtmf_tones("5", on=0.1), np.zeros(40000, np.int16)])
        async with FarParty(telephone_event=False, audio=keys) as party:
            leg = await dialled(service, party)
            assert await until(lambda: leg.call.digits == [("5", "inband")])  # heard in its audio: once
            await leg.call.send_dtmf("9", 0.1)  # played as the key's two tones in what it hears
            await asyncio.sleep(0.3)
            detector, heard = InbandDtmfDetector(8000), party.heard_audio()
            found = [d for i in range(0, len(heard) - 159, 160) if (d := detector.feed(heard[i : i + 160]))]
            assert found == ["9"] and party.heard_digits() == []
            await leg.end()

    run(body, tmp_path, monkeypatch)


# --- what each answer becomes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "reason"),
    [(486, "busy"), (600, "busy"), (603, "rejected"), (404, "rejected"), (480, "no_answer"), (408, "no_answer")],
)
def test_a_refusal_fails_the_leg_with_its_reason_and_code(
    status: int, reason: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with FarParty((Step(180), Step(status, delay=0.1))) as party:
            leg = await dialled(service, party)
            assert leg.states == ["ringing", "failed"]
            failure = leg.far.failure
            assert failure is not None and (failure.reason, failure.code) == (reason, status)
            assert await until(lambda: "ACK" in party.methods())  # the engine's ACK for the refusal
            await leg.end()

    run(body, tmp_path, monkeypatch)


def test_a_far_ends_reason_phrase_is_passed_on_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(service: Service) -> None:
        async with FarParty((Step(603, reason="Declined\tby " + "x" * 5000),)) as party:
            leg = await dialled(service, party)
            failure = leg.far.failure
            assert failure is not None and (failure.reason, failure.code) == ("rejected", 603)
            assert failure.text == "Declined by " + "x" * 188  # printable, 200 characters
            await leg.end()

    run(body, tmp_path, monkeypatch)


def test_a_digest_challenge_is_answered_with_the_destinations_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with (
            FarParty(credentials=("alice", "s3cret")) as party,
            FarParty(credentials=("alice", "s3cret")) as wrong,
        ):
            leg = await dialled(service, party, username="alice", password="s3cret")
            assert leg.states == ["ringing", "answered"]
            invites = [r for r in party.requests if r.method == "INVITE"]
            assert "Proxy-Authorization" in invites[-1].encode().decode() and invites[-1].cseq.number == 2
            refused = await dialled(service, wrong, username="alice", password="wrong")
            failure = refused.far.failure
            assert refused.states == ["failed"] and failure is not None
            assert (failure.reason, failure.code) == ("rejected", 407)
            await leg.end()
            await refused.end()

    run(body, tmp_path, monkeypatch)


class ChallengesBye(FarParty):
    """A far end that asks for credentials on our BYE too, with a nonce of its own (RFC 3261 §22: any
    request may be challenged; a carrier's SBC may), and takes the BYE only once answered."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.bye_challenge = DigestChallenge("far.test", proxy=True)

    def _on_request(self, request: Request, addr: tuple[str, int]) -> None:
        credentials = self.credentials
        if request.method == "BYE" and credentials is not None:
            verdict = self.bye_challenge.verify(request, *credentials, 0.0)
            if verdict is not Verdict.ACCEPTED:
                self._respond(request, 407, headers=tuple(self.bye_challenge.headers(0.0)))
                return
        super()._on_request(request, addr)


def test_our_bye_challenged_by_the_far_end_is_sent_again_with_the_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Unanswered, the far end kept the call up (its phone in a silent call, a trunk's meter running).
    async def body(service: Service) -> None:
        async with ChallengesBye(credentials=("alice", "s3cret")) as party:
            leg = await dialled(service, party, username="alice", password="s3cret")
            assert leg.states == ["ringing", "answered"]
            await leg.end()
            assert await until(party.bye.is_set)
            byes = [r for r in party.requests if r.method == "BYE"]
            assert len(byes) == 2 and "Proxy-Authorization" in byes[-1].encode().decode()
            assert byes[1].cseq.number == byes[0].cseq.number + 1

    run(body, tmp_path, monkeypatch)


def test_a_leg_cancelled_while_ringing_sends_cancel_and_fails_cancelled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with FarParty((Step(180),)) as party:
            leg = Leg(service, party.uri)
            await leg.until_state("ringing")
            leg.far.cancel()
            assert await leg.until_state("failed") == ["ringing", "failed"]
            assert "CANCEL" in party.methods() and party.cancelled.is_set()
            failure = leg.far.failure
            assert failure is not None and failure.reason == "cancelled"
            assert await until(lambda: party.methods().count("ACK") == 1)  # the 487's ACK
            await leg.end()
            assert "BYE" not in party.methods()

    run(body, tmp_path, monkeypatch)


def test_a_redirect_is_followed_to_its_contact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(service: Service) -> None:
        async with FarParty() as there:
            moved = Step(302, headers=(("Contact", f"<{there.uri}>"),))
            async with FarParty((moved,)) as here:
                leg = await dialled(service, here)
                assert leg.states == ["ringing", "answered"] and there.answered.is_set()
                assert [r.method for r in here.requests] == ["INVITE", "ACK"]
                await leg.end()

    run(body, tmp_path, monkeypatch)


def test_a_leg_over_tcp_keeps_its_connection_while_up_however_idle(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with FarParty(transport="tcp") as party:
            leg = await dialled(service, party)
            assert leg.states == ["ringing", "answered"]
            invite = party.invite
            assert invite is not None and invite.top_via.transport == "TCP"
            assert str(invite.contacts()[0].uri).endswith(";transport=tcp")
            await asyncio.sleep(2.5)  # no SIP message for twice the idle timeout: the call is up, it stays open
            assert not party.closed_by_engine and party.connections == 1
            party.hang_up()  # on the same connection
            assert await leg.until_state("ended") == ["ringing", "answered", "ended"]
            await leg.end()

    run(body, tmp_path, monkeypatch, connections=ConnectionLimits(idle_timeout=1.0))


def test_a_host_that_does_not_resolve_fails_unreachable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(service: Service) -> None:
        leg = Leg(service, "sip:bob@no-such-host.invalid")
        assert await leg.until_state("failed") == ["failed"]
        failure = leg.far.failure
        assert failure is not None and failure.reason == "unreachable" and "no-such-host.invalid" in failure.text
        await leg.end()

    run(body, tmp_path, monkeypatch)


def test_a_far_end_is_heard_from_once_it_answers_anything_even_100_trying(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # (the dial plan tells a leg given up at its timeout unreachable from no_answer by it)
    async def body(service: Service) -> None:
        async with FarParty(()) as silent, FarParty((Step(100),)) as trying:
            quiet, there = Leg(service, silent.uri), Leg(service, trying.uri)
            assert await until(lambda: silent.invite is not None and there.far.heard_from)
            await asyncio.sleep(0.3)  # (the silent one's INVITE is retransmitted meanwhile: still not a word)
            assert not quiet.far.heard_from
            for leg in (quiet, there):
                leg.far.cancel()
                await leg.end()

    run(body, tmp_path, monkeypatch)


# --- the end of an answered leg ----------------------------------------------------------------------------


def test_the_far_partys_bye_ends_the_leg_and_its_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(service: Service) -> None:
        async with FarParty() as party:
            leg = await dialled(service, party)
            await until(party.acked.is_set)
            party.hang_up()
            assert await leg.until_state("ended") == ["ringing", "answered", "ended"]
            assert leg.call.is_ended and leg.call.end_reason == "remote_hangup"
            await leg.end()
            assert party.methods().count("BYE") == 0  # nothing of ours: the BYE was theirs

    run(body, tmp_path, monkeypatch)


def test_a_far_end_gone_silent_without_bye_is_hung_up_after_the_rtp_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def body(service: Service) -> None:
        async with FarParty() as party:
            leg = await dialled(service, party)
            await asyncio.sleep(1.5)  # the far end sends: no timeout while it does
            assert leg.far.state == "answered"
            party.stop_rtp()  # killed: no packet, no BYE
            stopped = asyncio.get_running_loop().time()
            await leg.until_state("ended", timeout=20)
            took = asyncio.get_running_loop().time() - stopped
            assert 1.0 <= took < 4.0, took
            assert leg.call.end_reason == "remote_hangup" and await until(party.bye.is_set)
            bye = next(r for r in party.requests if r.method == "BYE")
            assert "RTP timeout" in (bye.headers.get("reason") or "")
            await leg.end()

    run(body, tmp_path, monkeypatch, rtp_timeout=1.0)


def test_a_stopping_service_hangs_up_its_far_legs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        async with FarParty() as party:
            async with running_service(tmp_path, monkeypatch) as service:
                leg = await dialled(service, party)
                assert leg.states[-1] == "answered"
            # the stop sent the BYE and waited for its answer
            assert party.bye.is_set() and [r.method for r in party.requests].count("BYE") >= 1

    asyncio.run(main())


# --- phone numbers through the trunk, and the call limit -------------------------------------------------------------


def test_a_phone_number_goes_to_the_trunk_with_the_trunks_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def main() -> None:
        party = await FarParty(credentials=("acct", "trunk-pw")).start()
        trunk = parse_trunk(f"sip:127.0.0.1:{party.port}", "acct", "trunk-pw")
        async with party, running_service(tmp_path, monkeypatch, trunk=trunk) as service:
            leg = Leg(
                service, "+15557654321", from_name="ignored", headers=(("X-No", "1"),), username="x", password="y"
            )
            await leg.until_state("answered", "failed")
            assert leg.states[-1] == "answered", leg.far.failure
            invite = [r for r in party.requests if r.method == "INVITE"][-1]
            assert invite.uri == f"sip:+15557654321@127.0.0.1:{party.port}"
            assert invite.from_.uri.user == CALLER_ID and invite.from_.uri.host == "127.0.0.1"
            assert invite.from_.display is None and "x-no" not in invite.headers  # not for phone numbers
            await leg.end()

    asyncio.run(main())


def test_far_legs_count_towards_max_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def body(service: Service) -> None:
        async with FarParty() as party:
            first = Leg(service, party.uri)
            with pytest.raises(CannotDial) as refused:
                service.dialer.place(DialTarget(to=party.uri, from_=CALLER_ID), 8000)
            assert refused.value.failure.reason == "error" and "--max-calls" in refused.value.failure.text
            assert service.stats()["far_legs"] == 1
            await first.until_state("answered")
            await first.end()
            assert service.dialer.legs == set()

    run(body, tmp_path, monkeypatch, max_calls=1)


# --- --trunk --------------------------------------------------------------------------------------------


def test_trunk_uris_are_read_and_its_credentials_come_in_pairs() -> None:
    plain = parse_trunk("sip:provider.example.com")
    assert (plain.host, plain.port, plain.transport.value, plain.credentials) == (
        "provider.example.com",
        5060,
        "udp",
        None,
    )
    tcp = parse_trunk("sip:[2001:db8::5]:5070;transport=TCP", "acct", "pw")
    assert (tcp.host, tcp.port, tcp.transport.value) == ("2001:db8::5", 5070, "tcp")
    assert tcp.credentials is not None and tcp.credentials.username == "acct"
    for text, says in [
        ("provider.example.com", "expected sip:HOST"),
        ("sips:provider.example.com", "no sips:"),
        ("sip:acct@provider.example.com", "no user"),
        ("sip:provider.example.com;transport=tls", "transport=tls is not served"),
    ]:
        with pytest.raises(ValueError, match=says):
            parse_trunk(text)
    with pytest.raises(ValueError, match="both SWML_TRUNK_USERNAME and SWML_TRUNK_PASSWORD"):
        parse_trunk("sip:provider.example.com", "acct", None)


def test_swml_serve_refuses_a_trunk_it_cannot_use_at_start(tmp_path: Path) -> None:
    script = tmp_path / "s.yaml"
    script.write_text("version: 1.0.0\nsections:\n  main:\n    - hangup\n")
    base = [sys.executable, "-m", "swml_engine", "serve", "--sip", "127.0.0.1:0", "--script", str(script)]
    base += ["--data", str(tmp_path / "data")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWML_TRUNK_")}
    bad = subprocess.run(
        [*base, "--trunk", "sips:provider.example.com"], capture_output=True, text=True, env=env, timeout=60
    )
    assert bad.returncode == 2 and "--trunk 'sips:provider.example.com'" in bad.stderr
    half = subprocess.run(
        [*base, "--trunk", "sip:provider.example.com"],
        capture_output=True,
        text=True,
        env={**env, "SWML_TRUNK_USERNAME": "acct"},
        timeout=60,
    )
    assert half.returncode == 2 and "SWML_TRUNK_PASSWORD" in half.stderr
    assert "acct" not in half.stderr
    timeout = subprocess.run([*base, "--rtp-timeout", "-1"], capture_output=True, text=True, timeout=60)
    assert timeout.returncode == 2 and "--rtp-timeout" in timeout.stderr
