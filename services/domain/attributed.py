"""The attributed message: the sessionizer's output to the engagement scorer and alerting.

On the internal topic `sessionizer.attributed`, one JSON object per message, partitioned as
the customers are (so a customer's touches always reach the same scorer and alerting
partition):

    {"t": output time, "c": {customer_id: [touch, ...]}, "e": [customer_id, ...]}

- `t`: the partition's output time (epoch ms): event time the next stages may judge up to;
  every message carries it, so their timers move even without touches. Of one batch's
  messages, only the last carries the batch's new time (`encode`);
- `c`: touches attributed to customers, on time, late, or moved by an identity link
  (`services.domain.touch`), at least once (the stages deduplicate by event id);
- `e`: customers erased (`kizuna erase`), to forget before anything that follows;
- `l`: touches an earlier sessionizer (before 0.6) found too late for sessions; read as `c`.

The keys are one letter because every message carries them; `AttributedMessage` names them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypedDict

import orjson

from services.domain.touch import EVENT_ID

#: Touches per message at most, about a few hundred KB: well under Kafka's default 1 MB
#: message limit. A customer's touches stay in one message.
MESSAGE_TOUCHES = 2000


class AttributedMessage(TypedDict, total=False):
    t: int  # output time
    c: dict[str, list[list]]  # customer -> touches
    e: list[str]  # customers erased
    l: dict[str, list[list]]  # noqa: E741 - customer -> touches, from before 0.6


def encode(output_time: int, touches: dict[str, list[list]], erased: list[str] | None = None,
           limit: int = MESSAGE_TOUCHES, held: int | None = None) -> Iterator[bytes]:
    """The messages of one partition's batch, in order: the erasures first (the next stages
    forget those customers before anything that follows), then the touches in messages of
    about `limit` touches; one message with no touches when there are none (it moves time).

    Only the last message carries the batch's `output_time`; the ones before carry `held`
    (the output time before the batch). A next stage may read the first messages of a batch
    in one poll and the rest in the next: had they carried the new time, it would have
    judged up to it before the rest of the batch's touches came, and found them late."""
    held = output_time if held is None else min(held, output_time)
    parts: list[tuple[dict, list | None]] = []
    if erased:
        parts.append(({}, erased))
    chunk: dict[str, list] = {}
    size = 0
    for customer, theirs in touches.items():
        if chunk and size + len(theirs) > limit:
            parts.append((chunk, None))
            chunk, size = {}, 0
        chunk[customer] = theirs
        size += len(theirs)
    if chunk or not touches:
        parts.append((chunk, None))
    for i, (chunk, gone) in enumerate(parts):
        message: dict = {"t": output_time if i == len(parts) - 1 else held, "c": chunk}
        if gone is not None:
            message["e"] = gone
        yield orjson.dumps(message)


def customer_touches(message: AttributedMessage) -> Iterator[tuple[str, list[list]]]:
    """(customer, touches) of a message, its current and its pre-0.6 part."""
    yield from message["c"].items()
    if "l" in message:
        yield from message["l"].items()


def units(value: bytes | None) -> list:
    """A message as one unit per customer, each carrying the message's time, so a
    customer's touches that a stage cannot take are dead-lettered alone. Bytes that are not
    such a message stay whole (the stage raises on them, and they are dead-lettered)."""
    try:
        message = orjson.loads(value)
        t = message["t"]
        out: list[AttributedMessage] = [{"t": t, "c": {}, "e": message["e"]}] \
            if message.get("e") else []
        out += [{"t": t, "c": {customer: touches}}
                for customer, touches in message.get("c", {}).items()]
        out += [{"t": t, "c": {}, "l": {customer: touches}}
                for customer, touches in message.get("l", {}).items()]
        return out or [{"t": t, "c": {}}]
    except (ValueError, TypeError, KeyError, AttributeError):
        return [value]


def unit_payload(unit: object, value: bytes | None) -> bytes:
    """What a dead-lettered unit keeps: that customer's part of the message."""
    return orjson.dumps(unit) if isinstance(unit, dict) else (value or b"")


def event_ids(messages: list[AttributedMessage]) -> Iterator[str]:
    """Every touch's event id (fault injection matches on them)."""
    for message in messages:
        for _, touches in customer_touches(message):
            for touch in touches:
                yield touch[EVENT_ID]
