"""The scorer's work on one partition's batch of attributed messages, pure (no Kafka).

State keys: `c:<customer>` holds a customer's profile state (`engagement.new_state()`); the
stage's own bookkeeping (the offsets it has taken, `\\x00offset:...`) lives beside it, so no
customer id, whatever it is, can be read as, or overwrite, one of those. States stored under
the bare customer id by the previous version are moved when read. A state that cannot be
read is reported (`corrupt`: the stage dead-letters it) and the customer starts again.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import dataclass, field

from services.domain.attributed import AttributedMessage, customer_touches
from services.domain.engagement import apply, new_state, snapshot, upgraded
from services.domain.processing import CorruptState
from services.domain.weights import Weights

CUSTOMER = "c:"
REQUIRED = frozenset(new_state())


@dataclass
class Scored:
    profiles: list[dict] = field(default_factory=list)  # one snapshot per changed customer
    applied: int = 0
    duplicates: int = 0
    erased: list[str] = field(default_factory=list)
    corrupt: list[CorruptState] = field(default_factory=list)


def load_state(store: MutableMapping, customer: str, out: Scored) -> dict:
    key = CUSTOMER + customer
    state = store.get(key)
    if state is None:
        old = store.get(customer)  # the previous version's key: the bare id
        if isinstance(old, dict) and "score" in old and "recent" in old:
            state = old
            del store[customer]
    if state is None:
        return new_state()
    if isinstance(state, dict):
        upgraded(state)  # stored by an earlier version
    if not isinstance(state, dict) or not state.keys() >= REQUIRED:
        out.corrupt.append(CorruptState(key, state, "not a profile state: " + (
            f"missing {sorted(REQUIRED - state.keys())}" if isinstance(state, dict)
            else type(state).__name__)))
        return new_state()
    return state


def score_batch(store: MutableMapping, weights: Weights, batches: list[AttributedMessage],
                retention_ms: int | None = None) -> Scored:
    """Apply a partition's attributed touches; the changed customers' profiles. The ids of
    applied touches are kept for good, or `retention_ms` behind each customer's latest."""
    out = Scored()
    changed: dict[str, dict] = {}
    for batch in batches:
        for customer in batch.get("e", ()):
            changed.pop(customer, None)
            for key in (CUSTOMER + customer, customer):
                if isinstance(store.get(key), dict):
                    del store[key]
            out.erased.append(customer)
        for customer, touches in customer_touches(batch):
            state = changed.get(customer)
            if state is None:
                state = load_state(store, customer, out)
            for touch in touches:
                if apply(state, touch, weights, retention_ms):
                    out.applied += 1
                else:
                    out.duplicates += 1
            changed[customer] = state
    for customer, state in changed.items():
        store[CUSTOMER + customer] = state
        out.profiles.append(snapshot(state, customer, weights))
    return out


class EngagementScorer:
    """The scorer in the stages' one shape (services/domain/processing.py): a partition's
    attributed messages in, the changed profiles out. Customers are partitioned as the
    messages are, so one store serves every partition."""

    def __init__(self, store: MutableMapping, weights: Weights,
                 retention_ms: int | None = None) -> None:
        self.store, self.weights, self.retention_ms = store, weights, retention_ms

    def process(self, partition: int, inputs: list[AttributedMessage]) -> Scored:
        return score_batch(self.store, self.weights, inputs, self.retention_ms)
