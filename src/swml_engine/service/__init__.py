"""``swml serve``: the long-running service that answers SIP calls and keeps their recordings."""
