"""Avro touchpoints through the real broker started by `kizuna up`."""

import datetime as dt
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import ConfigResource

from services.common.kafka import admin_client
from services.common.serde import TOUCHPOINT, DecodeError, default_serde
from services.common.topics import ENGAGEMENT_SCORES, PUBLIC_TOPICS, TOUCHPOINTS_RAW
from tests.conftest import kizuna

pytestmark = pytest.mark.integration
T0 = dt.datetime(2024, 3, 13, 10, 0, tzinfo=dt.UTC)


def make_touchpoint(i: int, tag: str) -> dict:
    at = T0 + dt.timedelta(seconds=i)
    return {
        "event_id": f"{tag}-{i}", "event_type": ("page_view", "cart_add", "purchase")[i % 3],
        "channel": ("web", "app", "pos")[i % 3], "occurred_at": at, "sent_at": None,
        "received_at": at, "event_time": at, "customer_id": f"C{i % 7}", "anonymous_id": None,
        "source": "test", "properties": {"i": i},
        "commerce": {"cart_id": "K", "order_id": None, "product_id": "P", "quantity": 1,
                     "unit_price": 2.5, "value": 2.5, "currency": "EUR"},
        "context": {},
    }


def test_avro_touchpoints_round_trip_through_the_broker(stack_settings):
    serde = default_serde()
    topic = TOUCHPOINTS_RAW.name(stack_settings.topic_prefix)
    tag = f"rt{uuid.uuid4().hex[:8]}"  # the topic is shared with other tests
    sent = [make_touchpoint(i, tag) for i in range(200)]
    producer = Producer({"bootstrap.servers": stack_settings.kafka_bootstrap,
                         "enable.idempotence": True, "acks": "all", "compression.type": "zstd"})
    failures = []
    for record in sent:
        producer.produce(topic, key=record["customer_id"], value=serde.encode(TOUCHPOINT, record),
                         on_delivery=lambda err, msg: err and failures.append(err))
    assert producer.flush(30) == 0 and not failures

    consumer = Consumer({"bootstrap.servers": stack_settings.kafka_bootstrap,
                         "group.id": f"test-{uuid.uuid4()}", "auto.offset.reset": "earliest",
                         "enable.auto.commit": False})
    consumer.subscribe([topic])
    received, partitions_by_key = {}, {}
    try:
        while len(received) < len(sent):
            msgs = consumer.consume(500, timeout=10)
            assert msgs, f"only {len(received)} of {len(sent)} touchpoints came back"
            for msg in msgs:
                assert msg.error() is None
                if msg.headers():  # control records (watermarks) share the topic
                    continue
                try:
                    record = serde.decode(TOUCHPOINT, msg.value())
                except DecodeError:  # poison bytes other tests write on purpose
                    continue
                if not record["event_id"].startswith(tag + "-"):
                    continue
                received[record["event_id"]] = record
                partitions_by_key.setdefault(msg.key(), set()).add(msg.partition())
    finally:
        consumer.close()
    assert received == {r["event_id"]: r for r in sent}
    # Keyed by profile: each customer's touchpoints stay on one partition, in order.
    assert all(len(p) == 1 for p in partitions_by_key.values())
    assert len({p for ps in partitions_by_key.values() for p in ps}) > 1


def test_topics_exist_as_declared(stack, stack_settings):
    admin = admin_client(stack_settings)
    topics = admin.list_topics(timeout=10).topics
    for spec in PUBLIC_TOPICS:
        name = spec.name(stack_settings.topic_prefix)
        assert len(topics[name].partitions) == (4 if spec.keyed else 1)
    scores = ConfigResource("topic", ENGAGEMENT_SCORES.name(stack_settings.topic_prefix))
    config = admin.describe_configs([scores])[scores].result(10)
    assert config["cleanup.policy"].value == "compact,delete"
    again = kizuna(stack, "topics", "create").stdout
    topic_lines = [line for line in again.splitlines() if "partition(s)" in line]
    assert len(topic_lines) == len(PUBLIC_TOPICS) and "created" not in again
    assert all(" exists " in line for line in topic_lines)
    assert "registered" not in again  # nor any new schema version
