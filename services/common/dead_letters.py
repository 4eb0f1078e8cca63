"""The dead-letter records a stage writes (schemas/dead_letter.avsc): a record it could not
process, a state it could not read."""

from __future__ import annotations

import hashlib
import logging
import time

import orjson

from services.common.stage_metrics import POISON
from services.domain.processing import CorruptState

log = logging.getLogger("kizuna.stage")


def dead_letter(stage: str, reason: str, detail: str, payload: bytes,
                origin: tuple[str, int, int] | None) -> dict:
    """A DeadLetter record (schemas/dead_letter.avsc) of a stage; its id is derived from the
    stage, the reason and the payload, so a record dead-lettered twice is one row."""
    digest = hashlib.sha256(f"{stage}\0{reason}\0".encode() + payload).hexdigest()
    topic, partition, offset = origin or (None, None, None)
    return {
        "dead_letter_id": digest[:32], "reason": reason, "detail": detail[:2000],
        "stage": stage, "source": None, "payload": payload,
        "received_at": int(time.time() * 1000), "origin_topic": topic,
        "origin_partition": partition, "origin_offset": offset,
    }


def state_corrupt(stage: str, corrupt: CorruptState) -> dict:
    """The dead letter of a state that cannot be read (every stage's processor reports them
    the same way): reason `state_corrupt`, the state as stored in the payload. The processor
    went on with a new one for that key."""
    POISON.labels(stage, "state_corrupt").inc()
    log.error("%s: state %r could not be read, dead-lettered and started again: %s", stage,
              corrupt.key, corrupt.why)
    try:
        payload = orjson.dumps({"key": corrupt.key, "state": corrupt.stored},
                               option=orjson.OPT_SORT_KEYS)
    except TypeError:
        payload = repr(corrupt.stored).encode()
    return dead_letter(stage, "state_corrupt", f"state {corrupt.key!r}: {corrupt.why}", payload,
                       None)
