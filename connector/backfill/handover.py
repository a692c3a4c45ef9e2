"""Hand-over: the backfill's stop point becomes the connector's committed offsets.

Only once every batch succeeded, and only into a group that is not running: a member would commit
its own offsets over ours (or already be streaming from elsewhere). A group that already holds
committed offsets is refused too, unless they are exactly the stop point (the hand-over of this
backfill, repeated): anything else means the stream has already been somewhere, and moving it
would skip or repeat records.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, ConsumerGroupState, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from connector.backfill.source import split_key, tp_key
from connector.config import Settings
from connector.kafka.source import producer_config


class HandoverRefused(Exception):
    pass


def _group_consumer(settings: Settings) -> Consumer:
    conf = producer_config(settings.kafka)
    conf.update({"group.id": settings.kafka.group_id, "enable.auto.commit": False})
    return Consumer(conf)


def active_members(settings: Settings, timeout: float = 30.0) -> int:
    admin = AdminClient(producer_config(settings.kafka))
    group = settings.kafka.group_id
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=timeout)[group].result()
    except KafkaException as exc:
        err = exc.args[0] if exc.args else None
        if err is not None and getattr(err, "code", lambda: None)() is not None and "GROUP_ID_NOT_FOUND" in err.name():
            return 0
        raise HandoverRefused(f"cannot describe consumer group {group!r}: {exc}") from None
    if desc.state in (ConsumerGroupState.EMPTY, ConsumerGroupState.DEAD, ConsumerGroupState.UNKNOWN) \
            and not desc.members:
        return 0
    return max(1, len(desc.members))


def committed(settings: Settings, keys: list[str], timeout: float = 30.0) -> dict[str, int]:
    """Committed offsets of the connector's group on these partitions (absent: none committed)."""
    consumer = _group_consumer(settings)
    try:
        found = consumer.committed([TopicPartition(*split_key(k)) for k in keys], timeout=timeout)
    except KafkaException as exc:
        raise HandoverRefused(f"cannot read the committed offsets of {settings.kafka.group_id!r}: {exc}") from None
    finally:
        consumer.close()
    return {tp_key(tp.topic, tp.partition): tp.offset for tp in found if tp.offset >= 0}


def hand_over(settings: Settings, stop: dict[str, int]) -> str:
    """Commit ``stop`` as the group's offsets; returns what was done. Raises HandoverRefused."""
    group = settings.kafka.group_id
    members = active_members(settings)
    if members:
        raise HandoverRefused(f"consumer group {group!r} has {members} active member(s): stop the connector "
                              "(every replica) and run backfill again — it resumes at the hand-over")
    have = committed(settings, list(stop))
    if have == stop:
        return "already done"
    if have:
        other = {k: v for k, v in have.items() if stop.get(k) != v}
        raise HandoverRefused(f"consumer group {group!r} already has committed offsets ({_show(other)}): the stream "
                              "has run; moving them would skip or repeat records (use a new kafka.group_id, or "
                              "backfill only what the stream never read)")
    consumer = _group_consumer(settings)
    try:
        consumer.commit(offsets=[TopicPartition(*split_key(k), v) for k, v in stop.items()], asynchronous=False)
    except KafkaException as exc:
        raise HandoverRefused(f"committing the stop point to {group!r} failed: {exc}") from None
    finally:
        consumer.close()
    return "committed"


def _show(offsets: dict[str, Any]) -> str:
    items = sorted(offsets.items())
    text = ", ".join(f"{k}={v}" for k, v in items[:5])
    return text + (f" and {len(items) - 5} more" if len(items) > 5 else "")
