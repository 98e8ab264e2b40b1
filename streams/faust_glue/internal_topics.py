"""The topics Faust creates for itself (table changelogs, the leader assignor's topic), so
the worker can create them before Faust subscribes.

Faust creates them at start-up and subscribes right after; on a broker that has just been
(re)started the new topics may not be in the broker's metadata yet, and the consumer then
joins its group with no partition of them ("Topic ... not found in cluster metadata",
"Setting newly assigned partitions set()"): the worker sat idle until its next metadata
refresh (5 minutes). Created beforehand, and waited for (``streams.topics``), they are
there when Faust looks; Faust finds them existing and goes on. Names and settings are the
ones faust-streaming 0.15 uses (``Table._new_changelog_topic``, ``LeaderAssignor``). A
changelog takes the records of ``max_record_bytes`` that the service's own topics take
(``schemas.topics.record_limits``): a subject's state may be that large
(``streams.events.state_limit``).
"""

from __future__ import annotations

from typing import Any

from schemas.topics import record_limits

__all__ = ["internal_topics"]


def internal_topics(app: Any, max_record_bytes: int) -> dict[str, tuple[int, dict[str, str]]]:
    """name -> (partitions, config) of the app's changelog topics and its leader topic."""
    topics: dict[str, tuple[int, dict[str, str]]] = {}
    largest = str(record_limits(max_record_bytes)[0])
    for table in app.tables.values():
        topic = table.changelog_topic
        config = {"cleanup.policy": "compact"} if topic.compacting else {}
        config["max.message.bytes"] = largest
        topics[topic.get_topic_name()] = (int(table.partitions), config)
    topics[f"{app.conf.id}-__assignor-__leader"] = (1, {})
    return topics
