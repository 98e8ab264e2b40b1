"""The webhook bridge: partner instructions POSTed to partners' HTTPS endpoints, signed
(``bridge``, ``delivery``), their signed callbacks (``callback``), and its metrics."""
