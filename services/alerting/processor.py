"""Alerting's work on one partition's batch of attributed touches, pure (no Kafka).

Input: the sessionizer's attributed messages `{"t": partition event time, "c": {customer:
touches}}`. A customer's state holds their carts (`carts`) and the consent and engagement
that choose the channel (`profile`, the scorer's own functions). Carts are judged when the
partition's event time passes their deadline plus the allowed lateness, through a per
partition index of due times (rebuilt from the store after a restart).
"""

from __future__ import annotations

import heapq
from collections.abc import MutableMapping

from services.alerting import carts
from services.alerting.carts import CartRules, CartTouch
from services.engagement_scorer import profile
from services.engagement_scorer.weights import Weights
from services.sessionizer.sessions import CHANNEL, EVENT_ID, EVENT_TYPE, EXTRA, T

STREAM_TIME = "t:"
NEVER = -(2**62)
CART_TYPES = carts.CART_ACTIVITY | {"cart_remove", "purchase"}


def cart_touch(touch: list) -> CartTouch | None:
    if touch[EVENT_TYPE] not in CART_TYPES:
        return None
    extra = touch[EXTRA] or {}
    return CartTouch(touch[T], touch[EVENT_ID], touch[EVENT_TYPE], touch[CHANNEL],
                     extra.get("cart"), extra.get("product"), extra.get("qty"),
                     extra.get("price"), extra.get("currency"))


class AlertProcessor:
    def __init__(self, rules: CartRules, weights: Weights, store: MutableMapping) -> None:
        self.rules = rules
        self.weights = weights
        self.store = store
        self._heaps: dict[int, list[tuple[int, str]]] = {}

    def forget_partition(self, partition: int) -> None:
        self._heaps.pop(partition, None)

    def _heap(self, partition: int) -> list[tuple[int, str]]:
        heap = self._heaps.get(partition)
        if heap is None:  # first batch of this partition here: index the store
            heap = []
            for key, state in list(self.store.items()):
                if not key.startswith(STREAM_TIME) and state.get("p") == partition:
                    due = carts.due_at(state["cart"], self.rules)
                    if due is not None:
                        heap.append((due, key))
            heapq.heapify(heap)
            self._heaps[partition] = heap
        return heap

    def process(self, partition: int, messages: list[dict]) -> list[tuple[str, dict, dict]]:
        """(customer, cart alert record, profile snapshot) for every alert to emit."""
        heap = self._heap(partition)
        before = self.store.get(f"{STREAM_TIME}{partition}", NEVER)
        stream_time = before
        states: dict[str, dict] = {}
        out = []

        def state_of(customer: str) -> dict:
            if customer not in states:
                states[customer] = self.store.get(customer) or {
                    "p": partition, "cart": carts.new_state(), "profile": profile.new_state()}
            return states[customer]

        for message in messages:
            for customer, touches in message["c"].items():
                state = state_of(customer)
                # The customer's own time, not the partition's: a device's history moved here
                # at login is days old, and each of its carts must be judged with its own
                # later touches (its purchase) already added. Nothing that could still save a
                # cart lags the customer's latest touch by more than the allowed lateness.
                now = NEVER
                for touch in sorted(touches, key=lambda x: (x[T], x[EVENT_ID])):
                    now = max(now, touch[T])
                    profile.apply(state["profile"], touch, self.weights)
                    ct = cart_touch(touch)
                    if ct is not None:
                        out += [(customer, a) for a in
                                carts.add(state["cart"], customer, ct, now, self.rules)]
                due = carts.due_at(state["cart"], self.rules)
                if due is not None:
                    heapq.heappush(heap, (due, customer))
            stream_time = max(stream_time, message["t"])
        while heap and heap[0][0] < stream_time:
            _, customer = heapq.heappop(heap)
            state = state_of(customer) if customer in states or customer in self.store else None
            if state is None:
                continue
            out += [(customer, a) for a in
                    carts.advance(state["cart"], customer, stream_time, self.rules)]
            due = carts.due_at(state["cart"], self.rules)
            if due is not None and due >= stream_time:
                heapq.heappush(heap, (due, customer))
        for customer, state in states.items():
            self.store[customer] = state
        if stream_time != before:
            self.store[f"{STREAM_TIME}{partition}"] = stream_time
        return [(customer, alert, profile.snapshot(states[customer]["profile"], customer,
                                                   self.weights))
                for customer, alert in out]


def alert_record(customer: str, alert: dict, snapshot: dict, emitted_at: int,
                 rules: CartRules) -> dict:
    """The Alert (schemas/alert.avsc) of a cart alert or its resolution."""
    value = alert["value"]
    resolved = alert["status"] == "resolved"
    return {
        "alert_id": alert["alert_id"], "alert_type": "cart_abandonment",
        "status": alert["status"], "customer_id": customer, "anonymous_id": None,
        "detected_at": alert["detected_at"], "emitted_at": emitted_at,
        "reasons": [f"cart_inactive_{rules.delay_ms // 60_000}m"]
        + (["purchased_after_alert"] if resolved else []),
        "severity": 3 if value >= 200 else 2 if value >= 50 else 1,
        "evidence_event_ids": alert["evidence"],
        "cart": {"cart_id": alert["cart_id"],
                 "items": [{"product_id": p, "quantity": q, "unit_price": price}
                           for p, q, price in alert["items"]],
                 "value": value, "currency": alert["currency"]},
        "score_snapshot": snapshot["engagement_score"],
        # The channel the customer engages on most and most recently, among those they can
        # still be reached on: never email after an unsubscribe.
        "recommended_channel": snapshot["preferred_channel"],
        "recommended_action": "none" if resolved else "cart_reminder",
        "version": 2 if resolved else 1,
    }
