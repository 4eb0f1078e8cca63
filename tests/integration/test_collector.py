"""The collector and importer against the real broker (the session stack runs `ingest`)."""

from __future__ import annotations

import gzip
import json
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from aiokafka.partitioner import murmur2
from confluent_kafka import Consumer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common.serde import DEAD_LETTER, TOUCHPOINT, TOUCHPOINT_BATCH, WATERMARK, DecodeError
from services.common.topics import TOUCHPOINTS_DLQ, TOUCHPOINTS_RAW
from services.ingest.keys import sign
from services.ingest.validation import pii_hash
from services.localstack import supervisor
from tests.conftest import INGEST_RATE, WEBHOOK_SECRET, kizuna, stack_serde

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def post(env, path, body: bytes | object, key: str | None = "key-shop", headers=None,
         timeout=30):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{env['KIZUNA_INGEST_PORT']}{path}", data=data, method="POST",
        headers={"Content-Type": "application/json", **(headers or {})})
    if key:
        request.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null"), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = raw.decode(errors="replace")
        return exc.code, payload, dict(exc.headers)


def get(env, path):
    with urllib.request.urlopen(
            f"http://127.0.0.1:{env['KIZUNA_INGEST_PORT']}{path}", timeout=10) as resp:
        return resp.status, resp.read()


def new_event(tag: str, i: int = 0, **overrides) -> dict:
    event = {"event_id": f"{tag}-{i}", "event_type": "product_view", "channel": "web",
             "occurred_at": f"2024-03-13T10:{i % 60:02d}:00Z", "customer_id": f"C-{tag}-{i % 3}",
             "properties": {"page": f"/p/{i}", "n": i, "ok": True}}
    event.update(overrides)
    return event


def read_topic(env, topic: str, match, expected: int, timeout: float = 30,
               weight=lambda msg: 1) -> list:
    """Messages of `topic` whose decoded value satisfies `match`, until `expected` are seen
    (each counting `weight(msg)`: a batch message counts its events)."""
    consumer = Consumer({"bootstrap.servers": f"127.0.0.1:{env['KIZUNA_KAFKA_PORT']}",
                         "group.id": f"t-{uuid.uuid4()}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False, "log_level": 0})
    consumer.subscribe([topic])
    found, seen, deadline = [], 0, time.monotonic() + timeout
    try:
        while seen < expected and time.monotonic() < deadline:
            for msg in consumer.consume(1000, timeout=1):
                if msg.error() is None and match(msg):
                    found.append(msg)
                    seen += weight(msg)
        # Drain a little more: duplicates would show here.
        for msg in consumer.consume(1000, timeout=1):
            if msg.error() is None and match(msg):
                found.append(msg)
    finally:
        consumer.close()
    return found


RAW = TOUCHPOINTS_RAW.name("kizuna.")


def touchpoints_of(serde, msg) -> list[dict]:
    """A raw message's touchpoints: one, or several in a bulk import's batch message; none
    for control records and for poison bytes (other tests write some on purpose)."""
    try:
        if msg.headers() is None:
            return [serde.decode(TOUCHPOINT, msg.value())]
        if msg.headers() == [("kizuna-type", TOUCHPOINT_BATCH.encode())]:
            return serde.decode(TOUCHPOINT_BATCH, msg.value())["touchpoints"]
    except DecodeError:
        pass
    return []


def decoded_touchpoints(env, tag: str, expected: int) -> dict[str, dict]:
    serde = stack_serde(env)

    def ours(msg) -> int:
        return sum(r["event_id"].startswith(tag + "-") for r in touchpoints_of(serde, msg))
    msgs = read_topic(env, RAW, ours, expected, weight=ours)
    records = []
    for msg in msgs:
        for record in touchpoints_of(serde, msg):
            profile = (record["customer_id"] or record["anonymous_id"]).encode()
            if msg.key() is not None:
                assert msg.key() == profile
            partitions = int(env["KIZUNA_PARTITIONS"])
            assert msg.partition() == (murmur2(profile) & 0x7FFFFFFF) % partitions
            records.append(record)
    assert len(records) == len({r["event_id"] for r in records}), "duplicates in Kafka"
    return {r["event_id"]: r for r in records}


def assert_as_sent(sent: dict, record: dict) -> None:
    assert record["event_type"] == sent["event_type"]
    assert record["channel"] == sent["channel"]
    assert record["customer_id"] == sent.get("customer_id")
    assert record["properties"] == sent.get("properties", {})
    assert record["occurred_at"].isoformat().replace("+00:00", "Z") == sent["occurred_at"]


def test_accepted_events_are_in_kafka_exactly_as_sent(stack):
    tag = f"ok{uuid.uuid4().hex[:8]}"
    events = [new_event(tag, i) for i in range(50)]
    status, body, _ = post(stack, "/v1/events", {"events": events})
    assert (status, body) == (202, {"accepted": 50, "rejected": []})
    single = new_event(tag, 50, channel="app")
    assert post(stack, "/v1/events", single)[:2] == (202, {"accepted": 1, "rejected": []})
    in_kafka = decoded_touchpoints(stack, tag, 51)
    assert set(in_kafka) == {e["event_id"] for e in [*events, single]}
    for sent in [*events, single]:
        assert_as_sent(sent, in_kafka[sent["event_id"]])
        assert in_kafka[sent["event_id"]]["source"] == "shop"


def test_gzip_bodies_and_pii_hashing(stack):
    tag = f"gz{uuid.uuid4().hex[:8]}"
    event = new_event(tag, properties={"email": "Jane@Example.com", "phone": "+33 6 12"})
    status, body, _ = post(stack, "/v1/events", gzip.compress(json.dumps(event).encode()),
                           headers={"Content-Encoding": "gzip"})
    assert (status, body["accepted"]) == (202, 1)
    (record,) = decoded_touchpoints(stack, tag, 1).values()
    assert record["properties"]["email"] == pii_hash("jane@example.com", "test-salt")
    assert record["properties"]["phone"] == pii_hash("+33 6 12", "test-salt")


def test_rejected_events_reach_the_dead_letter_topic_with_reason(stack):
    tag = f"dl{uuid.uuid4().hex[:8]}"
    events = [new_event(tag, 0),
              new_event(tag, 1, channel="fax", properties={"email": "Raw@Example.com"}),
              new_event(tag, 2, occurred_at="yesterday")]
    status, body, _ = post(stack, "/v1/events", {"events": events})
    assert status == 202 and body["accepted"] == 1
    assert [(r["index"], r["event_id"], r["reason"], r["field"]) for r in body["rejected"]] == [
        (1, f"{tag}-1", "invalid_value", "channel"),
        (2, f"{tag}-2", "invalid_format", "occurred_at")]
    serde = stack_serde(stack)
    def ours(m) -> bool:  # the collector's own; later stages may add theirs
        letter = serde.decode(DEAD_LETTER, m.value())
        return tag.encode() in letter["payload"] and letter["stage"] == "ingest"

    dlq = read_topic(stack, TOUCHPOINTS_DLQ.name("kizuna."), ours, 2)
    letters = sorted((serde.decode(DEAD_LETTER, m.value()) for m in dlq),
                     key=lambda d: d["reason"])
    assert [(d["reason"], d["stage"], d["source"]) for d in letters] == [
        ("invalid_format", "ingest", "shop"), ("invalid_value", "ingest", "shop")]
    # the evidence is kept, with its PII hashed like an accepted event's: never the raw value
    assert b"Raw@Example.com" not in letters[1]["payload"]
    hashed = dict(events[1], properties={"email": pii_hash("raw@example.com", "test-salt")})
    assert json.loads(letters[1]["payload"]) == hashed
    assert "channel" in letters[1]["detail"]


def test_status_codes(stack):
    event = new_event("codes")
    assert post(stack, "/v1/events", event, key=None)[0] == 401
    assert post(stack, "/v1/events", event, key="wrong")[0] == 401
    status, body, _ = post(stack, "/v1/events", event, key=None,
                           headers={"Authorization": "Basic key-shop"})
    assert (status, body["error"]) == (401, "unauthorized")
    status, body, _ = post(stack, "/v1/events", b"{not json")
    assert (status, body["error"]) == (400, "invalid_json")
    assert post(stack, "/v1/events", [event])[0] == 400
    assert post(stack, "/v1/events", b"xx", headers={"Content-Encoding": "gzip"})[0] == 400
    status, body, _ = post(stack, "/v1/events", {"events": [event] * 1001})
    assert (status, body["error"]) == (413, "too_many_events")
    big = dict(event, properties={f"k{i}": "v" * 400 for i in range(90)})
    assert post(stack, "/v1/events", big)[1]["error"] == "event_too_large"
    assert post(stack, "/v1/events", b" " * (1024 * 1024 + 10))[0] == 413
    bomb = gzip.compress(b'{"events": [' + b" " * (8 * 1024 * 1024) + b"]}")
    assert post(stack, "/v1/events", bomb, headers={"Content-Encoding": "gzip"})[0] == 413
    status, body, _ = post(stack, "/v1/events", dict(event, channel="web"), key="key-stores")
    assert status == 202 and body["rejected"][0]["reason"] == "channel_not_allowed"


def test_a_source_over_its_rate_gets_429_with_retry_after(stack):
    batch = {"events": [new_event("rate", i) for i in range(1000)]}
    statuses = []
    for _ in range(2 * INGEST_RATE // 1000 + 3):
        status, _, headers = post(stack, "/v1/events", batch, key="key-rate")
        statuses.append(status)
        if status == 429:
            assert int(headers["Retry-After"]) >= 1
            break
    assert statuses[0] == 202 and statuses[-1] == 429
    # Other sources are not affected.
    assert post(stack, "/v1/events", new_event("rate-other"))[0] == 202


def test_email_webhook_signatures(stack):
    tag = f"wh{uuid.uuid4().hex[:8]}"
    body = json.dumps([{"event": "open", "message_id": tag, "timestamp": 1_710_325_412,
                        "customer_id": "C-wh"}]).encode()

    def hook(ts, signature, provider="esp"):
        return post(stack, f"/v1/webhooks/email/{provider}", body, key=None,
                    headers={"Kizuna-Timestamp": str(ts), "Kizuna-Signature": signature})

    now = int(time.time())
    secret = WEBHOOK_SECRET.encode()
    assert hook(now, sign(secret, str(now), body))[:2] == (202, {"accepted": 1, "rejected": []})
    assert hook(now, sign(b"wrong", str(now), body))[0] == 401
    stale = now - 600
    status, answer, _ = hook(stale, sign(secret, str(stale), body))
    assert status == 401 and "stale" in answer["detail"]
    assert hook(now, sign(secret, str(now), body), provider="nobody")[0] == 404
    serde = stack_serde(stack)
    msgs = read_topic(stack, RAW, lambda m: m.headers() is None
                      and any(tag in r["event_id"] for r in touchpoints_of(serde, m)), 1)
    assert len(msgs) == 1, "only the good signature produced"
    record = serde.decode(TOUCHPOINT, msgs[0].value())
    assert (record["event_type"], record["channel"], record["source"]) == \
        ("email_open", "email", "webhook:esp")


def test_a_replayed_webhook_shows_once_in_results(stack):
    # A signed request captured and sent again within the tolerance window passes the
    # signature check (as with any HMAC scheme); its event ids are derived from the provider's
    # message, so the copy is absorbed downstream and the analyst sees one row.
    tag = f"rp{uuid.uuid4().hex[:8]}"
    body = json.dumps([{"event": "click", "message_id": tag, "timestamp": 1_710_325_412,
                        "customer_id": "C-replay", "email": "Replay@Example.com"}]).encode()
    now = int(time.time())
    headers = {"Kizuna-Timestamp": str(now),
               "Kizuna-Signature": sign(WEBHOOK_SECRET.encode(), str(now), body)}
    for _ in range(2):
        status, answer, _ = post(stack, "/v1/webhooks/email/esp", body, key=None,
                                 headers=headers)
        assert (status, answer["accepted"]) == (202, 1)
    kizuna(stack, "wait", "--timeout", "120")
    out = kizuna(stack, "query", "--format", "json",
                 f"SELECT event_id, anonymous_id FROM kizuna.touchpoints "
                 f"WHERE position(event_id, '{tag}') > 0").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 1
    assert "Replay@Example.com".lower() not in out.lower()  # the address itself never lands


def test_health_metrics_openapi(stack):
    assert get(stack, "/healthz")[0] == 200
    assert json.loads(get(stack, "/readyz")[1])["status"] == "ok"
    metrics = get(stack, "/metrics")[1].decode()
    assert 'kizuna_ingest_events_total{channel="web",outcome="accepted",reason=""}' in metrics
    assert "kizuna_ingest_produce_seconds_bucket" in metrics
    assert 'kizuna_ingest_requests_total{endpoint="/v1/events",status="401"}' in metrics
    spec = json.loads(get(stack, "/openapi.json")[1])
    assert {"/v1/events", "/v1/webhooks/email/{provider}"} <= set(spec["paths"])


bodies = st.one_of(
    st.binary(max_size=300),
    st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False)
                 | st.text(max_size=20),
                 lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c,
                                                                     max_size=5),
                 max_leaves=15).map(lambda v: json.dumps(v).encode()),
    st.lists(st.fixed_dictionaries({}, optional={
        "event_id": st.text(max_size=5), "event_type": st.sampled_from(["page_view", "X"]),
        "channel": st.sampled_from(["web", "fax"]), "occurred_at": st.integers(),
        "customer_id": st.text(max_size=3), "properties": st.dictionaries(
            st.text(max_size=3), st.integers() | st.text(max_size=3), max_size=3)}),
        max_size=5).map(lambda es: json.dumps({"events": es}).encode()),
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(body=bodies, gz=st.booleans(), key=st.sampled_from(["key-fuzz", None, "nope"]))
def test_no_input_yields_a_500(stack, body, gz, key):
    headers = {"Content-Encoding": "gzip"} if gz else {}
    status, answer, _ = post(stack, "/v1/events", gzip.compress(body) if gz else body,
                             key=key, headers=headers)
    assert status in (202, 400, 401, 413), (status, answer)
    assert isinstance(answer, dict)


def test_import_jsonl_and_pos_csv(stack, tmp_path):
    tag = f"im{uuid.uuid4().hex[:8]}"
    lines = [json.dumps(new_event(tag, i)) for i in range(20)] + ["{broken", json.dumps(
        new_event(tag, 99, channel="fax"))]
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(lines) + "\n")
    out = kizuna(stack, "import", str(path), "--until", "2024-03-14T00:00:00Z").stdout
    assert "accepted: 20" in out and "rejected: 2" in out
    assert "invalid_json: 1" in out and "invalid_value: 1" in out
    in_kafka = decoded_touchpoints(stack, tag, 20)
    assert len(in_kafka) == 20 and all(r["source"] == "import" for r in in_kafka.values())

    serde = stack_serde(stack)
    marks = read_topic(stack, RAW, lambda m: m.headers() == [
        ("kizuna-type", b"watermark")] and serde.decode(WATERMARK, m.value())[
        "watermark_time"].isoformat().startswith("2024-03-14T00:00"), 4)
    assert sorted(m.partition() for m in marks)[:4] == [0, 1, 2, 3]

    out = kizuna(stack, "import", str(ROOT / "examples" / "pos_receipts.csv"), "--mapping",
                 str(ROOT / "examples" / "pos_mapping.yaml")).stdout
    assert "accepted: 3" in out and "formula_injection: 1" in out and "missing_identity: 1" in out


def test_import_errors_are_one_line(stack, tmp_path):
    result = kizuna(stack, "import", str(tmp_path / "nope.jsonl"), check=False)
    assert result.returncode == 1 and result.stderr.startswith("kizuna: error: ")
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("event_id,channel\ncaf\xe9,pos\n".encode("latin-1"))
    result = kizuna(stack, "import", str(bad), check=False)
    assert result.returncode == 1 and "not UTF-8" in result.stderr


def test_broker_down_means_503_then_every_acknowledged_event_is_in_kafka(stack, stack_settings):
    """Runs last in this module: it stops and restarts the session's broker."""
    server = supervisor.rpc(stack_settings)
    tag = f"bk{uuid.uuid4().hex[:8]}"
    first = [new_event(tag, i) for i in range(10)]
    assert post(stack, "/v1/events", {"events": first}, key="key-broker")[0] == 202
    server.stopProcess("kafka")
    try:
        during = [new_event(tag, i) for i in range(10, 20)]
        status, body, headers = post(stack, "/v1/events", {"events": during}, key="key-broker")
        assert status == 503 and body["error"] == "kafka_unavailable"
        assert int(headers["Retry-After"]) > 0
        with pytest.raises(urllib.error.HTTPError) as not_ready:
            get(stack, "/readyz")
        assert not_ready.value.code == 503
    finally:
        server.startProcess("kafka")
        kizuna(stack, "up")  # waits until the broker answers again
    # The client retries what got a 503; downstream deduplicates by event_id.
    deadline = time.monotonic() + 60
    while True:
        status, body, _ = post(stack, "/v1/events", {"events": during}, key="key-broker")
        if status == 202 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert status == 202 and body["accepted"] == 10
    acknowledged = {e["event_id"]: e for e in [*first, *during]}
    serde = stack_serde(stack)

    def ours(m) -> int:  # a request's touchpoints come in one batch message per partition
        return sum(r["event_id"].startswith(tag + "-") for r in touchpoints_of(serde, m))

    records = {}
    for m in read_topic(stack, RAW, ours, 20, weight=ours):
        for r in touchpoints_of(serde, m):
            records.setdefault(r["event_id"], r)
    assert set(records) == set(acknowledged)
    for event_id, sent in acknowledged.items():
        assert_as_sent(sent, records[event_id])


def test_with_a_linger_concurrent_single_event_requests_share_messages_and_lose_nothing(stack):
    """KIZUNA_INGEST_LINGER_MS on a collector of its own: 60 one-event requests at once are
    each answered 202 only once Kafka has their event; the events reach the raw topic once
    each, on their profile's partition, in fewer messages than requests."""
    from concurrent.futures import ThreadPoolExecutor

    from tests.conftest import services_stack

    with services_stack(stack, "lin", KIZUNA_INGEST_LINGER_MS="50",
                        KIZUNA_WRITE_KEYS="key-lin=lin:web") as env:
        tag = f"lin{uuid.uuid4().hex[:6]}"
        with ThreadPoolExecutor(30) as pool:
            answers = list(pool.map(lambda i: post(env, "/v1/events", new_event(tag, i),
                                                   key="key-lin"), range(60)))
        assert [status for status, _, _ in answers] == [202] * 60
        serde = stack_serde(env)
        raw = TOUCHPOINTS_RAW.name(env["KIZUNA_TOPIC_PREFIX"])

        def ours(msg) -> int:
            return sum(r["event_id"].startswith(tag + "-") for r in touchpoints_of(serde, msg))
        msgs = read_topic(stack, raw, ours, 60, weight=ours)  # the broker is the session stack's
        events = [r["event_id"] for m in msgs for r in touchpoints_of(serde, m)]
        assert sorted(events) == sorted(f"{tag}-{i}" for i in range(60))  # once each
        assert len(msgs) < 60
        for m in msgs:
            for r in touchpoints_of(serde, m):
                profile = r["customer_id"].encode()
                assert m.partition() == (murmur2(profile) & 0x7FFFFFFF) % \
                    int(env["KIZUNA_PARTITIONS"])
