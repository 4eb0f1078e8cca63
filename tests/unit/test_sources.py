"""Users' own topics as input (services/ingest/sources.py): what the relay makes of consumed
messages, without Kafka."""

import datetime as dt
import json

import pytest

from services.common.errors import ConfigError
from services.common.serde import DEAD_LETTER, TOUCHPOINT, TOUCHPOINT_BATCH, default_serde
from services.common.settings import IngestSettings, load
from services.ingest.collector import MessageBuilder
from services.ingest.sources import Consumed, parse_sources, relay

T = 1_710_325_500_000  # the messages' timestamp: the events' receive time


def event(i: int, **overrides) -> dict:
    return {"event_id": f"e{i}", "event_type": "page_view", "channel": "web",
            "occurred_at": "2024-03-13T10:23:32Z", "customer_id": f"C{i % 3}", **overrides}


def message(offset: int, value: object, topic: str = "shop-events",
            partition: int = 0) -> Consumed:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return Consumed(topic, partition, offset, raw, T + offset)


def decoded(serde, messages):
    touchpoints, dead = [], []
    for topic, _key, value, _partition, headers in messages:
        if topic.endswith("touchpoints.raw"):
            touchpoints += serde.decode(TOUCHPOINT_BATCH, value)["touchpoints"] \
                if headers else [serde.decode(TOUCHPOINT, value)]
        else:
            assert topic.endswith("touchpoints.dlq")
            dead.append(serde.decode(DEAD_LETTER, value))
    return touchpoints, dead


def test_events_arrays_and_batches_relay_and_each_bad_one_is_a_dead_letter_naming_its_offset():
    serde = default_serde()
    settings = load(IngestSettings, {})
    sources = parse_sources("shop-events=shop:web|app;orders=pos:pos")
    builder = MessageBuilder(serde, "kizuna.", partitions=4)
    consumed = [
        message(10, event(1)),  # one event
        message(11, [event(2), event(3), event(4, channel="email")]),  # an array; email refused
        message(12, {"events": [event(5), event(6)]}),  # the collector's batch
        message(13, b"{not json"),
        message(14, b""),
        message(3, event(7, channel="pos"), topic="orders", partition=1),
    ]
    out = relay(consumed, sources, builder, settings)
    touchpoints, dead = decoded(serde, out.messages)
    assert sorted(t["event_id"] for t in touchpoints) == ["e1", "e2", "e3", "e5", "e6", "e7"]
    by_id = {t["event_id"]: t for t in touchpoints}
    assert by_id["e1"]["source"] == "shop" and by_id["e7"]["source"] == "pos"
    # an event's receive time is its message's timestamp
    assert by_id["e1"]["received_at"] == dt.datetime.fromtimestamp((T + 10) / 1000, dt.UTC)
    assert out.accepted == {"shop-events": 5, "orders": 1}
    assert out.rejected == {"shop-events": 3}
    assert sorted((d["reason"], d["origin_topic"], d["origin_partition"], d["origin_offset"])
                  for d in dead) == [("channel_not_allowed", "shop-events", 0, 11),
                                     ("invalid_json", "shop-events", 0, 13),
                                     ("invalid_json", "shop-events", 0, 14)]
    # one batch message per partition, not one per event
    assert len(out.messages) - len(dead) <= 4
    # the same messages again give the same records and dead letters (a repeated batch)
    assert decoded(serde, relay(consumed, sources, builder, settings).messages) == \
        (touchpoints, dead)


def test_the_source_topics_setting_is_a_write_keys_spec():
    assert set(parse_sources("a=web-src:web;b.c=pos:pos|email")) == {"a", "b.c"}
    with pytest.raises(ConfigError, match="KIZUNA_SOURCE_TOPICS"):
        parse_sources("a=web-src")
    with pytest.raises(ConfigError, match="unknown channel"):
        parse_sources("a=src:fax")


def test_avro_values_in_confluents_wire_format_are_read_with_the_registrys_schema():
    """A producer's own Avro schema (timestamps as timestamp-millis, optional fields as
    unions with null), looked up by the id in the value's header."""
    import io

    import fastavro

    from services.common.serde import Registry, registry_serde

    schema = {"type": "record", "name": "PageView", "namespace": "shop", "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "event_type", "type": "string"},
        {"name": "channel", "type": "string"},
        {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "customer_id", "type": ["null", "string"], "default": None},
        {"name": "anonymous_id", "type": ["null", "string"], "default": None},
        {"name": "properties", "type": {"type": "map", "values": "string"}, "default": {}},
    ]}

    class OneSchema(Registry):  # the user's schema as 42; ours from 100 on
        ours: dict[str, int] = {}

        def schema_id(self, name, _schema):
            return self.ours.setdefault(name, 100 + len(self.ours))

        def schema(self, schema_id):
            return schema if schema_id == 42 else None

    def avro(record, schema_id=42):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), record)
        return b"\x00" + schema_id.to_bytes(4, "big") + buf.getvalue()

    view = {"event_id": "a1", "event_type": "page_view", "channel": "web",
            "occurred_at": dt.datetime(2024, 3, 13, 10, 23, 32, 250000, tzinfo=dt.UTC),
            "customer_id": None, "anonymous_id": "dev-1", "properties": {"page": "/p/1"}}
    serde = registry_serde(OneSchema())
    out = relay([message(0, avro(view)), message(1, avro(view, schema_id=7)),
                 message(2, avro(view)[:-3])],
                parse_sources("shop-events=shop:web"),
                MessageBuilder(serde, "kizuna.", partitions=4), load(IngestSettings, {}))
    touchpoints, dead = decoded(serde, out.messages)
    assert [(t["event_id"], t["anonymous_id"], t["customer_id"], t["properties"])
            for t in touchpoints] == [("a1", "dev-1", None, {"page": "/p/1"})]
    assert touchpoints[0]["occurred_at"] == view["occurred_at"]
    assert [(d["reason"], d["origin_offset"]) for d in dead] == [
        ("unknown_schema", 1), ("undecodable", 2)]


def test_readiness_names_a_consumer_that_stopped_or_a_batch_failing_past_the_stall_time():
    import threading
    import time

    from services.ingest.sources import SourceRelay

    relay_ = object.__new__(SourceRelay)  # the loop's state alone, no Kafka
    relay_.settings = load(IngestSettings, {"KIZUNA_STALL_SECONDS": "60"})
    relay_.stopping = threading.Event()
    relay_.thread = threading.Thread(target=lambda: None)
    relay_.thread.start()
    relay_.thread.join()
    relay_.failing_since, relay_.error = None, "KafkaException: coordinator gone"
    assert "consumer stopped: KafkaException" in relay_.problem()
    relay_.stopping.set()  # stopped on purpose: not a problem
    assert relay_.problem() is None
    relay_.failing_since = time.monotonic() - 61
    relay_.error = "schema registry unreachable"
    assert relay_.problem() == ("source topics: no batch relayed for over 60 s: "
                                "schema registry unreachable")
    relay_.failing_since = time.monotonic() - 5
    assert relay_.problem() is None


def test_a_fetched_batch_goes_on_in_event_time_order():
    """Messages fetched from several partitions of a source topic come interleaved; the relay
    sends them on in event-time order, as an import does."""
    serde = default_serde()
    times = ["2024-03-13T10:30:00Z", "2024-03-13T10:10:00Z", "2024-03-13T10:20:00Z"]
    consumed = [message(k, event(k, customer_id="C1", occurred_at=t), partition=k)
                for k, t in enumerate(times)]
    out = relay(consumed, parse_sources("shop-events=shop:web"),
                MessageBuilder(serde, "kizuna.", partitions=4), load(IngestSettings, {}))
    touchpoints, _ = decoded(serde, out.messages)
    assert [t["event_id"] for t in touchpoints] == ["e1", "e2", "e0"]
