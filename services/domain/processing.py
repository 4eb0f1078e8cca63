"""The one shape of a stage's pure logic, whatever the stage: a processor takes one
partition's inputs in order and returns what they gave, as a typed result.

    outputs = processor.process(partition, inputs)

Each stage's result says what to produce (sessions, profiles, alerts...) and carries, in the
same field everywhere, the states it could not read (`corrupt`): the stage's adapter sends
each to the dead-letter topic by one route (`faust_stage.corrupt_state`) and the processor
has already started that key again from a new state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class CorruptState:
    """A stored state that could not be read: its key, what was stored, and why."""

    key: str
    stored: object
    why: str


class Outputs(Protocol):
    corrupt: list[CorruptState]


@runtime_checkable
class Processor(Protocol):
    def process(self, partition: int, inputs: list) -> Outputs:
        """What one partition's `inputs`, taken in order, give."""
        ...
