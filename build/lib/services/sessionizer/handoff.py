"""The handoff topic's messages: what one sessionizer partition tells another (JSON, keyed
by the profile whose partition must hear it). `kind` tells them apart:

- `link`: to a device's partition: a touch with both ids linked it to a customer at `event_time`;
- `transfer` (`transfer_part` for all but the last piece of a long history): to the
  customer's partition: the device's runs its login claims, and its live sessions (`emitted`);
- `forward`: a linked device's later touch, to its customer;
- `forget`: to a device's partition: the customer was erased, forget the link;
- `time`: a partition's event time, announced to every partition after its handoffs.
"""

from __future__ import annotations

from typing import Literal, TypedDict


class Link(TypedDict):
    kind: Literal["link"]
    anonymous_id: str
    customer_id: str
    event_id: str
    event_time: int


class Transfer(TypedDict):
    kind: Literal["transfer", "transfer_part"]
    customer_id: str
    anonymous_id: str
    at: int  # the login's event time
    runs: list[list[list]]
    emitted: dict[str, list]


class Forward(TypedDict):
    kind: Literal["forward"]
    customer_id: str
    touch: list


class Forget(TypedDict):
    kind: Literal["forget"]
    anonymous_id: str
    customer_id: str


class Time(TypedDict):
    kind: Literal["time"]
    partition: int
    t: int


HandoffMessage = Link | Transfer | Forward | Forget | Time


def link(device: str, customer: str, event_id: str, event_time: int) -> Link:
    return {"kind": "link", "anonymous_id": device, "customer_id": customer,
            "event_id": event_id, "event_time": event_time}


def transfer(customer: str, device: str, at: int, runs: list | None = None,
             emitted: dict | None = None, last: bool = True) -> Transfer:
    """A device's state for its customer, linked at event time `at`; empty when the device
    has nothing to give. `last=False`: one piece of a long history, more follow."""
    return {"kind": "transfer" if last else "transfer_part", "customer_id": customer,
            "anonymous_id": device, "at": at, "runs": runs or [], "emitted": emitted or {}}


def forward(customer: str, touch: list) -> Forward:
    return {"kind": "forward", "customer_id": customer, "touch": touch}


def forget(device: str, customer: str) -> Forget:
    return {"kind": "forget", "anonymous_id": device, "customer_id": customer}


def time(partition: int, stream_time: int) -> Time:
    """The handoff that announces `partition`'s event time to another partition."""
    return {"kind": "time", "partition": partition, "t": stream_time}
