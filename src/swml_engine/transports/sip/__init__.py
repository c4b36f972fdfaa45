"""SIP calls: the I/O-free SIP core (messages, transactions, dialogs, the user agent) and its endpoint,
SDP offer/answer, RTP media, codecs. See docs/architecture.md."""
