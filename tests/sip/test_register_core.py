"""The REGISTER client (register.py) without sockets: a registrar played by hand on a fake clock.

Each test reads the REGISTERs the user agent sends, answers them with responses built from them
(``response_to``, as a registrar would), feeds those back through :meth:`UserAgent.receive`, and moves
time itself: refresh, backoff and expiry are checked to the second, and nothing depends on the machine.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import pytest

from swml_engine.transports.sip.auth import Credentials, DigestChallenge, Verdict
from swml_engine.transports.sip.message import Request, Response, response_to
from swml_engine.transports.sip.register import (
    MAX_EXPIRES,
    Binding,
    BindingState,
    Registered,
    RegistrationExpired,
    RegistrationFailed,
    Unregistered,
    refresh_delay,
)
from swml_engine.transports.sip.transaction import TransactionTable
from swml_engine.transports.sip.useragent import Datagram, Event, Peer, Target, Transport, UserAgent

from .fake_clock import Driver

US = ("192.0.2.1", 5060)
AOR = "sip:alice@example.com"
REGISTRAR = Target(Transport.UDP, "203.0.113.5", 5060)
SECRET = Credentials("alice", "s3cret")


@dataclass
class Run(Driver):
    """A user agent with one binding on a fake clock, and what it sent and told."""

    binding: Binding | None = None
    #: When each REGISTER (not its retransmissions) went out.
    sent_at: list[float] = field(default_factory=list)

    def bind(
        self,
        *,
        expires: int = 300,
        credentials: Credentials | None = SECRET,
        registrar: Target = REGISTRAR,
    ) -> Binding:
        self.binding = Binding(
            self.ua, AOR, registrar, US, expires=expires, credentials=credentials, user_agent="swml-engine/test"
        )
        self.binding.start(self.now)
        self.collect()
        return self.binding

    def registered(self, granted: int = 300) -> Binding:
        """A binding the registrar has accepted for ``granted`` seconds."""
        binding = self.bind()
        self.ok(contact_expires=granted)
        return binding

    def unregister(self) -> None:
        assert self.binding is not None
        self.binding.unregister(self.now)
        self.collect()

    @property
    def peer(self) -> Peer:
        return Peer(REGISTRAR.transport, REGISTRAR.host, REGISTRAR.port, local=US)

    def on_sent(self, message: Request | Response, datagram: Datagram) -> None:
        assert isinstance(message, Request)  # a registration sends requests only
        if all(r.branch != message.branch for r, _ in self.sent):
            self.sent_at.append(self.now)
        super().on_sent(message, datagram)

    def registers(self) -> list[Request]:
        """Each REGISTER once (retransmissions left out), in the order sent."""
        out: list[Request] = []
        for request, _ in self.sent:
            if all(r.branch != request.branch for r in out):
                out.append(request)
        return out

    @property
    def last(self) -> Request:
        return self.registers()[-1]

    def answer(self, status: int, *headers: tuple[str, str], to: Request | None = None, reason: str = "") -> None:
        """The registrar answers ``to`` (the last REGISTER by default)."""
        request = to or self.last
        response = response_to(request, status, reason, to_tag="reg1", headers=headers)
        self.ua.receive(response.encode(), self.peer, self.now)
        self.collect()

    def ok(self, *headers: tuple[str, str], contact_expires: int | None = None) -> None:
        """200 OK listing our Contact back (with the interval granted, when given)."""
        [contact] = self.last.contacts()
        granted = contact.with_param("expires", str(contact_expires)) if contact_expires is not None else contact
        self.answer(200, ("Contact", str(granted)), *headers)

    def of(self, kind: type[Event]) -> list[Event]:
        return [e for e in self.events if isinstance(e, kind)]


def sent_times(run: Run, until: float, respond: int | None = None) -> list[float]:
    """Run the clock to ``until``, answering each new REGISTER with ``respond`` as soon as it goes (None:
    never answering); when each REGISTER went out."""
    while run.now < until:
        seen = len(run.registers())
        when = run.ua.get_timer()
        run.advance(until - run.now if when is None else min(until, when) - run.now)
        if respond is not None and len(run.registers()) > seen:
            run.answer(respond)
    return run.sent_at


# --- the REGISTER itself -----------------------------------------------------------------------------


def test_the_register_names_the_aor_the_registrar_domain_and_our_contact() -> None:
    run = Run()
    run.bind()
    [(register, datagram)] = run.sent
    assert datagram.to == REGISTRAR
    assert register.method == "REGISTER" and register.uri == "sip:example.com"
    assert str(register.to.uri) == str(register.from_.uri) == AOR
    assert register.from_.tag and register.to.tag is None
    assert register.cseq.number == 1 and register.cseq.method == "REGISTER"
    [contact] = register.contacts()
    assert str(contact.uri) == "sip:alice@192.0.2.1:5060" and contact.param("expires") == "300"
    assert register.headers.get("expires") == "300"
    assert register.headers.get("max-forwards") == "70"
    assert register.headers.get("user-agent") == "swml-engine/test"
    via = register.top_via
    assert (via.transport, via.host, via.port) == ("UDP", "192.0.2.1", 5060)
    assert via.branch.startswith("z9hG4bK") and via.param("rport") == ""
    assert "authorization" not in register.headers  # no credentials before a challenge


def test_over_tcp_the_contact_and_via_say_tcp() -> None:
    run = Run()
    run.bind(registrar=Target(Transport.TCP, "203.0.113.5", 5060))
    register = run.last
    assert str(register.contacts()[0].uri) == "sip:alice@192.0.2.1:5060;transport=tcp"
    assert register.top_via.transport == "TCP"


def test_one_call_id_and_from_tag_for_the_binding_and_cseq_rising() -> None:
    run, registrar = Run(), DigestChallenge("example.com", rng=random.Random(1))
    run.bind()
    run.answer(401, *registrar.headers(run.now))
    run.ok(contact_expires=60)
    run.advance(60)  # the refresh (with the cached credentials)
    run.ok(contact_expires=60)
    registers = run.registers()
    assert len(registers) == 3
    assert len({r.call_id for r in registers}) == 1
    assert len({r.from_.tag for r in registers}) == 1
    assert [r.cseq.number for r in registers] == [1, 2, 3]
    assert len({r.branch for r in registers}) == 3


@pytest.mark.parametrize(
    ("aor", "expires", "local", "words"),
    [
        ("alice@example.com", 300, US, "address of record"),
        ("sip:example.com", 300, US, "sip:USER@HOST"),
        ("tel:+15551234", 300, US, "sip:USER@HOST"),
        (AOR, 0, US, "expires 0"),
        (AOR, MAX_EXPIRES + 1, US, "expires 86401"),
        (AOR, 300, ("0.0.0.0", 5060), "not one the registrar can reach"),
        (AOR, 300, ("192.0.2.1", 0), "not one the registrar can reach"),
    ],
)
def test_a_binding_that_cannot_work_is_refused_by_name(
    aor: str, expires: int, local: tuple[str, int], words: str
) -> None:
    with pytest.raises(ValueError, match=words):
        Binding(UserAgent(rng=random.Random(1)), aor, REGISTRAR, local, expires=expires)


def test_a_user_name_with_a_line_break_is_refused() -> None:
    with pytest.raises(ValueError, match="control characters"):
        Binding(UserAgent(), AOR, REGISTRAR, US, credentials=Credentials("alice\r\nX: y", "pw"))


def test_the_password_is_never_shown() -> None:
    assert "s3cret" not in repr(SECRET)


# --- digest challenges ---------------------------------------------------------------------------------


def test_a_401_is_answered_with_credentials_the_registrar_accepts() -> None:
    run, registrar = Run(), DigestChallenge("example.com", rng=random.Random(1))
    binding = run.bind()
    assert registrar.verify(run.last, "alice", "s3cret", run.now) is Verdict.MISSING
    run.answer(401, *registrar.headers(run.now))
    second = run.last
    assert second.cseq.number == 2 and "authorization" in second.headers
    assert registrar.verify(second, "alice", "s3cret", run.now) is Verdict.ACCEPTED
    run.ok(contact_expires=300)
    assert binding.state is BindingState.REGISTERED
    [registered] = run.of(Registered)
    assert isinstance(registered, Registered) and registered.expires == 300 and registered.binding is binding
    assert binding.status() == {"aor": AOR, "state": "registered", "detail": "for 300 s", "expires": 300}


def test_a_refresh_reuses_the_answered_challenge_with_the_next_nonce_count() -> None:
    run, registrar = Run(), DigestChallenge("example.com", rng=random.Random(1))
    run.bind()
    run.answer(401, *registrar.headers(run.now))
    assert registrar.verify(run.last, "alice", "s3cret", run.now) is Verdict.ACCEPTED
    run.ok(contact_expires=300)
    run.advance(270)
    refresh = run.last
    assert refresh.cseq.number == 3
    assert "nc=00000002" in (refresh.headers.get("authorization") or "")
    assert registrar.verify(refresh, "alice", "s3cret", run.now) is Verdict.ACCEPTED


def test_a_refresh_challenged_again_answers_the_new_nonce() -> None:
    run, registrar = Run(), DigestChallenge("example.com", rng=random.Random(1), lifetime=100)
    binding = run.bind()
    run.answer(401, *registrar.headers(run.now))
    run.ok(contact_expires=300)
    run.advance(270)
    # the nonce is past its lifetime: the registrar says stale=true with a fresh nonce
    assert registrar.verify(run.last, "alice", "s3cret", run.now) is Verdict.STALE
    run.answer(401, *registrar.headers(run.now, stale=True))
    assert registrar.verify(run.last, "alice", "s3cret", run.now) is Verdict.ACCEPTED
    run.ok(contact_expires=300)
    assert binding.state is BindingState.REGISTERED and run.of(RegistrationFailed) == []


def test_a_registrar_that_challenges_every_register_is_answered_at_every_refresh() -> None:
    run, registrar = Run(), DigestChallenge("example.com", rng=random.Random(1))
    binding = run.bind()
    for refresh in range(8):
        run.answer(401, *registrar.headers(run.now))  # the cached credentials are not taken: a new nonce
        assert registrar.verify(run.last, "alice", "s3cret", run.now) is Verdict.ACCEPTED
        run.ok(contact_expires=60)
        assert binding.state is BindingState.REGISTERED, refresh
        run.advance(54)
    assert run.of(RegistrationFailed) == [] and len(run.of(Registered)) == 8


def test_a_stale_challenge_repeating_the_nonce_is_still_answered() -> None:
    run = Run()
    binding = run.bind()
    run.answer(401, ("WWW-Authenticate", 'Digest realm="example.com", nonce="n1", qop="auth"'))
    run.answer(401, ("WWW-Authenticate", 'Digest realm="example.com", nonce="n1", qop="auth", stale=true'))
    assert len(run.registers()) == 3 and "authorization" in run.last.headers
    run.ok()
    assert binding.state is BindingState.REGISTERED


def test_a_proxy_challenge_goes_in_proxy_authorization() -> None:
    run, proxy = Run(), DigestChallenge("proxy.example.com", rng=random.Random(2), proxy=True)
    run.bind()
    run.answer(407, *proxy.headers(run.now))
    assert "proxy-authorization" in run.last.headers and "authorization" not in run.last.headers
    assert proxy.verify(run.last, "alice", "s3cret", run.now) is Verdict.ACCEPTED


def test_a_proxy_then_a_registrar_challenge_are_both_answered() -> None:
    run = Run()
    proxy = DigestChallenge("proxy.example.com", rng=random.Random(2), proxy=True)
    registrar = DigestChallenge("example.com", rng=random.Random(3))
    binding = run.bind()
    run.answer(407, *proxy.headers(run.now))
    run.answer(401, *registrar.headers(run.now))
    assert proxy.verify(run.last, "alice", "s3cret", run.now) is Verdict.ACCEPTED
    assert registrar.verify(run.last, "alice", "s3cret", run.now) is Verdict.ACCEPTED
    run.ok()
    assert binding.state is BindingState.REGISTERED


def test_the_same_nonce_refused_again_means_wrong_credentials() -> None:
    run = Run()
    binding = run.bind(credentials=Credentials("alice", "wrong"))
    challenge = ("WWW-Authenticate", 'Digest realm="example.com", nonce="n1", qop="auth"')
    run.answer(401, challenge)
    run.answer(401, challenge)
    assert len(run.registers()) == 2  # no third try with the same refused credentials
    [failed] = run.of(RegistrationFailed)
    assert isinstance(failed, RegistrationFailed) and failed.status == 401
    assert failed.detail == "401 Unauthorized: wrong credentials for realm 'example.com'"
    assert binding.state is BindingState.FAILED and binding.status()["detail"] == failed.detail


def test_a_registrar_challenging_for_ever_is_stopped_as_wrong_credentials() -> None:
    run, registrar = Run(), DigestChallenge("example.com", rng=random.Random(1))
    run.bind(credentials=Credentials("alice", "wrong"))
    for _ in range(10):
        if run.of(RegistrationFailed):
            break
        assert registrar.verify(run.last, "alice", "s3cret", run.now) in (Verdict.MISSING, Verdict.REJECTED)
        run.answer(401, *registrar.headers(run.now))  # a fresh nonce every time
    [failed] = run.of(RegistrationFailed)
    assert isinstance(failed, RegistrationFailed) and "wrong credentials" in failed.detail
    assert len(run.registers()) == 4  # the first, and three answered challenges


def test_a_challenge_without_credentials_fails_with_its_status() -> None:
    run = Run()
    binding = run.bind(credentials=None)
    run.answer(401, ("WWW-Authenticate", 'Digest realm="example.com", nonce="n1"'))
    [failed] = run.of(RegistrationFailed)
    assert isinstance(failed, RegistrationFailed) and failed.status == 401
    assert failed.detail.startswith("401 Unauthorized") and "password" in failed.detail
    assert binding.state is BindingState.FAILED and len(run.registers()) == 1


def test_a_challenge_we_cannot_answer_fails_naming_why() -> None:
    run = Run()
    run.bind()
    run.answer(401, ("WWW-Authenticate", 'Digest realm="example.com", nonce="n1", qop="auth-int"'))
    [failed] = run.of(RegistrationFailed)
    assert isinstance(failed, RegistrationFailed) and "auth-int" in failed.detail


def test_a_wrong_password_refused_with_403_shows_as_failed_403() -> None:
    run = Run()
    binding = run.bind()
    run.answer(401, ("WWW-Authenticate", 'Digest realm="example.com", nonce="n1"'))
    run.answer(403)
    assert binding.status()["state"] == "failed" and binding.status()["detail"] == "403 Forbidden"
    assert binding.status()["expires"] == 0


# --- what the 200 grants, and refreshes ---------------------------------------------------------------


def test_the_interval_granted_is_our_contacts_expires_first() -> None:
    run = Run()
    binding = run.bind()
    run.answer(
        200,
        ("Contact", "<sip:alice@198.51.100.9:5060>;expires=3600"),  # another device's binding
        ("Contact", "<sip:alice@192.0.2.1>;expires=120"),  # ours (5060 is the default port)
        ("Expires", "999"),
    )
    assert binding.granted == 120


def test_without_our_contact_the_expires_header_counts() -> None:
    run = Run()
    binding = run.bind()
    run.answer(
        200,
        ("Contact", "<sip:alice@198.51.100.9:5060>;expires=3600"),
        ("Contact", "<sip:alice@198.51.100.10:5060>;expires=3600"),
        ("Expires", "90"),
    )
    assert binding.granted == 90


def test_a_lone_contact_rewritten_by_the_registrar_is_taken_as_ours() -> None:
    run = Run()
    binding = run.bind()
    run.answer(200, ("Contact", "<sip:alice@203.0.113.77:40000>;expires=45"), ("Expires", "999"))
    assert binding.granted == 45


def test_with_nothing_said_the_interval_asked_is_granted() -> None:
    run = Run()
    binding = run.bind(expires=600)
    run.answer(200)
    assert binding.granted == 600


def test_a_200_granting_nothing_is_a_failure() -> None:
    run = Run()
    binding = run.bind()
    run.ok(contact_expires=0)
    assert binding.state is BindingState.FAILED and run.of(Registered) == []
    [failed] = run.of(RegistrationFailed)
    assert isinstance(failed, RegistrationFailed) and "no time granted" in failed.detail


def test_refresh_delay_is_90_percent_with_a_margin_for_short_bindings() -> None:
    assert refresh_delay(300) == 270
    assert refresh_delay(3600) == 3240
    assert refresh_delay(30) == 25  # 5 s before the end, not 3
    assert refresh_delay(8) == 4  # never before half


@pytest.mark.parametrize(("granted", "due"), [(300, 270.0), (30, 25.0)])
def test_the_refresh_goes_when_due_and_not_before(granted: int, due: float) -> None:
    run = Run()
    binding = run.bind()
    run.advance(1.0)  # the 200 comes a second after the REGISTER: the refresh counts from the REGISTER
    run.ok(contact_expires=granted)
    run.advance(due - 1.0 - 0.01)
    assert len(run.registers()) == 1
    run.advance(0.02)
    assert len(run.registers()) == 2
    refresh = run.last
    assert refresh.headers.get("expires") == "300"  # asked for again as configured
    run.ok(contact_expires=granted)
    assert binding.state is BindingState.REGISTERED and len(run.of(Registered)) == 2


def test_a_late_answer_to_an_earlier_register_is_ignored() -> None:
    run = Run()
    binding = run.bind()
    first = run.last
    run.advance(40)  # no answer: Timer F (32 s), then the retry at 42 s
    assert len(run.registers()) == 1
    run.advance(10)
    assert len(run.registers()) == 2
    run.answer(200, ("Contact", "<sip:alice@192.0.2.1:5060>;expires=300"), to=first)
    assert binding.state is BindingState.REGISTERING and run.of(Registered) == []


# --- 423 Interval Too Brief ----------------------------------------------------------------------------


def test_a_423_is_retried_with_its_min_expires_and_the_interval_kept() -> None:
    run = Run()
    binding = run.bind(expires=60)
    run.answer(423, ("Min-Expires", "600"))
    retry = run.last
    assert retry.headers.get("expires") == "600" and retry.contacts()[0].param("expires") == "600"
    assert retry.cseq.number == 2
    run.ok(contact_expires=600)
    assert binding.state is BindingState.REGISTERED and binding.granted == 600
    run.advance(540)  # refresh_delay(600)
    assert run.last.headers.get("expires") == "600"


@pytest.mark.parametrize(
    ("min_expires", "words"),
    [
        (None, "without a Min-Expires"),
        ("300", "we asked 300 s"),
        ("60", "we asked 300 s"),
        (str(MAX_EXPIRES + 1), "more than the 86400 s"),
        ("soon", "without a Min-Expires"),
    ],
)
def test_a_423_that_cannot_be_met_is_a_failure(min_expires: str | None, words: str) -> None:
    run = Run()
    binding = run.bind()
    run.answer(423, *([("Min-Expires", min_expires)] if min_expires is not None else []))
    assert len(run.registers()) == 1
    [failed] = run.of(RegistrationFailed)
    assert isinstance(failed, RegistrationFailed) and failed.status == 423 and words in failed.detail
    assert binding.state is BindingState.FAILED


def test_a_registrar_raising_its_minimum_again_and_again_is_bounded() -> None:
    run = Run()
    run.bind(expires=30)
    for n in range(1, 20):
        if run.of(RegistrationFailed):
            break
        run.answer(423, ("Min-Expires", str(30 + n)))
    assert len(run.registers()) == 6  # MAX_SENDS
    [failed] = run.of(RegistrationFailed)
    assert isinstance(failed, RegistrationFailed) and "again" in failed.detail


# --- failures, backoff, expiry ---------------------------------------------------------------------


def test_refusals_are_retried_after_10_s_doubling_to_5_minutes_for_ever() -> None:
    run = Run()
    binding = run.bind()
    run.answer(503)
    times = sent_times(run, 2000, respond=503)
    assert times == [0, 10, 30, 70, 150, 310, 610, 910, 1210, 1510, 1810]
    assert binding.state is BindingState.FAILED and binding.status()["detail"] == "503 Service Unavailable"
    failures = run.of(RegistrationFailed)
    assert len(failures) == 11 and all(isinstance(f, RegistrationFailed) and f.status == 503 for f in failures)


def test_a_success_starts_the_backoff_again_from_10_s() -> None:
    run = Run()
    run.bind()
    run.answer(500)
    run.advance(10)
    run.answer(500)  # the next wait would be 40 s
    run.advance(20)
    run.ok(contact_expires=60)
    run.advance(54)  # the refresh
    run.answer(500)
    start = run.now
    run.advance(10)
    assert len(run.registers()) == 5 and run.now - start == 10


def test_no_answer_within_timer_f_is_a_failure_and_a_retry() -> None:
    run = Run()
    binding = run.bind()
    times = sent_times(run, 100)
    assert times == [0, 42, 42 + 32 + 20]  # Timer F is 32 s; then 10 s, then 20 s
    failures = run.of(RegistrationFailed)
    assert len(failures) == 2
    for failure in failures:
        assert isinstance(failure, RegistrationFailed) and failure.status == 408
        assert failure.detail == "no answer from the registrar within 32 s"
    assert binding.state is BindingState.REGISTERING  # the third REGISTER is out
    # over UDP the REGISTER was retransmitted meanwhile (Timer E), with the same branch and CSeq
    assert len(run.sent) > len(run.registers())


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    run = Run()
    run.bind()
    run.answer(503, ("Retry-After", "120 (maintenance)"))
    assert sent_times(run, 150) == [0, 120]


def test_a_binding_not_refreshed_in_time_expires() -> None:
    run = Run()
    binding = run.registered(60)
    run.advance(54)  # the refresh goes, and is never answered
    assert len(run.registers()) == 2
    run.advance(6.5)
    assert binding.state is BindingState.EXPIRED and binding.status()["expires"] == 0
    assert [type(e) for e in run.events] == [Registered, RegistrationExpired]
    assert binding.status()["detail"] == "the binding ran out without a refresh"
    run.advance(54 + 32 - run.now + 0.01)  # Timer F of the refresh
    assert binding.state is BindingState.FAILED
    run.advance(10)
    assert len(run.registers()) == 3 and binding.state is BindingState.REGISTERING
    run.ok(contact_expires=60)
    assert binding.state is BindingState.REGISTERED


def test_a_refused_refresh_keeps_counting_down_to_expiry() -> None:
    run = Run()
    binding = run.registered(60)
    run.advance(54)
    run.answer(500)
    assert binding.state is BindingState.FAILED
    run.advance(5)  # the retry is at 64 s, the binding ends at 60 s
    assert binding.state is BindingState.FAILED
    run.advance(1.01)
    assert binding.state is BindingState.EXPIRED and isinstance(run.events[-1], RegistrationExpired)


def test_a_refresh_answered_after_the_binding_ran_out_registers_it_again() -> None:
    run = Run()
    binding = run.registered(60)
    run.advance(61)
    assert binding.state is BindingState.EXPIRED
    run.ok(contact_expires=60)
    assert binding.state is BindingState.REGISTERED


# --- unregister -------------------------------------------------------------------------------------


def test_unregister_sends_expires_0_and_stops() -> None:
    run = Run()
    binding = run.registered(300)
    run.unregister()
    bye = run.last
    assert bye.headers.get("expires") == "0" and bye.contacts()[0].param("expires") == "0"
    assert bye.call_id == run.registers()[0].call_id and bye.cseq.number == 2
    assert binding.state is BindingState.UNREGISTERING
    run.ok()
    [done] = run.of(Unregistered)
    assert isinstance(done, Unregistered) and done.removed and done.detail == "removed"
    assert binding.status()["state"] == "unregistered" and binding.next_timer() is None
    run.advance(10_000)
    assert len(run.registers()) == 2  # no refresh, no retry


def test_unregister_answers_a_challenge_once() -> None:
    run, registrar = Run(), DigestChallenge("example.com", rng=random.Random(1))
    run.bind()
    run.answer(401, *registrar.headers(run.now))
    run.ok()
    run.unregister()
    run.answer(401, *registrar.headers(run.now))  # the cached nonce is not taken: a new one
    assert registrar.verify(run.last, "alice", "s3cret", run.now) is Verdict.ACCEPTED
    assert run.last.headers.get("expires") == "0"
    run.ok()
    [done] = run.of(Unregistered)
    assert isinstance(done, Unregistered) and done.removed


@pytest.mark.parametrize(("status", "detail"), [(403, "not removed: 403 Forbidden"), (None, "not removed: no answer")])
def test_unregister_refused_or_unanswered_still_stops(status: int | None, detail: str) -> None:
    run = Run()
    binding = run.registered()
    run.unregister()
    if status is None:
        run.advance(33)  # Timer F
    else:
        run.answer(status)
    [done] = run.of(Unregistered)
    assert isinstance(done, Unregistered) and not done.removed and done.detail.startswith(detail)
    assert binding.state is BindingState.UNREGISTERED


def test_unregister_with_nothing_registered_sends_nothing() -> None:
    run = Run()
    binding = run.bind()
    run.answer(403)
    binding.unregister(run.now)  # failed, waiting to retry: the registrar holds nothing of ours
    run.collect()
    assert len(run.registers()) == 1
    [done] = run.of(Unregistered)
    assert isinstance(done, Unregistered) and done.detail == "nothing was registered"
    run.advance(1000)
    assert len(run.registers()) == 1

    never = Binding(UserAgent(), AOR, REGISTRAR, US)
    never.unregister(0.0)
    assert never.state is BindingState.UNREGISTERED


def test_unregister_while_a_register_is_out_removes_what_it_may_have_made() -> None:
    run = Run()
    binding = run.bind()
    first = run.last
    run.unregister()
    assert run.last.headers.get("expires") == "0"
    run.answer(200, ("Contact", "<sip:alice@192.0.2.1:5060>;expires=300"), to=first)  # the first's answer
    assert run.of(Registered) == [] and binding.state is BindingState.UNREGISTERING
    run.ok()
    assert binding.state is BindingState.UNREGISTERED


def test_a_register_that_cannot_be_sent_is_a_failure_not_a_traceback() -> None:
    run = Run()
    run.ua.table = TransactionTable(max_client=1)
    binding = run.bind()
    binding.unregister(run.now)  # the first REGISTER's transaction still fills the table
    run.collect()
    [done] = run.of(Unregistered)
    assert isinstance(done, Unregistered) and not done.removed and "not sent" in done.detail
