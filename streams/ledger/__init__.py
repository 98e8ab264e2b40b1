"""The instruction ledger's data: tickets and their transitions (``tickets``), their
JSON codecs (``codec``), acknowledgements parked before their ticket (``parked``), the
time-ordered index of due tickets (``index``) and a deletion request's evidence
(``evidence``). The agent's handler is ``streams.ledger_processor``."""
