"""Read Kizuna's alerts with nothing but confluent-kafka and the schema registry.

No `schemas/`, no Kizuna code: each value carries its schema's id (Confluent's wire format),
and the deserializer fetches that schema from the registry once. Keep the highest `version`
per `alert_id` (delivery is at-least-once).

    pip install 'confluent-kafka[avro,schemaregistry]'
    python examples/consume_alerts.py --bootstrap 127.0.0.1:9092 \
        --registry http://127.0.0.1:8081/apis/ccompat/v7 [--idle-timeout 10] [--json]
"""

import argparse
import json
import time

from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bootstrap", default="127.0.0.1:9092")
    parser.add_argument("--registry", default="http://127.0.0.1:8081/apis/ccompat/v7")
    parser.add_argument("--prefix", default="kizuna.")
    parser.add_argument("--group", default="crm")
    parser.add_argument("--idle-timeout", type=float, default=None,
                        help="stop after this many seconds without a message")
    parser.add_argument("--json", action="store_true", help="one JSON object a line")
    args = parser.parse_args()

    registry = SchemaRegistryClient({"url": args.registry})
    deserialize = AvroDeserializer(registry)  # the writer's schema, found by the value's id
    consumer = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                         "auto.offset.reset": "earliest", "enable.auto.commit": True})
    topics = [args.prefix + "alerts.cart_abandonment", args.prefix + "alerts.churn_risk"]
    consumer.subscribe(topics)
    latest: dict[str, int] = {}  # alert_id -> highest version seen
    last = time.monotonic()
    try:
        while args.idle_timeout is None or time.monotonic() - last < args.idle_timeout:
            msg = consumer.poll(1.0)
            if msg is None or msg.error():
                continue
            last = time.monotonic()
            alert = deserialize(msg.value(), SerializationContext(msg.topic(), MessageField.VALUE))
            if alert["version"] <= latest.get(alert["alert_id"], 0):
                continue  # a copy, or older than what was acted on
            latest[alert["alert_id"]] = alert["version"]
            if args.json:
                print(json.dumps(alert, default=str), flush=True)
            else:
                print(alert["alert_type"], alert["alert_id"], alert["status"],
                      alert["customer_id"], alert["reasons"], alert["recommended_action"],
                      alert["recommended_channel"], flush=True)
    finally:
        consumer.close()


if __name__ == "__main__":
    main()
