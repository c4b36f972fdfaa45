"""The SWML methods this engine runs: one module per method, found by its name."""

from __future__ import annotations

from typing import Any

from swml_engine.methods.answer import Answer
from swml_engine.methods.base import Method
from swml_engine.methods.cond import Cond
from swml_engine.methods.connect import Connect
from swml_engine.methods.denoise import Denoise
from swml_engine.methods.execute import Execute
from swml_engine.methods.goto import Goto
from swml_engine.methods.hangup import Hangup
from swml_engine.methods.label import Label
from swml_engine.methods.play import Play
from swml_engine.methods.prompt import Prompt
from swml_engine.methods.record import Record
from swml_engine.methods.record_call import RecordCall
from swml_engine.methods.return_ import Return
from swml_engine.methods.send_digits import SendDigits
from swml_engine.methods.set import Set
from swml_engine.methods.sip_refer import SipRefer
from swml_engine.methods.sleep import Sleep
from swml_engine.methods.stop_denoise import StopDenoise
from swml_engine.methods.stop_record_call import StopRecordCall
from swml_engine.methods.switch import Switch
from swml_engine.methods.transfer import Transfer
from swml_engine.methods.unset import Unset

_ALL: list[Method[Any]] = [
    Answer(),
    Cond(),
    Connect(),
    Denoise(),
    Execute(),
    Goto(),
    Hangup(),
    Label(),
    Play(),
    Prompt(),
    Record(),
    RecordCall(),
    Return(),
    SendDigits(),
    Set(),
    SipRefer(),
    Sleep(),
    StopDenoise(),
    StopRecordCall(),
    Switch(),
    Transfer(),
    Unset(),
]

#: Method name → the object that loads and runs it.
REGISTRY: dict[str, Method[Any]] = {m.name: m for m in _ALL}
