"""The sessionizer processor's inputs (what the stage decodes from Kafka) and outputs (what
it produces), pure data."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

from services.domain.eventtime import NEVER
from services.domain.processing import CorruptState


@dataclass(frozen=True)
class Touchpoint:
    record: dict  # schemas/touchpoint.avsc, event_time as epoch ms
    payload: bytes | None = None  # its own raw Kafka value (None inside a batch message)
    origin: tuple[str, int, int] | None = None  # topic, partition, offset


@dataclass(frozen=True)
class Watermark:
    time: int


@dataclass(frozen=True)
class Erase:
    customer_id: str


@dataclass(frozen=True)
class Handoff:
    message: dict


@dataclass
class DeadLetter:
    reason: str
    detail: str
    payload: bytes | None  # None: the touchpoint came in a batch; `record` is what to keep
    origin: tuple[str, int, int] | None
    record: dict | None = None


@dataclass
class Outputs:
    sessions: list[dict] = field(default_factory=list)
    handoffs: list[tuple[str, dict]] = field(default_factory=list)  # (profile key, message)
    #: Touches that belong to a customer, on time or moved by an identity link, for the
    #: scorer and alerting (at-least-once: they deduplicate).
    attributed: dict[str, list[list]] = field(default_factory=dict)
    #: Touches that came behind the allowed lateness and corrected their sessions:
    #: (channel, how far behind the partition's event time in ms), for the metrics.
    late: list[tuple[str, int]] = field(default_factory=list)
    #: The partition's event time after the batch, when the batch moved it (else None): to
    #: be announced to every partition (`handoff.time`) after the batch's handoffs.
    stream_time: int | None = None
    #: The output time after the batch, when the batch changed it (else None).
    output_time: int | None = None
    #: The output time before the batch: the one its attributed messages carry but the last.
    held_time: int = NEVER
    dead_letters: list[DeadLetter] = field(default_factory=list)
    #: States that could not be read (the profile started again from a fresh one).
    corrupt: list[CorruptState] = field(default_factory=list)
    counts: Counter = field(default_factory=Counter)
    #: Customers erased (`kizuna erase`): the next stages forget them too.
    erased: list[str] = field(default_factory=list)


def json_payload(message: dict) -> bytes:
    """A handoff or a state as a dead letter's payload."""
    return json.dumps(message, sort_keys=True, default=repr).encode()
