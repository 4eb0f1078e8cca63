import datetime as dt
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import ConfigError
from services.common.serde import TOUCHPOINT, default_serde
from services.ingest.collector import RequestError, TokenBucket, process
from services.ingest.importer import _row_to_event, read_jsonl
from services.ingest.keys import WriteKeys, parse_write_keys, sign, verify
from services.ingest.validation import Enrichment, Rejection, pii_hash, validate
from services.ingest.webhooks import to_touchpoints

RECEIVED = 1_710_325_500_000  # 2024-03-13T10:25:00Z
ENRICH = Enrichment("shop", RECEIVED, frozenset({"web", "app"}), frozenset({"email"}), "salt")


def event(**overrides):
    base = {"event_id": "e1", "event_type": "cart_add", "channel": "web",
            "occurred_at": "2024-03-13T10:23:32Z", "customer_id": "C123"}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def test_a_good_event_becomes_an_avro_ready_record():
    record = validate(event(
        anonymous_id="dev-9f1", properties={"page": "/p/42", "score": 9, "email": "A@B.example"},
        commerce={"cart_id": "K1", "product_id": "P42", "quantity": 1, "unit_price": 19.9,
                  "value": 19.9, "currency": "EUR"},
        context={"device": "mobile"}), ENRICH)
    assert isinstance(record, dict)
    assert record["occurred_at"] == record["event_time"] == 1_710_325_412_000
    assert record["received_at"] == RECEIVED and record["source"] == "shop"
    assert record["commerce"]["quantity"] == 1 and record["commerce"]["order_id"] is None
    # PII never leaves the collector in clear.
    assert record["properties"]["email"] == pii_hash("a@b.example", "salt")
    assert "A@B.example" not in json.dumps(record)
    assert default_serde().decode(TOUCHPOINT, default_serde().encode(TOUCHPOINT, record))


def test_clock_skew_is_corrected_with_sent_at():
    # The device clock is 1 h behind: it says it sent at 09:25:05, we received at 10:25:00.
    record = validate(event(occurred_at="2024-03-13T09:25:00+00:00",
                            sent_at="2024-03-13T09:25:05Z"), ENRICH)
    assert record["event_time"] == RECEIVED - 5_000
    assert record["occurred_at"] == RECEIVED - 3_600_000


def test_offsets_and_epoch_millis_agree():
    a = validate(event(occurred_at="2024-03-13T11:23:32.250+01:00"), ENRICH)["occurred_at"]
    b = validate(event(occurred_at=1_710_325_412_250), ENRICH)["occurred_at"]
    assert a == b == 1_710_325_412_250


@pytest.mark.parametrize("bad, reason, field", [
    ([], "invalid_type", ""),
    (event(event_id=None), "missing_field", "event_id"),
    (event(event_id="x" * 129), "invalid_value", "event_id"),
    (event(event_type="CartAdd"), "invalid_format", "event_type"),
    (event(channel="fax"), "invalid_value", "channel"),
    (event(channel="pos"), "channel_not_allowed", "channel"),
    (event(customer_id=None), "missing_identity", "customer_id"),
    (event(occurred_at="2024-03-13 10:23:32"), "invalid_format", "occurred_at"),
    (event(occurred_at=1_710_325_412), "invalid_value", "occurred_at"),
    (event(occurred_at=True), "invalid_type", "occurred_at"),
    (event(occurred_at="2024-02-30T10:00:00Z"), "invalid_value", "occurred_at"),
    (event(occurred_at="2030-01-01T00:00:00Z"), "invalid_value", "occurred_at"),
    (event(properties={"nested": {"a": 1}}), "invalid_type", "properties.nested"),
    (event(properties=[1]), "invalid_type", "properties"),
    (event(commerce={"value": "19.9"}), "invalid_type", "commerce.value"),
    (event(commerce={"quantity": 1.5}), "invalid_type", "commerce.quantity"),
    (event(commerce={"coupon": "X"}), "unknown_field", "commerce.coupon"),
    (event(customerId="C1"), "unknown_field", "customerId"),
])
def test_rejections_name_field_and_rule(bad, reason, field):
    result = validate(bad, ENRICH)
    assert isinstance(result, Rejection), result
    assert (result.reason, result.field) == (reason, field)
    assert result.detail


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=12), children, max_size=6), max_leaves=20)
fields = st.sampled_from(["event_id", "event_type", "channel", "occurred_at", "sent_at",
                          "customer_id", "anonymous_id", "properties", "commerce", "context"])


@settings(max_examples=400)
@given(st.one_of(json_values, st.dictionaries(fields, json_values, max_size=10)))
def test_any_json_is_accepted_into_the_schema_or_rejected_with_a_reason(value):
    result = validate(value, ENRICH)
    if isinstance(result, Rejection):
        assert result.reason and result.detail
    else:  # whatever validation accepts, Avro can write
        default_serde().encode(TOUCHPOINT, result)


def test_batches_reject_individually_and_limits_refuse_whole_requests():
    body = {"events": [event(), event(event_id="e2", channel="fax"),
                       event(event_id="e3", properties={"big": "x" * 4000} | {
                           f"k{i}": "y" * 300 for i in range(99)})]}
    outcome = process(body, json.dumps(body).encode(), ENRICH, max_events=10,
                      max_event_bytes=32 * 1024)
    assert [r["event_id"] for r in outcome.records] == ["e1"]
    assert [(i, eid, rej.reason) for i, eid, rej, _ in outcome.rejected] == [
        (1, "e2", "invalid_value"), (2, "e3", "too_large")]
    with pytest.raises(RequestError) as err:
        process({"events": [event()] * 11}, b"", ENRICH, max_events=10, max_event_bytes=10**6)
    assert err.value.status == 413
    with pytest.raises(RequestError) as err:
        process(event(), b"x" * 40_000, ENRICH, max_events=10, max_event_bytes=32 * 1024)
    assert err.value.status == 413
    with pytest.raises(RequestError) as err:
        process([event()], b"[]", ENRICH, max_events=10, max_event_bytes=1000)
    assert err.value.status == 400


def test_write_keys():
    keys = parse_write_keys("s3cret=shop:web|app; k2=stores:pos")
    assert keys["s3cret"].name == "shop" and keys["k2"].channels == {"pos"}
    wk = WriteKeys("s3cret=shop:web|app;k2=stores:pos")
    assert wk.lookup("k2").name == "stores"
    assert wk.lookup("s3cre") is None and wk.lookup("") is None
    for spec in ("nokey", "k=shop", "k=shop:fax", "=shop:web"):
        with pytest.raises(ConfigError, match="KIZUNA_WRITE_KEYS"):
            parse_write_keys(spec)


def test_webhook_signatures():
    secret, body, now = b"whsec", b'[{"event": "open"}]', 1_700_000_000
    good = sign(secret, str(now), body)
    assert verify(secret, str(now), good, body, now + 10, 300) is None
    assert "does not match" in verify(secret, str(now), good, body + b" ", now, 300)
    assert "does not match" in verify(b"other", str(now), good, body, now, 300)
    assert "stale" in verify(secret, str(now - 301), sign(secret, str(now - 301), body), body,
                             now, 300)
    assert "missing" in verify(secret, None, good, body, now, 300)


def test_webhook_items_map_to_email_touchpoints():
    items = to_touchpoints({"events": [
        {"event": "click", "message_id": "m1", "timestamp": 1_710_325_412,
         "email": "A@b.example", "url": "https://x/p", "campaign": "spring"},
        {"event": "unsubscribe", "message_id": "m1", "timestamp": "2024-03-13T10:23:32Z",
         "customer_id": "C1"},
        {"event": "teleport", "message_id": "m2"},
    ]}, "esp", "salt")
    first = validate(items[0], Enrichment("webhook:esp", RECEIVED, frozenset({"email"})))
    assert first["event_type"] == "email_click" and first["occurred_at"] == 1_710_325_412_000
    assert first["anonymous_id"].startswith("email:") and "A@b" not in json.dumps(first)
    assert first["context"] == {"campaign": "spring"}
    second = validate(items[1], Enrichment("webhook:esp", RECEIVED, frozenset({"email"})))
    assert second["event_type"] == "email_unsubscribe" and second["customer_id"] == "C1"
    assert isinstance(validate(items[2], ENRICH), Rejection)


def test_token_bucket_allows_bursts_then_asks_to_wait():
    bucket = TokenBucket(rate=100, burst_seconds=2)
    assert bucket.take(200, now=0.0) == 0
    assert bucket.take(50, now=0.0) == pytest.approx(0.5)
    assert bucket.take(50, now=0.5) == 0


def test_csv_rows_map_types_and_refuse_formulas():
    columns = ["event_id", "occurred_at", "commerce.value", "commerce.quantity",
               "properties.delta", "properties.note"]
    row = _row_to_event(columns, ["R1", "1710325412000", "59.80", "2", "-5", "ok"],
                        {"channel": "pos"}, 2)
    assert row == {"channel": "pos", "event_id": "R1", "occurred_at": 1710325412000,
                   "commerce": {"value": 59.8, "quantity": 2},
                   "properties": {"delta": -5, "note": "ok"}}
    for cell in ("=HYPERLINK(1)", "+1+1", "@SUM(A1)", "-cmd"):
        bad = _row_to_event(columns, ["R1", "1", "1", "1", "1", cell], {}, 3)
        assert isinstance(bad, Rejection) and bad.reason == "formula_injection"
    # A fractional quantity is kept as written, so validation refuses it (never truncated).
    half = _row_to_event(columns, ["R1", "1710325412000", "1", "2.5", "1", "x"],
                         {"channel": "pos", "event_type": "purchase", "customer_id": "C1"}, 5)
    assert half["commerce"]["quantity"] == 2.5
    refused = validate(half, Enrichment("import", RECEIVED))
    assert isinstance(refused, Rejection) and refused.field == "commerce.quantity"
    short = _row_to_event(columns, ["R1"], {}, 4)
    assert isinstance(short, Rejection) and short.reason == "invalid_row"


def test_jsonl_lines_that_are_not_json_become_rejections(tmp_path):
    path = tmp_path / "e.jsonl"
    path.write_bytes(b'{"a": 1}\n\n{broken\n\xff\xfe\n')
    rows = list(read_jsonl(path))
    assert [n for n, _, _ in rows] == [1, 3, 4]
    assert rows[0][2] == {"a": 1}
    assert all(isinstance(r[2], Rejection) and r[2].reason == "invalid_json" for r in rows[1:])


def test_timestamps_are_utc_millis():
    ms = validate(event(occurred_at="2024-03-13T10:23:32.123456789Z"), ENRICH)["occurred_at"]
    assert dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat() == \
        "2024-03-13T10:23:32.123000+00:00"


def test_bulk_imports_pack_each_partitions_touchpoints_in_order():
    from aiokafka.partitioner import murmur2

    from services.common.serde import TOUCHPOINT, TOUCHPOINT_BATCH, default_serde
    from services.ingest.importer import PartitionBatcher

    serde = default_serde()
    sent = []
    batcher = PartitionBatcher(serde, "raw", 4, lambda *args, **kw: sent.append((args, kw)), size=3)
    records = [validate({"event_id": f"e{i}", "event_type": "page_view", "channel": "web",
                         "occurred_at": 1_710_000_000_000 + i, "customer_id": f"C{i % 5}"},
                        Enrichment("import", 1_710_000_000_000)) for i in range(20)]
    for record in records:
        batcher.add(record)
    batcher.flush()
    seen = []
    for (topic, value, key, events), options in sent:
        if key is not None:  # a lone touchpoint: an ordinary keyed message
            batch = [serde.decode(TOUCHPOINT, value)]
            assert key.decode() == batch[0]["customer_id"] and not options
        else:
            batch = serde.decode(TOUCHPOINT_BATCH, value)["touchpoints"]
            assert options["headers"] == {"kizuna-type": TOUCHPOINT_BATCH}
            assert len(batch) <= 3
            for r in batch:  # every touchpoint belongs to the message's partition
                assert (murmur2(r["customer_id"].encode()) & 0x7FFFFFFF) % 4 == \
                    options["partition"]
        assert topic == "raw" and events == len(batch)
        seen += [r["event_id"] for r in batch]
    assert sorted(seen) == sorted(r["event_id"] for r in records)
    by_customer = {}
    for event_id in seen:  # a customer's touchpoints keep the file's order
        by_customer.setdefault(int(event_id[1:]) % 5, []).append(int(event_id[1:]))
    assert all(ids == sorted(ids) for ids in by_customer.values())


def test_pii_in_a_dead_letter_payload_is_hashed_whether_or_not_it_parses() -> None:
    from services.ingest.validation import PiiRedactor, pii_hash

    redact = PiiRedactor(frozenset({"email", "phone"}), "s")
    event = (b'{"event_id": "e1", "channel": "fax", "properties": {"email": "Jane@Example.com",'
             b' "phone": 33612345678, "plan": "gold"}}')
    out = redact(event)
    assert b"Jane@Example.com" not in out and b"33612345678" not in out
    parsed = json.loads(out)
    assert parsed["properties"] == {"email": pii_hash("jane@example.com", "s"),
                                    "phone": pii_hash("33612345678", "s"), "plan": "gold"}
    broken = b'{"events": [{"email" : "a\\"b@x.org", "x": '  # cut short: still redacted
    assert b"a\\\"b@x.org" not in redact(broken)
    assert pii_hash('a"b@x.org', "s").encode() in redact(broken)
    assert PiiRedactor(frozenset(), "s")(event) == event


def test_a_request_goes_to_kafka_as_one_batch_message_per_partition() -> None:
    from aiokafka.partitioner import murmur2

    from services.common.serde import TOUCHPOINT, TOUCHPOINT_BATCH, default_serde
    from services.ingest.collector import MessageBuilder, Outcome

    serde = default_serde()
    records = [validate(event(event_id=f"e{i}", customer_id=f"C{i % 5}"), ENRICH)
               for i in range(40)]
    outcome = Outcome(records=records)
    messages = MessageBuilder(serde, "kizuna.", partitions=4).of(outcome, "shop", RECEIVED)
    partition_of = {r["customer_id"]: (murmur2(r["customer_id"].encode()) & 0x7FFFFFFF) % 4
                    for r in records}
    seen = []
    for topic, key, value, partition, headers in messages:
        assert topic == "kizuna.touchpoints.raw"
        if headers is None:  # a partition with one touchpoint: an ordinary keyed message
            batch = [serde.decode(TOUCHPOINT, value)]
            assert key == batch[0]["customer_id"].encode() and partition == -1
        else:
            assert headers == {"kizuna-type": TOUCHPOINT_BATCH} and key is None
            batch = serde.decode(TOUCHPOINT_BATCH, value)["touchpoints"]
            assert {partition_of[r["customer_id"]] for r in batch} == {partition}
        seen += [r["event_id"] for r in batch]
    assert len(messages) <= 4
    # every touchpoint once, and each partition's in the request's order
    assert sorted(seen) == sorted(r["event_id"] for r in records)
    for p in range(4):
        mine = [r["event_id"] for r in records if partition_of[r["customer_id"]] == p]
        assert [e for e in seen if e in mine] == mine
    # without the partition count (broker away at start): one keyed message per touchpoint
    single = MessageBuilder(serde, "kizuna.").of(outcome, "shop", RECEIVED)
    assert len(single) == 40 and all(m[4] is None for m in single)


# -- bounded input: any order, any age --------------------------------------------------------

def test_times_from_1970_on_are_taken_and_numbers_under_10_11_are_seconds() -> None:
    assert validate(event(occurred_at="1997-01-01T00:00:00Z"),
                    Enrichment("import", RECEIVED))["event_time"] == 852_076_800_000
    assert validate(event(occurred_at="1970-01-01T00:00:00Z"),
                    Enrichment("import", RECEIVED))["event_time"] == 0
    seconds = validate(event(occurred_at=1_710_325_412), ENRICH)
    assert isinstance(seconds, Rejection) and "epoch seconds" in seconds.detail
    assert validate(event(occurred_at=10**11), ENRICH)["occurred_at"] == 10**11  # 1973, in ms
    before = validate(event(occurred_at="1969-12-31T23:59:59Z"), ENRICH)
    assert isinstance(before, Rejection) and "1970" in before.detail
    future = validate(event(occurred_at="2024-03-15T10:23:32Z"), ENRICH)
    assert isinstance(future, Rejection) and "future" in future.detail


def test_an_import_keeps_occurred_at_a_file_has_no_receipt_to_correct_with() -> None:
    imported = validate(event(occurred_at="1998-01-01T00:00:00Z", sent_at="1998-01-01T00:00:05Z"),
                        Enrichment("import", RECEIVED, skew_correction=False))
    assert imported["event_time"] == imported["occurred_at"] == 883_612_800_000


def test_the_external_sort_gives_one_order_whatever_the_input_order_and_memory(tmp_path) -> None:
    import random

    from services.ingest.sorting import Entry, ExternalSorter

    rnd = random.Random(2)
    entries = [Entry(rnd.randint(0, 50), f"e{rnd.randint(0, 300)}".encode(),
                     bytes([rnd.randint(0, 255)]), 0, b"k") for _ in range(2000)]
    orders = [entries, list(reversed(entries)), sorted(entries, key=lambda e: e.key + e.datum)]
    results = []
    for memory in (10**9, 5000):  # all in memory; spilled in runs of about 20 entries
        for order in orders:
            sorter = ExternalSorter(memory, tmp_path / f"s{memory}")
            for entry in order:
                sorter.add(entry)
            results.append([(e.event_time, e.event_id, e.datum) for e in sorter.sorted()])
            assert (len(sorter.runs) > 50) == (memory == 5000)
            sorter.close()
            assert not list((tmp_path / f"s{memory}").glob("run-*"))  # cleaned up
    assert all(r == results[0] for r in results)
    assert results[0] == sorted(results[0]) and len(results[0]) == 2000


def test_import_inputs_are_files_directories_and_gzip(tmp_path) -> None:
    import gzip

    from services.common.errors import KizunaError
    from services.ingest.importer import input_files, read_csv, read_jsonl

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.jsonl").write_text('{"a": 1}\n')
    (tmp_path / "d" / "sub" / "b.jsonl.gz").write_bytes(gzip.compress(b'{"b": 2}\n{"c": 3}\n'))
    (tmp_path / "d" / "c.csv.gz").write_bytes(gzip.compress(b"event_id,channel\nr1,pos\n"))
    (tmp_path / "d" / "notes.txt").write_text("not events")
    files = input_files([tmp_path / "d"])
    assert [f.name for f in files] == ["a.jsonl", "c.csv.gz", "b.jsonl.gz"]
    assert [parsed for _, _, parsed in read_jsonl(files[2])] == [{"b": 2}, {"c": 3}]
    ((line, _, row),) = read_csv(files[1], {"columns": {}, "defaults": {}})
    assert line == 2 and row == {"event_id": "r1", "channel": "pos"}
    with pytest.raises(KizunaError, match="no such file"):
        input_files([tmp_path / "nope.jsonl"])


def test_a_sent_at_that_would_move_an_event_out_of_range_is_refused() -> None:
    # Sent 53 years "before" it happened: the correction would put it in 2077.
    future = validate(event(occurred_at="2024-03-13T10:23:32Z", sent_at="1971-03-13T10:23:32Z"),
                      ENRICH)
    assert isinstance(future, Rejection) and future.field == "sent_at"
    assert "future" in future.detail


def test_concurrent_requests_touchpoints_go_as_one_message_per_partition_after_the_linger():
    """services/ingest/collector.py Linger: single-event requests within the linger become
    one batch message per partition, each profile's touchpoints in the order the requests
    came; every request hears Kafka's answer for the messages holding its events; a
    gathering that reaches `size` goes at once."""
    import asyncio

    from services.common.serde import TOUCHPOINT_BATCH, default_serde
    from services.ingest.collector import Linger, partition_of

    serde = default_serde()
    sent: list[list] = []
    answer: list[str | None] = [None]

    async def send(messages):
        sent.append(messages)
        await asyncio.sleep(0)
        return answer[0]

    def events_of(messages):
        out = []
        for _topic, key, value, partition, headers in messages:
            batch = serde.decode(TOUCHPOINT_BATCH, value)["touchpoints"] if headers else \
                [serde.decode(TOUCHPOINT, value)]
            out.append((partition if headers else partition_of(key, 4),
                        [r["event_id"] for r in batch]))
        return out

    async def scenario():
        linger = Linger(serde, "kizuna.touchpoints.raw", 4, send, linger=0.05, size=25)
        records = [validate(event(event_id=f"e{i}", customer_id=f"C{i % 3}"), ENRICH)
                   for i in range(12)]
        results = await asyncio.gather(*(linger.add([r]) for r in records))
        assert results == [None] * 12 and len(sent) == 1
        by_partition = dict(events_of(sent[0]))
        assert len(sent[0]) == len(by_partition) <= 3  # one message per partition
        for c in range(3):
            mine = [f"e{i}" for i in range(12) if i % 3 == c]
            p = partition_of(f"C{c}".encode(), 4)
            assert [e for e in by_partition[p] if e in mine] == mine  # request order
        # a refusal reaches every request of its gathering
        answer[0] = "broker down"
        assert await asyncio.gather(linger.add(records[:1]), linger.add(records[1:2])) == \
            ["broker down", "broker down"]
        # `size` touchpoints go without waiting for the linger (here a minute)
        answer[0] = None
        slow = Linger(serde, "kizuna.touchpoints.raw", 4, send, linger=60, size=25)
        assert await asyncio.wait_for(slow.add(records * 3), timeout=10) is None
        assert sum(len(ids) for _, ids in events_of(sent[-1])) == 36

    asyncio.run(scenario())
