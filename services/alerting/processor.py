"""Alerting's work on one partition's batch of attributed touches, pure (no Kafka).

Input: the sessionizer's attributed messages (`services.domain.attributed`). A customer's
state holds their carts (`cart`), their engagement, purchases and consent (`profile`, the
engagement state the scorer publishes: `services.domain.engagement`), their churn-risk state
(`churn`) and the touches not yet final (`unsettled`).

Carts are judged when the partition's event time passes their deadline plus the allowed
lateness. Touches are held until the partition's event time is more than the allowed lateness
past them, then applied to the profile and the churn rules in event-time order (a device's
history handed over at a login in the login's place: `touch.counts_at`; the sessionizer's
event time waits for it), with the churn deadlines (dormancy, silence, engagement drop) fired
in between at their exact event time. A
per-partition index of due times (rebuilt from the store after a restart) finds the customers
with something to decide.
"""

from __future__ import annotations

import hashlib
from collections.abc import MutableMapping
from dataclasses import dataclass, field

import orjson

from services.alerting import carts, churn, upgrade
from services.alerting.carts import CartRules, CartTouch
from services.alerting.churn import ChurnRules
from services.alerting.history import History
from services.common.schedule import Schedule
from services.domain import attributed, engagement
from services.domain.eventtime import NEVER
from services.domain.processing import CorruptState
from services.domain.touch import (
    AT,
    CART_EVENTS,
    CHANNEL,
    EVENT_ID,
    EVENT_TYPE,
    EXTRA,
    MOVED_AT,
    PURCHASE,
    cart_fields,
    counts_at,
)
from services.domain.weights import Weights

#: State keys: a customer's state under `c:<customer>`, the partition's event time under
#: `t:<partition>`, and the stage's offsets (`faust_stage`) under `\x00offset:...`: no
#: customer id can be read as, or overwrite, the stage's own bookkeeping.
CUSTOMER, STREAM_TIME = "c:", "t:"
CART_TYPES = CART_EVENTS | {PURCHASE}
CART, CHURN = "cart_abandonment", "churn_risk"


def cart_touch(touch: list) -> CartTouch | None:
    if touch[EVENT_TYPE] not in CART_TYPES:
        return None
    return CartTouch(touch[AT], touch[EVENT_ID], touch[EVENT_TYPE], touch[CHANNEL],
                     *cart_fields(touch[EXTRA] or {}),
                     touch[MOVED_AT] if len(touch) > MOVED_AT else None)


@dataclass
class Alerted:
    """What a batch gives: the alerts to emit, (customer, alert type, alert, profile
    snapshot) each; the customers decided again from all their touches, (customer, the
    earliest late touch's time, how far decisions had gone) each; the states that could not
    be read."""

    alerts: list[tuple[str, str, dict, dict]] = field(default_factory=list)
    replayed: list[tuple[str, int, int]] = field(default_factory=list)
    corrupt: list[CorruptState] = field(default_factory=list)


class AlertProcessor:
    def __init__(self, rules: CartRules, weights: Weights, store: MutableMapping,
                 churn_rules: ChurnRules | None = None) -> None:
        self.rules = rules
        self.churn_rules = churn_rules or ChurnRules()
        self.weights = weights
        self.store = store
        self._schedules: dict[int, Schedule] = {}

    def drop_index(self, partition: int) -> None:
        self._schedules.pop(partition, None)

    def pending(self) -> int:
        """Customers waiting for a decision (in the due-time indexes)."""
        return sum(map(len, self._schedules.values()))

    def stream_time(self, partition: int) -> int:
        return self.store.get(f"{STREAM_TIME}{partition}", NEVER)

    def due_at(self, state: dict) -> int | None:
        """The partition event time after which this customer has something to decide."""
        times = [carts.due_at(state["cart"], self.rules)]
        if state["decided"]:
            times.append(min(at for at, _ in state["decided"]) + self.rules.lateness_ms)
        if state["unsettled"]:
            times.append(min(map(counts_at, state["unsettled"])) + self.rules.lateness_ms)
        due = churn.due_at(state["churn"], state["profile"], self.churn_rules, self.weights)
        if due is not None:
            times.append(due + self.rules.lateness_ms)
        times = [t for t in times if t is not None]
        return min(times) if times else None

    def _schedule(self, partition: int) -> Schedule:
        schedule = self._schedules.get(partition)
        if schedule is None:  # first batch of this partition here: index the store
            schedule = Schedule()
            for key, state in list(self.store.items()):
                customer = _customer_of(key, state)
                if customer is None or not isinstance(state, dict) \
                        or state.get("p") != partition:
                    continue
                try:
                    due = self.due_at(upgrade.customer_state(json_copy(state)))
                except Exception:  # noqa: BLE001 - a state that cannot be read: at its next touch
                    continue
                if due is not None:
                    schedule.wake(due, customer)
            self._schedules[partition] = schedule
        return schedule

    def process(self, partition: int, inputs: list[dict], now: int | None = None
                ) -> Alerted:
        """What a partition's attributed messages (`inputs`) give: every alert to emit, with
        the customer's profile snapshot. `now`: the wall clock (epoch ms), when the
        correction horizon is measured from it too."""
        schedule = self._schedule(partition)
        before = self.store.get(f"{STREAM_TIME}{partition}", NEVER)
        stream_time = before
        states: dict[str, dict] = {}
        out = []
        result = Alerted()

        def state_of(customer: str) -> dict:
            if customer not in states:
                states[customer] = self._load(customer, partition, result.corrupt)
            return states[customer]

        history = History(self.store)
        replay: set[str] = set()  # customers with late touches: decided again from all
        for message in inputs:
            for customer in message.get("e", ()):  # kizuna erase: forget the customer
                states.pop(customer, None)
                replay.discard(customer)
                stored = self.store.get(CUSTOMER + customer)
                if isinstance(stored, dict):
                    history.erase(customer, stored)
                for key in (CUSTOMER + customer, customer):
                    if _customer_of(key, self.store.get(key)) == customer:
                        del self.store[key]
                out = [x for x in out if x[0] != customer]
            for customer, touches in attributed.customer_touches(message):
                state = state_of(customer)
                if "history" not in state and (state["profile"]["applied"] or state["unsettled"]):
                    untaken = _untaken(state, touches)  # no history kept (before 0.10)
                else:
                    untaken, replacing = history.take(customer, state, touches)
                    late = [counts_at(x) for x in untaken + replacing
                            if counts_at(x) <= state["settled"] or x in replacing]
                    if late or customer in replay:
                        if customer not in replay:  # in time, they would have come before
                            result.replayed.append((customer, min(late), state["settled"]))
                        replay.add(customer)
                        continue
                for touch in untaken:  # judged by the partition's event time (`_decide`)
                    ct = cart_touch(touch)
                    if ct is not None:
                        carts.add(state["cart"], ct, self.rules)
                self._hold(schedule, customer, state, untaken)
            stream_time = max(stream_time, message["t"])
        final = stream_time - self.rules.lateness_ms - 1  # nothing before it can still arrive
        # The correction horizon is measured from the partition's event time before this
        # batch (a batch that moves event time far ahead, a bulk import in time order, still
        # sends what it decides), or the wall clock when that is later.
        ref = before if now is None else max(before, now)
        for customer in sorted(replay):
            states[customer], found = self.replay(customer, states[customer], history,
                                                  stream_time, final, ref)
            out += found
            due = self.due_at(states[customer])
            if due is not None:
                schedule.wake(due, customer)
        while (customer := schedule.pop_due(stream_time)) is not None:
            if customer not in states and CUSTOMER + customer not in self.store \
                    and _customer_of(customer, self.store.get(customer)) is None:
                continue
            state = state_of(customer)
            out += self._emit(customer, state, self._decide(customer, state, stream_time,
                                                            final), ref)
            due = self.due_at(state)
            if due is not None and due >= stream_time:
                schedule.wake(due, customer)
        for customer, state in states.items():
            self.store[CUSTOMER + customer] = state
        history.flush()
        if stream_time != before:
            self.store[f"{STREAM_TIME}{partition}"] = stream_time
        result.alerts = out
        return result

    def replay(self, customer: str, state: dict, history: History, stream_time: int,
               final: int, ref: int) -> tuple[dict, list[tuple[str, str, dict, dict]]]:
        """Decide everything again from every touch the customer has, in event time, as if
        each had come in time; then reconcile with what was decided before: a new decision
        is sent if within the correction horizon of `ref` (else recorded as historical), a
        historical one that changed is recorded again, one that no longer stands withdrawn;
        a sent one is never sent again or moved: resolved when a purchase came after it, or
        resolved with the reason `late_purchase` / `late_correction` when it no longer
        stands."""
        touches = history.all(customer, state)
        again = upgrade.customer_state({"p": state["p"], "history": state["history"],
                          "recorded": state["recorded"]})
        for touch in touches:
            ct = cart_touch(touch)
            if ct is not None:
                carts.add(again["cart"], ct, self.rules)
        again["unsettled"] = touches
        decided = self._decide(customer, again, stream_time, final)
        return again, self._reconcile(customer, again, decided, ref)

    def _load(self, customer: str, partition: int, corrupt: list[CorruptState]) -> dict:
        """A customer's state: theirs, or one stored under the bare id by the previous
        version (moved), or a new one; one that cannot be read is reported in `corrupt`
        (the stage dead-letters it) and the customer starts again."""
        key = CUSTOMER + customer
        stored = self.store.get(key)
        if stored is None and _customer_of(customer, self.store.get(customer)) == customer:
            stored = self.store.get(customer)
            del self.store[customer]
        if stored is None:
            return upgrade.customer_state({"p": partition})
        try:
            if not isinstance(stored, dict):
                raise TypeError(f"a customer's state is an object, not {type(stored).__name__}")
            return upgrade.customer_state(stored)
        except Exception as exc:  # noqa: BLE001 - whatever it holds, the stage goes on
            corrupt.append(CorruptState(key, stored, f"{type(exc).__name__}: {exc}"))
            return upgrade.customer_state({"p": partition})

    def _hold(self, schedule: Schedule, customer: str, state: dict,
              touches: list[list]) -> None:
        if touches:
            state["unsettled"].extend(touches)
            schedule.wake(self.due_at(state), customer)

    def _with_snapshot(self, customer: str, state: dict, kind: str,
                       alerts: list[dict]) -> list[tuple[str, str, dict, dict]]:
        """The alerts with the customer's profile as it stands now, at their decision."""
        if not alerts:
            return []
        snap = engagement.snapshot(state["profile"], customer, self.weights)
        return [(customer, kind, alert, snap) for alert in alerts]

    def _decided(self, state: dict, alerts: list[dict]) -> None:
        """Queue cart alerts and resolutions until the profile can stand at their time."""
        state["decided"].extend([carts.decided_at(alert), alert] for alert in alerts)

    def _decide(self, customer: str, state: dict, stream_time: int, final: int
                ) -> list[tuple[str, str, dict, dict]]:
        """Everything due for this customer before `stream_time`, in event-time order: each
        cart judged at its deadline, and each cart alert or resolution sent with the profile
        holding exactly the touches up to its time (`carts.decided_at`), so an alert's score
        snapshot and recommended channel do not depend on batching or on when a device's
        history was claimed; then the rest of the touches.

        A cart from a device's history is judged at its deadline but stands for the login
        that claimed it, which can be later, so judging and sending are apart: alerts wait in
        `decided` until event time is past their time plus the allowed lateness. What is
        sent and what only recorded is `_emit`'s to say."""
        out: list[tuple[str, str, dict, dict]] = []
        lateness = self.rules.lateness_ms
        for _ in range(10_000):  # each round judges carts or sends alerts of one time
            judge = carts.due_at(state["cart"], self.rules)
            send = min((at for at, _ in state["decided"]), default=None)
            if send is not None and send + lateness < stream_time and (
                    judge is None or send + lateness <= judge):
                out += self._release(customer, state, send)
                ready = [alert for at, alert in state["decided"] if at == send]
                state["decided"] = [x for x in state["decided"] if x[0] != send]
                out += self._with_snapshot(customer, state, CART, ready)
            elif judge is not None and judge < stream_time:
                out += self._release(customer, state, judge - lateness)
                self._decided(state, carts.advance(state["cart"], customer, judge + 1,
                                                   self.rules))
            else:
                break
        out += self._release(customer, state, final)
        self._decided(state, carts.advance(state["cart"], customer, stream_time, self.rules))
        return out

    def _release(self, customer: str, state: dict, final: int
                 ) -> list[tuple[str, str, dict, dict]]:
        """Apply the customer's unsettled touches up to `final` in event-time order to the
        profile and the churn rules, firing churn deadlines that fall between them (each
        alert with the profile at its own decision). `settled` is how far that has gone: a
        touch at or before it that comes later is late (`replay`)."""
        rules, weights = self.churn_rules, self.weights
        prof, risk = state["profile"], state["churn"]
        unsettled = sorted(state["unsettled"], key=lambda x: (counts_at(x), x[EVENT_ID]))
        out: list[tuple[str, str, dict, dict]] = []
        i = 0
        due = churn.due_at(risk, prof, rules, weights)
        while True:
            touch = unsettled[i] if i < len(unsettled) \
                and counts_at(unsettled[i]) <= final else None
            if due is not None and due <= final and (touch is None or due < counts_at(touch)):
                found = churn.check(risk, prof, customer, due, rules, weights)
            elif touch is None:
                break
            else:
                i += 1
                found = churn.observe(risk, prof, touch, customer, rules, weights) \
                    if engagement.apply(prof, touch, weights) else []
            out += self._with_snapshot(customer, state, CHURN, found)
            due = churn.due_at(risk, prof, rules, weights)
        state["unsettled"] = unsettled[i:]
        state["settled"] = max(state["settled"], final)
        return out

    # -- what is sent, what only recorded ------------------------------------------------------

    def _emit(self, customer: str, state: dict, found: list[tuple[str, str, dict, dict]],
              ref: int) -> list[tuple[str, str, dict, dict]]:
        """The decisions to emit, as the customer's record of what was emitted (`recorded`)
        says: a new alert is sent if within the correction horizon of `ref`, else recorded
        as `historical` (and so is all that follows of it); one sent is never sent again or
        moved, only resolved; the same record twice is emitted once. Each gets the next
        version of its alert."""
        recorded = state["recorded"]
        out = []
        for item in found:
            _, kind, alert, snapshot = item
            have = recorded.get(alert["alert_id"])
            status = alert["status"]
            if have is None:
                # measured from when it became decidable: a cart from a device's history
                # claimed at a later login stands at the login, however batches fell
                decidable = max(alert["detected_at"], alert.get("moved_at") or 0)
                if status in carts.SENT and decidable < ref - self.rules.horizon_ms:
                    status = carts.HISTORICAL
            elif have["a"]["status"] in carts.SENT:
                if status != carts.RESOLVED or have["a"]["status"] == carts.RESOLVED:
                    continue  # sent: never again, never moved; only its resolution follows
            elif status in carts.SENT:
                status = carts.HISTORICAL  # never sent: what follows is recorded only
            alert = {**alert, "status": status}
            if kind == CART:
                alert["resolved"] = alert.get("resolved", False)
            fingerprint = self._fingerprint(customer, kind, alert, snapshot)
            if have is not None and fingerprint == have["f"]:
                continue
            version = alert.get("version") or (2 if "resolved_at" in alert else 1)
            alert["version"] = max(version, have["a"]["version"] + 1) if have else version
            recorded[alert["alert_id"]] = {"k": kind, "a": alert, "f": fingerprint}
            out.append((customer, kind, alert, snapshot))
        return out

    def _fingerprint(self, customer: str, kind: str, alert: dict, snapshot: dict) -> str:
        """What the alert's row shows (its record, but for the time it was emitted)."""
        record = alert_record(customer, alert, snapshot, 0, self.rules) if kind == CART \
            else churn_record(customer, alert, snapshot, 0)
        record["version"] = 0
        return hashlib.sha256(orjson.dumps(record, option=orjson.OPT_SORT_KEYS)).hexdigest()[:16]

    def _reconcile(self, customer: str, state: dict, decided: list[tuple[str, str, dict, dict]],
                   ref: int) -> list[tuple[str, str, dict, dict]]:
        """A replay's decisions against those emitted before (`replay`)."""
        by_id: dict[str, list] = {}
        for item in decided:
            by_id.setdefault(item[2]["alert_id"], []).append(item)
        recorded = state["recorded"]
        found = []
        for alert_id, items in by_id.items():
            # in full when new (sent: as it came in time), else where it stands now
            found += items if alert_id not in recorded else items[-1:]
        waiting = {alert["alert_id"] for _, alert in state["decided"]}
        snapshot = None
        for alert_id, have in list(recorded.items()):
            if alert_id in by_id or alert_id in waiting:
                continue
            alert = have["a"]
            if alert["status"] == carts.OPEN:  # sent, and the touches no longer give it
                bought = self._bought(state, have)
                alert = {**alert, "status": carts.RESOLVED,
                         "resolved_at": bought[0] if bought else alert["detected_at"],
                         "reasons": [*(alert["reasons"] if have["k"] == CHURN else []),
                                     "late_purchase" if bought else "late_correction"]}
                if have["k"] == CART:
                    alert.update(resolved=True, resolved_counts_at=bought[1] if bought
                                 else alert["detected_at"])
            elif alert["status"] == carts.HISTORICAL:  # recorded only: it no longer stands
                alert = {**alert, "status": carts.WITHDRAWN}
            else:
                continue
            if snapshot is None:
                snapshot = engagement.snapshot(state["profile"], customer, self.weights)
            found.append((customer, have["k"], alert, snapshot))
        return self._emit(customer, state, found, ref)

    @staticmethod
    def _bought(state: dict, have: dict) -> list | None:
        """The first purchase (time, counts_at) between what a sent alert counted from (a
        cart's first touch, a time-based churn reason's start) and its detection."""
        alert = have["a"]
        since = alert.get("start") if have["k"] == CART else alert.get("since")
        if since is None:
            return None
        return next(([p[0], p[1]] for p in state["cart"]["purchases"]
                     if since <= p[0] <= alert["detected_at"]), None)


def _customer_of(key: str, state: object) -> str | None:
    """The customer a state key holds, in this version's layout (`c:<id>`) or the previous
    one's (the bare id; a customer's state is the only dict with a partition there)."""
    if key.startswith(CUSTOMER):
        return key[len(CUSTOMER):]
    if isinstance(state, dict) and "p" in state and "cart" in state:
        return key
    return None


def json_copy(state: dict) -> dict:
    return orjson.loads(orjson.dumps(state))


def _untaken(state: dict, touches: list[list]) -> list[list]:
    """The touches this customer's state has not taken yet: a batch of the sessionizer redone
    after a crash, or a touchpoint delivered twice, sends some again. Applied ones are in the
    profile (`engagement.applied_already`), held ones in `unsettled`."""
    profile = state["profile"]
    taken = {touch[EVENT_ID] for touch in state["unsettled"]}
    untaken = []
    for touch in touches:
        if touch[EVENT_ID] not in taken and not engagement.applied_already(
                profile, touch[EVENT_ID]):
            taken.add(touch[EVENT_ID])
            untaken.append(touch)
    return untaken


def alert_record(customer: str, alert: dict, snapshot: dict, emitted_at: int,
                 rules: CartRules) -> dict:
    """The Alert (schemas/alert.avsc) of a cart decision: an alert, its resolution, or one
    recorded as historical or withdrawn (`carts.advance`)."""
    value = alert["value"]
    return {
        "alert_id": alert["alert_id"], "alert_type": CART, "status": alert["status"],
        "customer_id": customer, "anonymous_id": None,
        "detected_at": alert["detected_at"], "emitted_at": emitted_at,
        "reasons": [f"cart_inactive_{rules.delay_ms // 60_000}m", *alert.get("reasons", ())],
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
        "recommended_action": "none" if alert["resolved"] else "cart_reminder",
        "version": alert["version"],
    }


def churn_record(customer: str, alert: dict, snapshot: dict, emitted_at: int) -> dict:
    """The Alert (schemas/alert.avsc) of a churn-risk alert or its resolution (a historical
    one stays historical when resolved)."""
    resolved = "resolved_at" in alert
    return {
        "alert_id": alert["alert_id"], "alert_type": CHURN, "status": alert["status"],
        "customer_id": customer, "anonymous_id": None, "detected_at": alert["detected_at"],
        "emitted_at": emitted_at, "reasons": alert["reasons"], "severity": alert["severity"],
        "evidence_event_ids": alert["evidence"], "cart": None,
        "score_snapshot": alert["score"],
        "recommended_channel": snapshot["preferred_channel"],
        "recommended_action": "none" if resolved else alert["action"],
        "version": alert.get("version") or (2 if resolved else 1),
    }


def published(record: dict) -> bool:
    """Whether an alert record goes out on the public alert topics; historical and withdrawn
    decisions are recorded for analysts only (`topics.ALERTS_HISTORY`)."""
    return record["status"] in carts.SENT
