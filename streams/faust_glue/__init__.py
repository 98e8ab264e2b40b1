"""Everything that reaches into faust-streaming 0.15 internals, in one place.

faust-streaming is pinned ``<0.16`` because of these modules; an upgrade must re-run
``tests/unit/test_transport.py``, ``test_staged_table.py``, the batch tests and the
SIGKILL / broker-restart / mid-batch crash tests. Each module covers one upstream
limitation and says how to tell when it can go:

``transport``
    The fetch loop drops re-fetched records below its "read offset" and its gap
    bookkeeping then commits past them (faust-streaming issue 596): events were lost
    through a crash. Can go when a SIGKILL test without ``RedeliveringConsumer`` keeps
    every event (``test_without_the_fix_faust_would_drop_them`` shows the defect).
    Also seeks the source partitions again once a rebalance has resumed the flow (Faust
    clears the agents' queues on resume, after its own seek, and aiokafka does not move a
    partition with nothing committed): a record fetched during the rebalance was lost
    until a later record of its partition came (``test_worker_start.py``).
``consumer_loop``
    Faust runs aiokafka's consumer in a thread with its own event loop; every call
    (each fetch loop ``getmany``) crosses threads through a method queue, and the
    consumer thread waits for the GIL while an agent works. Runs the same consumer
    class on the worker's loop. Can go when Faust offers a consumer without the thread.
    Also stops the worker when aiokafka's group coordination dies (``watch_membership``:
    aiokafka 0.14 logs it and goes on in no group). Can go when aiokafka ends the
    consumer on such an error.
``record_reader`` (with ``fetch_thread``)
    aiokafka's fetcher costs 330-390 us of Python per fetch of the worker's 19
    partitions. A librdkafka consumer fetches the records instead, assigned partition by
    partition at aiokafka's positions, which it moves as it hands records over; aiokafka
    keeps the group, the commits, the seeks and its offset resets, and sends no fetch
    request. Uses aiokafka's subscription state (``position``, ``consumed_to``,
    ``highwater``, ``timestamp``) and ``Fetcher._get_actions_per_node``. Can go when
    Faust's aiokafka driver fetches at a fraction of that cost, or Faust has a librdkafka
    driver that keeps its group protocol (``CONSENT_STREAM_FETCH_CLIENT=aiokafka``
    compares the two).
``direct``
    The conductor turns every fetched record into an ``Event`` for every channel of its
    topic (producer-buffer wait, reference count, schema decode), which the stream then
    acknowledges layer by layer; the agents read raw bytes in batches. For the agents'
    topics, the message itself goes into the agent's channel queue, under Faust's flow
    control and back-pressure, and is acknowledged with ``Consumer.ack``. Uses
    ``Conductor._build_handler``. Can go when Faust hands a message to a raw-bytes
    channel without an event.
``fetched``
    ``Consumer.getmany`` yields, checks and hands over every record on its own. For a
    partition of ``direct``, a fetch's records go over as one chunk, checked once (a
    copy of ``getmany``; uses ``_wait_next_records`` and ``Conductor._tp_to_callback``).
    Goes with ``direct`` (``test_fetched.py`` guards the copy).
``batches``
    ``Stream.take_events`` only yields on a timer or a full buffer and acknowledges the
    buffer when resumed, not when the caller's effects are done. Uses the agent channel's
    queue, ``Message.tracked``, ``Consumer._unacked_messages`` and the flow-control and
    generation checks of Faust's stream iterator. Can go when Faust offers a batch read
    that returns what is queued and leaves acknowledgement to the caller.
``tables``
    ``table[key] = value`` needs the stream's current event (none in a batch) and sends
    one changelog record per write through Faust's per-message producer path. Writes the
    store (``Table.data``, the memory store's ``_key_partition``) and the changelog
    topic itself. Can go when Faust tables accept a partition per write and a
    caller-provided producer.

``raw_topics`` uses Faust's public ``Schema`` extension point only (records handed over as
bytes, without the codec registry), so it needs no re-check on an upgrade.

The sequencer (``streams.sequencer``) stays either way: order and completeness per
partition are the product's guarantees, checked rather than assumed.
"""
