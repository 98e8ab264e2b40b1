"""The worker's HTTP API: the server (``server``), who may call it (``auth``), and its
access log without raw request lines (``access_log``)."""
