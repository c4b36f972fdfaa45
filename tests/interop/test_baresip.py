"""baresip, a second and independent SIP client, calling `swml serve`: G.711 and G.722 wideband."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from conftest import HttpServer, read_wav, spectrum_peaks, tone, wav_bytes

from .peers import Engine, free_port, have

EngineFactory = Callable[..., Engine]

SCRIPT = """
version: 1.0.0
sections:
  main:
    - answer
    - record_call: {{stereo: true}}
    - play: {{url: '{prompt}'}}
    - play: {{url: 'silence:1.5'}}
    - hangup
"""


def baresip_config(home: Path, rate: int, codec: str, caller: Path, transport: str = "udp") -> None:
    """A headless baresip: a WAV file as microphone, what it hears dumped by sndfile, no devices."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "snd").mkdir(exist_ok=True)
    lines = {
        "poll_method": "epoll",
        "sip_listen": f"127.0.0.1:{free_port(span=2)}",
        "sip_transports": transport,
        "audio_source": f"aufile,{caller}",
        "audio_player": f"aufile,{home / 'unused.wav'}",
        "audio_alert": f"aufile,{home / 'unused.wav'}",
        "audio_srate": str(rate),
        "audio_channels": "1",
        "module_path": "/usr/lib/baresip/modules",
        "snd_path": str(home / "snd"),
    }
    text = "".join(f"{k}\t{v}\n" for k, v in lines.items())
    text += "".join(f"module\t{m}.so\n" for m in ("g711", "g722", "aufile", "sndfile"))
    text += "module_app\taccount.so\nmodule_app\tmenu.so\n"
    (home / "config").write_text(text)
    (home / "accounts").write_text(f"<sip:baresip@127.0.0.1>;regint=0;audio_codecs={codec}\n")


def run_baresip(
    home: Path, rate: int, codec: str, caller: Path, uri: str, *, seconds: int, transport: str = "udp"
) -> subprocess.CompletedProcess[str]:
    """baresip dials ``uri`` and quits after ``seconds``. Its ports (SIP, and TLS one above) are picked
    free, but another program may take one before baresip binds it: then it fails at once, before
    dialling, and is run again on other ports."""
    for _ in range(3):
        baresip_config(home, rate, codec, caller, transport)
        res = subprocess.run(
            ["baresip", "-f", str(home), "-e", f"/dial {uri}", "-t", str(seconds)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if "Address already in use" not in res.stdout + res.stderr:
            break
    return res


@pytest.mark.skipif(not have("baresip"), reason="baresip not installed: run make test")
@pytest.mark.parametrize(
    ("codec", "rate", "caller_hz"),
    [("PCMU/8000/1", 8000, 440), ("G722/16000/1", 16000, 6000)],  # 6 kHz: only a wideband call carries it
)
def test_baresip_call_is_recorded_and_hears_the_prompt(
    codec: str, rate: int, caller_hz: int, engine: EngineFactory, http_server: HttpServer, tmp_path: Path
) -> None:
    http_server.files["/prompt.wav"] = (wav_bytes(tone(1000, 2.0, 8000), 8000), "audio/wav")
    eng = engine(SCRIPT.format(prompt=http_server.url("/prompt.wav")))
    home = tmp_path / "baresip"
    caller = tmp_path / "caller.wav"
    caller.write_bytes(wav_bytes(tone(caller_hz, 10.0, rate, level=0.4), rate))
    res = run_baresip(home, rate, codec, caller, f"sip:record@127.0.0.1:{eng.port}", seconds=7)
    assert res.returncode == 0, res.stdout[-3000:]
    assert "Call established" in res.stdout, res.stdout[-3000:]
    [meta] = eng.recordings(1)
    eng.wait_idle()
    events = eng.call_events()[0]
    assert [e["reason"] for e in events if e["type"] == "call.state" and e["state"] == "ended"] == ["hangup"]
    assert meta["sample_rate"] == rate and meta["end_reason"] == "hangup"
    assert 3.3 < float(meta["duration"]) < 4.0  # 2 s prompt + 1.5 s silence
    audio, file_rate = read_wav(Path(str(meta["url"]).removeprefix("file://")))
    assert file_rate == rate
    left, right = audio[:, 0], audio[:, 1]
    during_prompt = slice(int(0.5 * rate), int(1.8 * rate))
    assert spectrum_peaks(left[during_prompt], rate, 1)[0] == pytest.approx(caller_hz, abs=10)  # baresip's mic
    assert spectrum_peaks(right[during_prompt], rate, 1)[0] == pytest.approx(1000, abs=10)  # the prompt
    [heard_file] = list((home / "snd").glob("*-dec.wav"))  # what baresip decoded from our RTP
    heard, heard_rate = read_wav(heard_file)
    assert heard_rate == rate
    assert spectrum_peaks(heard[int(0.6 * rate) : int(1.6 * rate)], rate, 1)[0] == pytest.approx(1000, abs=10)
    codec_name = codec.split("/")[0]
    assert any(e["type"] == "sip.invite" and codec_name in e["offer"] for e in events)


@pytest.mark.skipif(not have("baresip"), reason="baresip not installed: run make test")
def test_baresip_over_tcp_hangs_up_and_the_call_ends(engine: EngineFactory, tmp_path: Path) -> None:
    """Our Contact says transport=tcp, so baresip's ACK and BYE come over TCP to a dialog we know."""
    eng = engine("version: 1.0.0\nsections:\n  main:\n    - answer\n    - record_call: {}\n    - sleep: 30000\n")
    home = tmp_path / "baresip"
    caller = tmp_path / "caller.wav"
    caller.write_bytes(wav_bytes(tone(440, 10.0, 8000, level=0.4), 8000))
    uri = f"sip:record@127.0.0.1:{eng.port};transport=tcp"
    res = run_baresip(home, 8000, "PCMU/8000/1", caller, uri, seconds=4, transport="tcp")
    assert "Call established" in res.stdout, res.stdout[-3000:]
    [meta] = eng.recordings(1)  # ended by baresip's BYE, not by the script's 30 s
    eng.wait_idle()
    events = eng.call_events()[0]
    ended = [e for e in events if e["type"] == "call.state" and e["state"] == "ended"]
    assert ended[0]["reason"] == "remote_hangup", eng.log()[-2000:]
    assert float(meta["duration"]) < 4.5
    # A 481 response (Call/Transaction Does Not Exist) to baresip's BYE, not the digits of a port (:30481).
    assert not re.search(r"(?<![\d:])481\b", res.stdout), res.stdout[-3000:]
