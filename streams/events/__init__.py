"""The events agent's path: what an inbound event decides (``decisions``), a batch
planned in memory (``batch``, with the subject state size check in ``state_limit``), its
effects sent in waves (``processor``, each wave a ``flight``) and the agent's loop over
the batches in flight (``loop``)."""
