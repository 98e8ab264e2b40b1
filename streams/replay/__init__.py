"""``consent-stream replay --partner P``: the current consent to a (new) partner: what to
send (``chunks``), sending it with its ledger entries (``sender``), the command
(``command``)."""
