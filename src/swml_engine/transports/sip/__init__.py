"""SIP calls: signalling (aiosipua + our fixes), SDP offer/answer, RTP media, codecs."""
