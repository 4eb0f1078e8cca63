"""Users' own topics as input (KIZUNA_SOURCE_TOPICS) on the real broker: events written to
topics of the user's, one or many a message, come out in ClickHouse as if posted to the
collector; what is not an event is a dead letter naming its topic, partition and offset; a
topic created after the stack started is consumed without a restart; `kizuna wait` and
`kizuna status` count the source topics."""

from __future__ import annotations

import json

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from services.common.queries import query_rows
from services.common.settings import Settings, load
from tests.conftest import kizuna, registry_url, services_stack

pytestmark = pytest.mark.integration


def event(i: int, channel: str = "web", **more) -> dict:
    return {"event_id": f"src-{i}", "event_type": "page_view", "channel": channel,
            "occurred_at": "2024-03-13T10:23:32Z", "customer_id": f"C{i % 4}", **more}


AVRO_SCHEMA = json.dumps({
    "type": "record", "name": "AppEvent", "namespace": "com.example.backend", "fields": [
        {"name": "event_id", "type": "string"},
        {"name": "event_type", "type": "string"},
        {"name": "channel", "type": "string"},
        {"name": "occurred_at", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "customer_id", "type": ["null", "string"], "default": None},
    ]})


def avro_values(stack, topic: str, records: list[dict]) -> list[bytes]:
    """Values as a stock Confluent producer writes them: confluent-kafka's AvroSerializer,
    the schema registered by it under the topic's subject."""
    import datetime as dt

    from confluent_kafka.schema_registry import SchemaRegistryClient
    from confluent_kafka.schema_registry.avro import AvroSerializer
    from confluent_kafka.serialization import MessageField, SerializationContext

    serializer = AvroSerializer(SchemaRegistryClient({"url": registry_url(stack)}), AVRO_SCHEMA)
    context = SerializationContext(topic, MessageField.VALUE)
    return [serializer({**r, "occurred_at": dt.datetime(2024, 3, 13, 11, tzinfo=dt.UTC)},
                       context) for r in records]


def test_events_on_users_own_topics_reach_clickhouse_and_bad_ones_are_dead_letters(stack):
    web, orders, app = "kzsrc-web-events", "kzsrc-orders", "kzsrc-app-avro"
    bootstrap = f"127.0.0.1:{stack['KIZUNA_KAFKA_PORT']}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})

    def send(topic: str, values: list[object], partition: int = 0) -> None:
        for v in values:
            producer.produce(topic, v if isinstance(v, bytes) else json.dumps(v).encode(),
                             partition=partition)
        assert producer.flush(30) == 0

    spec = f"{web}=snowplow:web|app;{orders}=orders-cdc:pos;{app}=backend:app"
    with services_stack(stack, "src", KIZUNA_SOURCE_TOPICS=spec) as env:
        settings = load(Settings, env)
        status = kizuna(env, "status").stdout
        assert f"source topics not found (consumed once they exist): {web}, {orders}, {app}" \
            in status

        for f in admin.create_topics([NewTopic(web, 2, 1), NewTopic(app, 1, 1)]).values():
            f.result()
        send(web, [event(1), [event(2), event(3, channel="app")], {"events": [event(4)]}])
        send(app, avro_values(stack, app, [
            {"event_id": "src-8", "event_type": "login", "channel": "app", "customer_id": "C8"},
            {"event_id": "src-9", "event_type": "page_view", "channel": "app",
             "customer_id": None}]))
        send(web, [b"{not json", event(5, channel="pos")], partition=1)  # pos: not this topic's
        waited = kizuna(env, "wait", "--timeout", "120").stdout
        assert "kzsrc.ingest lag 0" in waited, waited

        rows = query_rows(settings, "SELECT event_id, source, channel FROM kizuna.touchpoints "
                                    "ORDER BY event_id")
        assert rows == [{"event_id": f"src-{i}", "source": "snowplow",
                         "channel": "app" if i == 3 else "web"} for i in (1, 2, 3, 4)] + [
            {"event_id": "src-8", "source": "backend", "channel": "app"}]
        dead = query_rows(settings, "SELECT reason, origin_topic, origin_partition, "
                                    "origin_offset FROM kizuna.dead_letters ORDER BY reason")
        assert dead == [
            {"reason": "channel_not_allowed", "origin_topic": web, "origin_partition": 1,
             "origin_offset": 1},
            {"reason": "invalid_json", "origin_topic": web, "origin_partition": 1,
             "origin_offset": 0},
            {"reason": "missing_identity", "origin_topic": app, "origin_partition": 0,
             "origin_offset": 1}]
        assert orders in kizuna(env, "status").stdout  # still missing

        # created later: consumed without a restart
        for f in admin.create_topics([NewTopic(orders, 1, 1)]).values():
            f.result()
        send(orders, [[event(i, channel="pos", event_type="purchase",
                             commerce={"order_id": f"o{i}", "value": 10.0 * i})
                       for i in (6, 7)]])
        kizuna(env, "wait", "--timeout", "120")
        rows = query_rows(settings, "SELECT event_id, source, value FROM kizuna.touchpoints "
                                    "WHERE source = 'orders-cdc' ORDER BY event_id")
        assert rows == [{"event_id": "src-6", "source": "orders-cdc", "value": 60.0},
                        {"event_id": "src-7", "source": "orders-cdc", "value": 70.0}]
        assert "source topics not found" not in kizuna(env, "status").stdout
