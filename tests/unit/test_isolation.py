"""No input can stop a stage: poison records are isolated, and user ids never collide with a
stage's bookkeeping (pure: each stage's logic, the transaction of `faust_stage`, no Kafka)."""

from __future__ import annotations

import copy

import pytest

from services.common import isolation
from services.common.stage_state import BatchStore

T0 = 1_710_000_000_000
MIN = 60_000
HOSTILE = ["t:0", "c:x", "a:dev", "l:0", "w:1", "s:x:19000", "r:c:x:19000", "\x00offset:1",
           "\x00offset:kizuna.sessionizer.attributed:0", "p"]


class Txn:
    """A stage's transaction over a dict state and a list of outputs, as `faust_stage`
    runs it (`BatchStore`, and outputs held until commit)."""

    def __init__(self, store: dict) -> None:
        self.store = BatchStore(store, copy_reads=True)
        self.outputs: list = []
        self.held: list | None = None
        self.rolled_back = 0

    def begin(self) -> None:
        self.store.begin()
        self.held = []

    def commit(self) -> None:
        self.outputs += self.held or []
        self.held = None
        self.store.commit()

    def rollback(self) -> None:
        self.held = None
        self.store.rollback()
        self.rolled_back += 1

    def emit(self, items: list) -> None:
        self.held.extend(items)


# -- the isolation itself -------------------------------------------------------------------

def counter_stage(poison: set[int], flaky: set[int] | None = None):
    """A stage that sums what it takes into its state and emits each value; raises on the
    values in `poison` every time, on those in `flaky` once."""
    txn = Txn({})
    flaky = set(flaky or ())

    def attempt(values: list[int]) -> None:
        total = txn.store.get("total", 0)
        for v in values:
            if v in poison:
                raise ValueError(f"cannot take {v}")
            if v in flaky:
                flaky.discard(v)
                raise ConnectionError("a hiccup")
            total += v
            txn.emit([v])
        txn.store["total"] = total

    return txn, attempt


def test_a_poison_record_is_isolated_and_the_rest_is_taken_once_in_order() -> None:
    txn, attempt = counter_stage(poison={6})
    bad = []
    n = isolation.process(list(range(10)), attempt, txn, lambda r, f: bad.append((r, f)))
    assert n == 1 and [r for r, _ in bad] == [6]
    assert bad[0][1].kind == "ValueError" and "cannot take 6" in bad[0][1].describe()
    assert txn.outputs == [0, 1, 2, 3, 4, 5, 7, 8, 9]  # once each, in order
    assert txn.store.inner["total"] == sum(range(10)) - 6


def test_a_fault_that_does_not_come_back_dead_letters_nothing() -> None:
    txn, attempt = counter_stage(poison=set(), flaky={3})
    bad = []
    assert isolation.process(list(range(10)), attempt, txn, lambda r, f: bad.append(r)) == 0
    assert bad == [] and txn.outputs == list(range(10)) and txn.rolled_back == 1


def test_a_stage_that_fails_on_everything_stops_instead_of_dead_lettering() -> None:
    txn, attempt = counter_stage(poison=set(range(20)))
    with pytest.raises(isolation.SystemicFailure):
        isolation.process(list(range(20)), attempt, txn, lambda r, f: None)
    assert txn.outputs == [] and "total" not in txn.store.inner


def test_the_batch_store_lands_a_batch_together_or_not_at_all() -> None:
    inner = {"a": {"n": 1}, "b": 2}
    store = BatchStore(inner, copy_reads=True)
    store.begin()
    store.get("a")["n"] = 99  # a stage changes the state it read in place
    store["c"] = 3
    del store["b"]
    assert "b" not in store and store["c"] == 3 and sorted(store) == ["a", "c"]
    store.rollback()
    assert inner == {"a": {"n": 1}, "b": 2}
    store.begin()
    store.get("a")["n"] = 5
    store["a"] = store["a"]
    store.commit()
    assert inner == {"a": {"n": 5}, "b": 2}


# -- each stage: a record that raises is dead-lettered, the others come out unchanged --------

def raising_on(module, name: str, event_id: str, index: int):
    """Wrap module.name so that it raises for the touch (list) or record whose event id is
    `event_id`: a fault of the stage's logic on one record."""
    original = getattr(module, name)

    def wrapped(*args, **kwargs):
        for arg in args:
            if isinstance(arg, list) and len(arg) > index and arg[index] == event_id:
                raise RuntimeError(f"{name} cannot take {event_id}")
            if isinstance(arg, dict) and arg.get("event_id") == event_id:
                raise RuntimeError(f"{name} cannot take {event_id}")
        return original(*args, **kwargs)

    return wrapped


def sessionizer_run(records: list[dict], poison: str | None, monkeypatch) -> tuple:
    from services.sessionizer import processor as sp
    from services.sessionizer.processor import PartitionProcessor, Touchpoint, Watermark
    from services.sessionizer.sessions import SessionRules

    if poison:
        monkeypatch.setattr(sp, "touch_of", raising_on(sp, "touch_of", poison, 1))
    txn = Txn({})
    proc = PartitionProcessor(SessionRules(), txn.store, 1)

    def attempt(items: list) -> None:
        out = proc.process(0, items)
        txn.emit([(r["session_id"], r["version"], r["event_count"]) for r in out.sessions])
        txn.emit([("attributed", c, x[1]) for c, xs in out.attributed.items() for x in xs])

    bad = []
    units = [Touchpoint(r) for r in records] + [Watermark(T0 + 3 * 24 * 60 * MIN)]
    original_rollback = txn.rollback

    def rollback() -> None:  # the stage forgets its indexes over the state (`on_revoked`)
        original_rollback()
        proc.drop_index(0)

    txn.rollback = rollback
    isolation.process(units, attempt, txn, lambda u, f: bad.append(u.record["event_id"]))
    return txn.outputs, bad


def touchpoints(poison: str) -> list[dict]:
    out = []
    for i in range(12):
        out.append({"event_id": poison if i == 5 else f"e{i}", "event_type": "page_view",
                    "channel": "web", "event_time": T0 + i * 7 * MIN,
                    "customer_id": f"C{i % 2}", "anonymous_id": None, "commerce": None})
    return out


def test_the_sessionizer_dead_letters_a_record_its_logic_cannot_take(monkeypatch) -> None:
    records = touchpoints("poison")
    outputs, bad = sessionizer_run(records, "poison", monkeypatch)
    assert bad == ["poison"]
    monkeypatch.undo()
    without, _ = sessionizer_run([r for r in records if r["event_id"] != "poison"], None,
                                 monkeypatch)

    def results(out: list) -> tuple:
        """What ClickHouse shows: each session's latest version, and the touches scored."""
        latest: dict = {}
        for sid, version, count in (x for x in out if x[0] != "attributed"):
            latest[sid] = max(latest.get(sid, (0, 0)), (version, count))
        return latest, sorted(x for x in out if x[0] == "attributed")

    assert results(outputs) == results(without) and results(without)[0]


def scorer_run(messages: list[dict], poison: str | None, monkeypatch) -> tuple:
    from services.common.weights_file import load_weights
    from services.engagement_scorer import batch as sb

    if poison:
        monkeypatch.setattr(sb, "apply", raising_on(sb, "apply", poison, 1))
    txn, weights, bad = Txn({}), load_weights(), []

    def attempt(part: list[dict]) -> None:
        txn.emit(sb.score_batch(txn.store, weights, copy.deepcopy(part)).profiles)

    isolation.process(messages, attempt, txn, lambda m, f: bad.append(m))
    return txn.outputs, txn.store.inner, bad


def attributed(poison: str) -> list[dict]:
    return [{"t": T0 + i * MIN, "c": {f"C{i % 3}": [[T0 + i * MIN, poison if i == 4 else f"e{i}",
                                                     "purchase", "web", 10.0, None, None]]}}
            for i in range(9)]


def test_the_scorer_dead_letters_a_message_its_logic_cannot_take(monkeypatch) -> None:
    messages = attributed("poison")
    outputs, state, bad = scorer_run(messages, "poison", monkeypatch)
    assert bad == [messages[4]]
    monkeypatch.undo()
    _, without, _ = scorer_run(messages[:4] + messages[5:], None, monkeypatch)
    assert state == without and outputs


def alerting_run(messages: list[dict], poison: str | None, monkeypatch) -> tuple:
    from services.alerting import processor as ap
    from services.alerting.carts import CartRules
    from services.common.weights_file import load_weights

    if poison:
        monkeypatch.setattr(ap, "cart_touch", raising_on(ap, "cart_touch", poison, 1))
    txn, bad = Txn({}), []
    proc = ap.AlertProcessor(CartRules(), load_weights(), txn.store)

    def attempt(part: list[dict]) -> None:
        txn.emit([(c, kind, a["alert_id"], a["status"]) for c, kind, a, _ in proc.process(
            0, copy.deepcopy(part)).alerts])

    original_rollback = txn.rollback

    def rollback() -> None:
        original_rollback()
        proc.drop_index(0)

    txn.rollback = rollback
    isolation.process(messages, attempt, txn, lambda m, f: bad.append(m))
    return txn.outputs, bad


def carts(poison: str) -> list[dict]:
    out = []
    for i in range(8):
        touch = [T0 + i * 3 * 60 * MIN, poison if i == 3 else f"e{i}", "cart_add", "web", 0.0,
                 None, {"cart": f"K{i}", "product": "P1", "qty": 1, "price": 9.0}]
        out.append({"t": T0 + i * 3 * 60 * MIN, "c": {f"C{i % 2}": [touch]}})
    out.append({"t": T0 + 30 * 60 * MIN, "c": {}})
    return out


def test_alerting_dead_letters_a_message_its_logic_cannot_take(monkeypatch) -> None:
    messages = carts("poison")
    outputs, bad = alerting_run(messages, "poison", monkeypatch)
    assert bad == [messages[3]]
    monkeypatch.undo()
    without, _ = alerting_run(messages[:3] + messages[4:], None, monkeypatch)
    assert outputs == without and len(without) >= 2


# -- user ids cannot be read as, or overwrite, bookkeeping ----------------------------------

def test_hostile_customer_ids_get_their_own_profile_sessions_and_cart_alert() -> None:
    from services.alerting.carts import CartRules
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights
    from services.engagement_scorer.batch import score_batch
    from services.sessionizer.processor import PartitionProcessor, Touchpoint
    from services.sessionizer.sessions import SessionRules

    def touch(customer: str, i: int, kind: str, extra: dict | None = None) -> dict:
        return {"event_id": f"{customer}|{i}", "event_type": kind, "channel": "web",
                "event_time": T0 + i * MIN, "customer_id": customer, "anonymous_id": None,
                "commerce": {"value": 20.0} if kind == "purchase" else extra}

    records = []
    for customer in HOSTILE:
        records += [touch(customer, 0, "purchase"),
                    touch(customer, 5, "cart_add", {"cart_id": "K", "product_id": "P",
                                                    "quantity": 1, "unit_price": 5.0})]
    records.sort(key=lambda r: (r["event_time"], r["event_id"]))
    from tests.unit.test_sessionizer import Pipeline
    pipeline = Pipeline(partitions=4).send(*records).close_all()
    assert not pipeline.dead_letters
    assert {r["customer_id"] for r in pipeline.table().values() if r["status"] == "closed"} \
        == set(HOSTILE)
    assert len(pipeline.table()) == len(HOSTILE)  # one session each

    first = PartitionProcessor(SessionRules(), {}, 1).process(
        0, [Touchpoint(r) for r in records])
    message = {"t": T0 + 3 * 60 * MIN, "c": first.attributed}
    weights = load_weights()
    scorer_store: dict = {}
    scored = score_batch(scorer_store, weights, [message])
    scored = score_batch(scorer_store, weights, [message])  # again: all duplicates
    assert {p["customer_id"]: p["purchase_count"] for p in scored.profiles} == {
        c: 1 for c in HOSTILE}
    assert scored.duplicates == 2 * len(HOSTILE) and not scored.corrupt

    alert_store: dict = {}
    alerting = AlertProcessor(CartRules(), weights, alert_store)
    first = alerting.process(0, [message])
    later = alerting.process(0, [{"t": T0 + 5 * 60 * MIN, "c": {}}])
    out = first.alerts + later.alerts
    assert sorted(c for c, kind, a, _ in out if kind == "cart_abandonment") == sorted(HOSTILE)
    assert alert_store["t:0"] == T0 + 5 * 60 * MIN and not first.corrupt + later.corrupt


def test_every_stage_reports_a_state_it_cannot_read_the_same_way_and_starts_again() -> None:
    """The three processors through their one interface (services/domain/processing.py):
    `process(partition, inputs)`, with the unreadable state in `.corrupt` of the result."""
    from services.alerting.carts import CartRules
    from services.alerting.processor import AlertProcessor
    from services.common.weights_file import load_weights
    from services.domain.processing import CorruptState, Processor
    from services.engagement_scorer.batch import EngagementScorer
    from services.sessionizer.processor import PartitionProcessor, Touchpoint
    from services.sessionizer.sessions import SessionRules

    weights = load_weights()
    buy = [T0, "e1", "purchase", "web", 10.0, None, None]
    touch = Touchpoint({"event_id": "e1", "event_type": "purchase", "channel": "web",
                        "event_time": T0, "customer_id": "C1", "anonymous_id": None,
                        "commerce": {"value": 10.0}})
    stages = [
        (PartitionProcessor(SessionRules(), {"c:C1": "garbage"}, 1), [touch],
         lambda out: out.attributed == {"C1": [buy]}),
        (EngagementScorer({"c:C1": {"score": "garbage"}}, weights),
         [{"t": T0, "c": {"C1": [buy]}}], lambda out: out.profiles[0]["purchase_count"] == 1),
        (AlertProcessor(CartRules(), weights, alert_store := {"c:C1": [1, 2, 3]}),
         [{"t": T0, "c": {"C1": [buy]}}],
         lambda out: out.alerts == [] and alert_store["c:C1"]["unsettled"][0][:2] == buy[:2]),
    ]
    for processor, inputs, went_on in stages:
        assert isinstance(processor, Processor)
        out = processor.process(0, inputs)
        assert [type(c) for c in out.corrupt] == [CorruptState], processor
        assert [c.key for c in out.corrupt] == ["c:C1"] and out.corrupt[0].why
        assert went_on(out), processor  # the touch counted, from a fresh state
