"""The consent store in Redis: what online services read (``consent_store``), its keys
(``layout``), clients with Sentinel and TLS (``clients``), its Redis users (``acl``) and
its rebuild from ``consent.state.v1`` (``rebuild``)."""
