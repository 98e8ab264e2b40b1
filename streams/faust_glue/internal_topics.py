"""The topics Faust creates for itself (table changelogs, the leader assignor's topic), so
the worker can create them before Faust subscribes.

Faust creates them at start-up and subscribes right after; on a broker that has just been
(re)started the new topics may not be in the broker's metadata yet, and the consumer then
joins its group with no partition of them ("Topic ... not found in cluster metadata",
"Setting newly assigned partitions set()"): the worker sat idle until its next metadata
refresh (5 minutes). Created beforehand, and waited for (``streams.topics``), they are
there when Faust looks; Faust finds them existing and goes on. Names and settings are the
ones faust-streaming 0.15 uses (``Table._new_changelog_topic``, ``LeaderAssignor``).
"""

from __future__ import annotations

from typing import Any

__all__ = ["internal_topics"]


def internal_topics(app: Any) -> dict[str, tuple[int, dict[str, str]]]:
    """name -> (partitions, config) of the app's changelog topics and its leader topic."""
    topics: dict[str, tuple[int, dict[str, str]]] = {}
    for table in app.tables.values():
        topic = table.changelog_topic
        config = {"cleanup.policy": "compact"} if topic.compacting else {}
        topics[topic.get_topic_name()] = (int(table.partitions), config)
    topics[f"{app.conf.id}-__assignor-__leader"] = (1, {})
    return topics
