"""SIP media pieces on their own: codecs, RTP parsing, RFC 4733 digits, the jitter buffer, SDP answers."""

from __future__ import annotations

import random
import re
import warnings

import numpy as np
import pytest

from conftest import spectrum_peaks, tone
from swml_engine.transports.sip.codecs import G722, Pcma, Pcmu
from swml_engine.transports.sip.dtmf import DtmfReceiver, encode_event
from swml_engine.transports.sip.jitterbuffer import JitterBuffer
from swml_engine.transports.sip.rtp import RtpPacket, parse_rtp
from swml_engine.transports.sip.sdp import (
    NotAcceptable,
    SessionVersion,
    build_answer,
    build_offer,
    negotiate,
    parse_offer,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import audioop  # the stdlib's C G.711 (to 3.12): an independent reference
    except ImportError:
        audioop = None  # type: ignore[assignment]


# --- codecs ---------------------------------------------------------------------------------------


@pytest.mark.skipif(audioop is None, reason="audioop (reference G.711) left the stdlib in 3.13")
@pytest.mark.parametrize(("codec", "ref"), [(Pcmu, "ulaw2lin"), (Pcma, "alaw2lin")])
def test_g711_decodes_every_code_as_the_reference(codec: type, ref: str) -> None:
    codes = bytes(range(256))
    expected = np.frombuffer(getattr(audioop, ref)(codes, 2), dtype=np.int16)
    assert np.array_equal(codec().decode(codes), expected)


@pytest.mark.parametrize("codec", [Pcmu, Pcma])
def test_g711_round_trip_keeps_the_tone_and_never_wraps(codec: type) -> None:
    c = codec()
    x = tone(440, 1.0, 8000, level=0.9)
    y = c.decode(c.encode(x))
    assert spectrum_peaks(y, 8000, 1)[0] == pytest.approx(440, abs=2)
    snr = 10 * np.log10(np.sum(x.astype(float) ** 2) / np.sum((x.astype(float) - y) ** 2))
    assert snr > 30  # G.711 gives ~38 dB on a loud tone
    extremes = np.array([-32768, 32767], dtype=np.int16)
    back = c.decode(c.encode(extremes))
    assert back[0] < -30000 and back[1] > 30000


def test_g722_is_wideband_16k() -> None:
    c = G722()
    x = tone(6000, 1.0, 16000, level=0.5)  # above what 8 kHz G.711 can carry
    payload = b"".join(c.encode(x[i : i + 320]) for i in range(0, len(x), 320))
    assert len(payload) == 8000  # 64 kbit/s
    y = np.concatenate([c.decode(payload[i : i + 160]) for i in range(0, len(payload), 160)])
    assert len(y) == 16000
    assert spectrum_peaks(y[1600:], 16000, 1)[0] == pytest.approx(6000, abs=10)
    assert c.timestamp_units(320) == 160  # RTP clock 8000 for G.722 (RFC 3551)


# --- RTP ------------------------------------------------------------------------------------------


def test_rtp_round_trip_and_junk() -> None:
    p = RtpPacket(8, 65535, 2**32 - 1, 0xDEADBEEF, b"\x01" * 160, marker=True)
    q = parse_rtp(p.serialize())
    assert q == p
    rng = random.Random(7)
    junk = [b"", b"\x80", b"\x00" * 12, bytes(rng.getrandbits(8) for _ in range(40))]
    junk.append(b"\x8f" + b"\x00" * 20)  # 15 CSRCs announced, 8 bytes there
    junk.append(b"\x90\x00" + b"\x00" * 10 + b"\x00\x00\xff\xff")  # extension longer than the packet
    junk.append(b"\xa0\x00" + b"\x00" * 10 + b"\x10")  # padding longer than the packet
    assert [parse_rtp(j) for j in junk] == [None] * len(junk)


def test_rfc4733_digit_reported_once_per_event() -> None:
    rx = DtmfReceiver()
    got = []
    # '5' with start, repeats and three end packets; then '#' whose start packets were all lost.
    for ts, code, end in [(100, 5, False)] * 3 + [(100, 5, True)] * 3 + [(900, 11, True)] * 3:
        digit = rx.receive(0x1234, ts, encode_event(code, end, 800))
        if digit:
            got.append(digit)
    assert got == ["5", "#"]
    assert rx.receive(1, 5, b"\x10\x80\x00\x10") is None  # event 16 (flash): not a digit


# --- jitter buffer --------------------------------------------------------------------------------


def _packets(samples: np.ndarray, per_packet: int, ssrc: int = 1, ts0: int = 1000) -> list[tuple[int, int, np.ndarray]]:
    return [(ssrc, ts0 + i, samples[i : i + per_packet]) for i in range(0, len(samples), per_packet)]


def _play(
    jb: JitterBuffer, packets: list[tuple[int, int, np.ndarray] | None], frames: int, per_tick: int
) -> np.ndarray:
    """Feed ``per_tick`` packets before each 20 ms pop (a steady sender; None = lost), return what came out."""
    out = []
    queue = list(packets)
    for _ in range(frames):
        for _ in range(per_tick):
            if queue:
                packet = queue.pop(0)
                if packet is not None:
                    jb.push(*packet)
        frame = jb.pop()
        out.append(frame if frame is not None else np.zeros(160, np.int16))
    return np.concatenate(out)


def test_jitter_buffer_30ms_packets_make_20ms_frames_with_nothing_lost() -> None:
    x = (np.arange(8000 * 3) % 1000).astype(np.int16) + 1
    jb = JitterBuffer(8000)
    packets = _packets(x, 240)
    out = []
    for i in range(200):  # 30 ms packets arrive 2 per 3 ticks
        if i % 3 != 2 and packets:
            jb.push(*packets.pop(0))
        f = jb.pop()
        out.append(f)
    y = np.concatenate([f for f in out if f is not None])
    start = int(np.argmax(y != 0))
    assert start == jb.delay  # 60 ms of playout delay, then the audio exactly
    assert np.array_equal(y[start : start + len(x)], x)


def test_jitter_buffer_reorder_loss_and_new_ssrc() -> None:
    x = (np.arange(8000 * 2) % 500).astype(np.int16) + 1
    packets = _packets(x, 160)
    # swap neighbours (reordering within the playout delay) and lose every 5th packet
    for i in range(3, len(packets) - 1, 7):  # (the first packet sets the timeline)
        packets[i], packets[i + 1] = packets[i + 1], packets[i]
    lost = {i for i in range(len(packets)) if i % 5 == 3}
    kept = [None if i in lost else p for i, p in enumerate(packets)]
    jb = JitterBuffer(8000)
    y = _play(jb, kept, len(packets) + 10, 1)
    # lost packets are silence of their exact length; everything else is in place
    assert len(y) == (len(packets) + 10) * 160
    body = y[jb.delay : jb.delay + len(x)]
    expect = x.copy()
    for i in lost:  # by the lost packet's own timestamp (the list is reordered)
        start = packets[i][1] - 1000
        expect[start : start + 160] = 0
    assert np.array_equal(body, expect)
    # a new SSRC (another source, timestamps unrelated) starts where playout is, after the delay
    before = jb.read_pos
    jb.push(99, 7, np.full(160, 42, np.int16))
    frames = [jb.pop() for _ in range(4)]
    assert jb.stats.resyncs == 1
    assert frames[3] is not None and np.all(frames[3] == 42) and jb.read_pos == before + 4 * 160


def test_jitter_buffer_timestamp_wraparound() -> None:
    x = np.arange(1, 161 * 10, dtype=np.int16)[:1600]
    jb = JitterBuffer(8000)
    y = _play(jb, _packets(x, 160, ts0=2**32 - 480), 20, 1)
    assert np.array_equal(y[jb.delay : jb.delay + 1600], x)
    assert jb.stats.resyncs == 0


def test_jitter_buffer_overlapping_packets_stay_bounded() -> None:
    """A broken sender whose 20 ms packets advance the timestamp by only 10 ms: frames keep coming at
    the call's pace, the overlap is dropped rather than queued, and memory stays bounded."""
    jb = JitterBuffer(8000)
    for i in range(3000):  # 60 s of this
        jb.push(1, i * 80, np.full(160, 7, np.int16))
        if i % 2:  # the packets come every 10 ms: one frame out per two packets
            frame = jb.pop()
            assert frame is not None and len(frame) == 160
    assert len(jb._chunks) < 100
    assert jb.read_pos == 1500 * 160


# --- SDP ------------------------------------------------------------------------------------------

OFFER = """v=0\r
o=- 1 1 IN IP4 10.0.0.5\r
s=-\r
c=IN IP4 10.0.0.5\r
t=0 0\r
m=audio 4000 RTP/AVP 9 0 8 96\r
a=rtpmap:96 telephone-event/8000\r
a=fmtp:96 0-16\r
a=ptime:30\r
m=video 4002 RTP/AVP 97\r
a=rtpmap:97 H264/90000\r
"""


def test_sdp_answer_follows_the_offer() -> None:
    offer = parse_offer(OFFER)
    media = negotiate(offer, [])
    assert (media.codec, media.payload_type, media.telephone_event, media.ptime) == ("G722", 9, 96, 30)
    assert media.remote == ("10.0.0.5", 4000)
    restricted = negotiate(offer, ["PCMA"])
    assert (restricted.codec, restricted.payload_type) == ("PCMA", 8)
    answer = build_answer(offer, restricted, ("10.0.0.1", 20000), SessionVersion())
    assert "m=audio 20000 RTP/AVP 8 96\r\n" in answer
    assert "a=rtpmap:96 telephone-event/8000" in answer
    assert "m=video 0 RTP/AVP 97" in answer  # rejected, kept in its place
    with pytest.raises(NotAcceptable, match="no common codec"):
        negotiate(offer, ["G729"])


def test_sdp_hold_and_bad_offers() -> None:
    held = parse_offer(OFFER.replace("a=ptime:30", "a=sendonly"))
    assert held.on_hold and negotiate(held, []).direction == "recvonly"
    for bad, why in [
        ("v=0\r\nm=audio 4000 RTP/AVP 18\r\nc=IN IP4 1.2.3.4\r\n", "no common codec"),
        ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=video 4000 RTP/AVP 97\r\n", "no audio"),
        ("v=0\r\nm=audio 4000 RTP/AVP 0\r\n", "connection address"),
        ("v=0\r\nm=audio x RTP/AVP 0\r\n", "unreadable"),
        ("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 4000 RTP/SAVP 0\r\n", "profile"),
    ]:
        with pytest.raises(NotAcceptable, match=why):
            negotiate(parse_offer(bad), [])


def test_an_srtp_stream_beside_a_plain_one_is_declined_and_the_plain_one_answered() -> None:
    # "best effort" SRTP offered as two audio streams: encrypted first, plain RTP as the fallback
    offer_text = (
        "v=0\r\no=- 1 1 IN IP4 10.0.0.5\r\ns=-\r\nc=IN IP4 10.0.0.5\r\nt=0 0\r\n"
        "m=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9\r\n"
        "m=audio 4002 RTP/AVP 0 8\r\n"
    )
    offer = parse_offer(offer_text)
    assert offer.audio_index == 1 and offer.remote == ("10.0.0.5", 4002)
    answer = build_answer(offer, negotiate(offer, []), ("10.0.0.1", 20000), SessionVersion())
    assert "m=audio 0 RTP/SAVP 0\r\nm=audio 20000 RTP/AVP 0\r\n" in answer  # RFC 3264 §6: in its place


def _audio_offer(media: str = "0", address: str = "127.0.0.1", extra: str = "") -> str:
    return f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 {address}\r\nt=0 0\r\nm=audio {media}\r\n{extra}"


@pytest.mark.parametrize(
    ("media", "address", "extra", "why"),
    [
        # payload types are 7 bits: 200 was answered 200 OK, then the call died packing an RTP header
        ("4000 RTP/AVP 200", "127.0.0.1", "a=rtpmap:200 PCMU/8000\r\n", "payload type '200' is outside 0-127"),
        ("4000 RTP/AVP 0 128", "127.0.0.1", "", "payload type '128'"),
        ("4000 RTP/AVP 0 -1", "127.0.0.1", "", "payload type '-1'"),
        ("4000 RTP/AVP 0 " + "9" * 5000, "127.0.0.1", "", "payload type '9999"),  # no int() of 5000 digits
        ("4000 RTP/AVP \u0661", "127.0.0.1", "", "payload type"),  # an Arabic-Indic one, which int() reads
        ("99999 RTP/AVP 0", "127.0.0.1", "", "port 99999 is outside 0-65535"),
        ("-4000 RTP/AVP 0", "127.0.0.1", "", "port -4000"),
        ("4000 RTP/AVP 0", "999.1.1.1", "", "'999.1.1.1' is neither an IP address nor a host name"),
        ("4000 RTP/AVP 0", "255.255.255.255", "", "broadcast"),
        ("4000 RTP/AVP 0", "240.1.2.3", "", "reserved"),
        ("4000 RTP/AVP 0", "224.0.0.1", "", "multicast"),
        ("4000 RTP/AVP 0", "239.255.255.250", "", "multicast"),
        ("4000 RTP/AVP 0", "ff02::1", "", "multicast"),
        ("4000 RTP/AVP 0", "::ffff:224.0.0.9", "", "multicast"),
        ("4000 RTP/AVP 0", "0.1.2.3", "", "not a destination"),
        ("4000 RTP/AVP 0", "pbx..example.com", "", "neither"),
        ("4000 RTP/AVP 0", "x" * 300, "", "neither"),
        ("4000 RTP/AVP 0", "1.2.3.4\r\nc=IN IP4", "", "has no address"),  # read as 0.0.0.0 (hold) before
        ("4000 RTP/AVP 0", "127.0.0.1", "a=rtpmap:96 PCMU/\r\n", "unreadable"),  # a clock rate missing
        ("4000 RTP/AVP 0", "127.0.0.1", "a=fmtp:x 0-15\r\n", "unreadable"),
        ("4000 RTP/AVP 0", "127.0.0.1", "a=rtpmap:96 PCMU/" + "9" * 5000 + "\r\n", "unreadable"),
    ],
)
def test_sdp_payload_types_ports_and_addresses_out_of_range_get_488(
    media: str, address: str, extra: str, why: str
) -> None:
    with pytest.raises(NotAcceptable, match=re.escape(why)) as caught:
        negotiate(parse_offer(_audio_offer(media, address, extra)), [])
    assert len(str(caught.value)) < 200  # the reason quotes the peer's junk briefly


def test_sdp_values_in_range_are_still_served() -> None:
    for media, address in [
        ("0 RTP/AVP 0", "127.0.0.1"),  # port 0 alone: a rejected stream, so no audio
        ("65535 RTP/AVP 0 127", "127.0.0.1"),
        ("4000 RTP/AVP 0", "0.0.0.0"),  # hold
        ("4000 RTP/AVP 0", "10.0.0.5"),
        ("4000 RTP/AVP 0", "[2001:db8::1]"),
        ("4000 RTP/AVP 0", "pbx.example.com"),
    ]:
        body = _audio_offer(media, address)
        if media.startswith("0 "):
            with pytest.raises(NotAcceptable, match="no audio stream"):
                parse_offer(body)
            continue
        assert negotiate(parse_offer(body), []).codec == "PCMU"
    assert parse_offer(_audio_offer("4000 RTP/AVP 0", "0.0.0.0")).on_hold
    # a rejected video stream with any port keeps its place in the answer, at port 0
    offer = parse_offer(_audio_offer("4000 RTP/AVP 0", extra="m=video 0 RTP/AVP 97\r\n"))
    assert "m=video 0 RTP/AVP 97" in build_answer(offer, negotiate(offer, []), ("10.0.0.1", 20000), SessionVersion())
    # huge but well-formed numbers where we only compare them: read, bounded, ignored
    odd = "a=rtpmap:0 PCMU/8000/" + "9" * 4000 + "\r\na=ptime:" + "9" * 4000 + "\r\na=ptime:-20\r\n"
    media = negotiate(parse_offer(_audio_offer("4000 RTP/AVP 0", extra=odd)), [])
    assert (media.codec, media.ptime) == ("PCMU", 20)
    many = " ".join(str(96 + i % 32) for i in range(2000))  # 32 payload types we do not know, repeated
    with pytest.raises(NotAcceptable, match="and 22 more;") as caught:  # the reason lists 10
        negotiate(parse_offer(_audio_offer(f"4000 RTP/AVP {many}")), [])
    assert len(str(caught.value)) < 200


def test_our_offer_for_a_delayed_offer_call() -> None:
    session = SessionVersion()
    sdp = build_offer([], ("10.0.0.1", 40000), session)
    assert "m=audio 40000 RTP/AVP 0 8 9 101\r\n" in sdp and "c=IN IP4 10.0.0.1\r\n" in sdp
    assert "a=rtpmap:9 G722/8000\r\n" in sdp and "a=rtpmap:101 telephone-event/8000\r\n" in sdp
    # answer.codecs narrows and orders the offer; the answer to it is read like an offer
    sdp = build_offer(["G722", "G729", "PCMU"], ("10.0.0.1", 40000), session)
    assert "m=audio 40000 RTP/AVP 9 0 101\r\n" in sdp
    answer = parse_offer(sdp.replace("RTP/AVP 9 0 101", "RTP/AVP 0 101"))
    assert negotiate(answer, ["G722", "PCMU"]).codec == "PCMU"
    with pytest.raises(NotAcceptable, match="G729"):
        build_offer(["G729"], ("10.0.0.1", 40000), session)


def test_sdp_address_forms_we_accept_and_a_host_name_is_resolved() -> None:
    import asyncio
    import socket

    from swml_engine.media.frame import silence
    from swml_engine.transports.sip.rtpstream import RtpStream
    from swml_engine.transports.sip.sdp import Media, is_host_name

    offer = parse_offer("v=0\r\no=- 1 1 IN IP6 ::1\r\ns=-\r\nc=IN IP6 [::1]\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n")
    assert offer.remote == ("::1", 4000)
    # only names that can be DNS names are looked up; junk is rejected at once (no regex blow-up)
    assert is_host_name("pbx.example.com") and is_host_name("localhost.")
    for junk in ("127.0\xff.0.1", "-x.com", "a..b", "", "a" * 254, "a" * 250 + "!", "a." * 120 + "!", "999.1.1.1"):
        assert not is_host_name(junk)

    async def main() -> bytes:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
            peer.bind(("127.0.0.1", 0))
            peer.settimeout(2)
            rtp = RtpStream(8000, lambda d: None)
            await rtp.bind("127.0.0.1", (42000, 42999))
            # c=IN IP4 localhost (RFC 4566 allows a name): sent to once resolved, not before
            rtp.configure(Media("PCMU", 0, None, 20, ("localhost", peer.getsockname()[1]), "sendrecv"))
            rtp.write(silence(8000))
            for _ in range(100):
                await asyncio.sleep(0.01)
                if rtp.stats.sent:
                    break
                rtp.write(silence(8000))
            rtp.close()
            return peer.recv(2048)

    packet = asyncio.run(main())
    assert len(packet) == 12 + 160 and packet[1] & 0x7F == 0
