"""The engine's named values: call states, end reasons, event types, recording states and end reasons.

Each list is a ``Literal``: mypy checks every value written anywhere in the package (a typo, or
``"early"`` where the event says ``"early_media"``, is a type error at that line), and what reaches
``events.jsonl``, the metadata files and the status callbacks stays plain JSON strings. :func:`values`
gives a list at run time. ``tests/test_vocabulary.py`` compares each list with the table that documents
it (docs/methods.md, docs/recording.md, docs/connect.md): a value cannot be added here without being documented there,
nor documented there without being used here.

This module imports nothing of the engine: every other module may use it.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

#: ``call.state`` events and ``Call.state``, in the order a call goes through them (it may skip some).
CallState = Literal[
    "created",  # the call object exists; its script has not started (never an event)
    "ringing",  # started, not answered
    "early_media",  # media flows before the answer (SIP 183 with SDP)
    "answered",
    "ended",  # the reason is an EndReason
]

#: Why a call ended: ``Call.end_reason``, the ``reason`` of the ``call.state ended`` event, the index's
#: ``end_reason`` of a call.
EndReason = Literal[
    "hangup",  # the script's hangup (reason hangup)
    "busy",  # the script's hangup with reason busy (SIP 486 before the answer)
    "decline",  # the script's hangup with reason decline (SIP 603 before the answer)
    "script_end",  # the script ran out of steps
    "remote_hangup",  # the party hung up (SIP BYE, no ACK for our 200 OK, its connection failed; --hangup-at)
    "remote_cancel",  # the party gave up before the answer (SIP CANCEL)
    "remote_rejected",  # the SIP transport refused the call: credentials (wrong, none in time), SDP it cannot use
    "transferred",  # sip_refer moved the caller to another party (we hung up after the transfer succeeded)
    "max_duration",  # answer.max_duration (or the 4 h default) was reached
    "media_error",  # the media tick failed for this call
    "error",  # the script or the service could not go on (a remote document failed, ...)
    "shutdown",  # the service was stopped while the call ran
    "service_stopped",  # index only: a call a stopped or killed process left open, closed later (by it or others)
]

#: How a transport says the party ended the call (``Call.on_remote_hangup``); becomes ``remote_<it>``.
RemoteEnd = Literal["hangup", "cancel", "rejected"]

#: ``hangup``'s ``reason`` parameter (hangup.mdx); each is also the call's EndReason.
HangupReason = Literal["hangup", "busy", "decline"]

#: The ``type`` of each line of ``events.jsonl`` (and of the service's per-call event log).
EventType = Literal[
    "call.state",
    "call.max_duration",
    "step.start",
    "step.end",
    "vars.set",
    "vars.unset",
    "dtmf",
    "play.start",
    "play.end",
    "record.state",
    "record.recovered",
    "callback",
    "error",
    "warning",
    "sip.invite",
    "sip.answer",
    "sip.authenticated",
    "sip.no_early_media",
    "sip.reinvite",
    "sip.rejected",
    "sip.refer",
    "rtp.stats",
    "webrtc.offer",
    "webrtc.answer",
    "webrtc.state",
    "webrtc.stats",
    "connect.state",
    "connect.leg",
]

#: A far leg's progress while ``connect`` dials it (``dialing.FarTransport.state``); ``created``,
#: ``ringing``, ``answered`` and ``ended`` are also the ``call_state_events`` a script may ask for.
DialState = Literal[
    "created",  # placed, nothing sent or heard yet
    "ringing",  # the far end is alerting (SIP 180/183)
    "early_media",  # the far end's audio flows before its answer (SIP 183 with SDP)
    "answered",
    "failed",  # never answered: the reason is a FailReason
    "ended",  # answered, then over
]

#: Why a far leg failed: ``connect_failed_reason`` and the status callbacks' ``failed_reason``.
FailReason = Literal[
    "busy",  # the far end was busy (SIP 486, 600)
    "no_answer",  # it rang until the timeout (connect.timeout; SIP 408, 480)
    "rejected",  # the far end refused the call (SIP 403, 603, other 4xx-6xx)
    "unreachable",  # no route, name or answer at all (DNS, no response, 503 from us)
    "cancelled",  # we gave it up: another leg answered, or the caller hung up
    "not_confirmed",  # it answered but its confirm script did not accept the call
    "error",  # the engine could not place it
]

#: A ``sip_refer``'s progress: the ``state`` of its ``sip.refer`` events and status callbacks; the last
#: one (``success`` or ``failed``) is ``sip_refer_result``.
ReferState = Literal[
    "pending",  # the party took the REFER and is calling the target
    "success",  # the target answered the party: the caller is transferred
    "failed",  # refused, failed or no answer in time: the caller is still ours
]

#: A ``connect`` as a whole: the ``connect.state`` events and the ``calling.call.connect`` status
#: callbacks' ``connect_state`` (connect.mdx).
ConnectState = Literal[
    "connecting",  # dialling the first group
    "connected",  # bridged to a far party
    "failed",  # no far party was bridged: failed_reason says why (a FailReason)
    "disconnected",  # the bridge is over
]

#: Why a bridge ended (``connect.state disconnected``'s ``reason``).
DisconnectReason = Literal[
    "far_hangup",  # the far party hung up: the script goes on after connect
    "caller_hangup",  # the caller hung up: the far leg is hung up, the call ends
    "max_duration",  # connect.max_duration was reached: the far leg is hung up, the script goes on
]

#: ``params.end_reason`` of a far leg's ``calling.call.state`` callback when it ended (connect.mdx).
LegEndReason = Literal["hangup", "busy", "no_answer", "cancel", "declined", "error"]

#: A recording's ``state``: in its metadata, ``record.state`` events and status callbacks.
RecordingState = Literal["recording", "paused", "finished", "no_input", "error"]

#: A recording's ``end_reason``.
RecordingEndReason = Literal[
    "stop_record_call",
    "api",  # stopped through the HTTP API
    "terminator",
    "end_silence",
    "no_input",
    "max_length",
    "hangup",  # either side hung up
    "script_end",
    "error",
    "recovered",  # repaired at the next start after a crash
]


def values(vocabulary: Any) -> tuple[str, ...]:
    """The values of one of the Literals above, in their order."""
    return tuple(get_args(vocabulary))
