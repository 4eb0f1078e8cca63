import datetime as dt
import io
import json

import fastavro
import pytest
from fastavro.schema import parse_schema
from hypothesis import given
from hypothesis import strategies as st

from services.common.serde import (
    ALERT,
    DEAD_LETTER,
    ENGAGEMENT_PROFILE,
    ERASE,
    MAGIC,
    SCHEMAS_DIR,
    SESSION,
    TOUCHPOINT,
    TOUCHPOINT_BATCH,
    WATERMARK,
    AvroSerde,
    DecodeError,
    Registry,
    RegistryError,
    default_serde,
    read_schema_files,
)

UTC = dt.UTC
T0 = dt.datetime(2024, 3, 13, 10, 23, 32, tzinfo=UTC)


def touchpoint(**overrides):
    record = {
        "event_id": "e-1", "event_type": "cart_add", "channel": "web",
        "occurred_at": T0, "sent_at": None, "received_at": T0, "event_time": T0,
        "customer_id": "C123", "anonymous_id": "dev-9f1", "source": "shop",
        "properties": {"page": "/p/42", "score": 9, "ratio": 0.5, "logged_in": True},
        "commerce": {"cart_id": "K1", "order_id": None, "product_id": "P42", "quantity": 1,
                     "unit_price": 19.9, "value": 19.9, "currency": "EUR"},
        "context": {"campaign": "spring"},
    }
    record.update(overrides)
    return record


SAMPLES = {
    TOUCHPOINT: touchpoint(),
    SESSION: {
        "session_id": "s-1", "profile_id": "C1", "customer_id": "C1", "anonymous_ids": ["d1"],
        "started_at": T0, "ended_at": T0, "event_count": 3, "channels": ["app", "web"],
        "event_type_counts": {"page_view": 2, "purchase": 1}, "purchase_count": 1,
        "revenue": 42.0, "entry_event_type": "page_view", "exit_event_type": "purchase",
        "status": "closed", "merged_into": None, "version": 2,
    },
    ENGAGEMENT_PROFILE: {
        "customer_id": "C1", "engagement_score": 12.5, "tier": "high",
        "channel_scores": {"web": 10.0, "email": 2.5}, "last_event_at": T0,
        "purchase_count": 3, "total_revenue": 99.0, "first_purchase_at": T0,
        "last_purchase_at": T0, "frequency": 2, "recency": 10.0, "T": 30.0,
        "monetary_value": 33.0, "rfm_segment": "champions", "top_revenue_20": True,
        "preferred_channel": "web", "reachable_channels": ["app", "web"],
        "median_interpurchase_days": 5.0, "as_of": T0, "version": 7,
    },
    ALERT: {
        "alert_id": "a-1", "alert_type": "cart_abandonment", "status": "open",
        "customer_id": "C1", "anonymous_id": None, "detected_at": T0, "emitted_at": T0,
        "reasons": ["cart_inactive_60m"], "severity": 2, "evidence_event_ids": ["e-1"],
        "cart": {"cart_id": "K1", "items": [{"product_id": "P42", "quantity": 1,
                                             "unit_price": 19.9}], "value": 19.9,
                 "currency": "EUR"},
        "score_snapshot": None, "recommended_channel": "app",
        "recommended_action": "cart_reminder", "version": 1,
    },
    WATERMARK: {"watermark_time": T0, "source": "import", "issued_at": T0},
    ERASE: {"customer_id": "C1", "requested_at": T0},
    TOUCHPOINT_BATCH: {"touchpoints": [touchpoint(), touchpoint(event_id="e-2")]},
    DEAD_LETTER: {
        "dead_letter_id": "d-1", "reason": "invalid_channel", "detail": "channel: 'fax'",
        "stage": "ingest", "source": "shop", "payload": b'{"channel": "fax"}',
        "received_at": T0, "origin_topic": None, "origin_partition": None, "origin_offset": None,
    },
}


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_every_public_schema_round_trips(name):
    serde = default_serde()
    data = serde.encode(name, SAMPLES[name])
    assert data[:2] == MAGIC and data[2:10] == serde.schema(name).fingerprint
    assert serde.decode(name, data) == SAMPLES[name]


def test_every_schema_file_has_a_sample_and_documents_every_field():
    schemas = read_schema_files(SCHEMAS_DIR)
    assert set(schemas) == set(SAMPLES)

    def fields(schema):
        for f in schema.get("fields", []):
            yield f
            for t in f["type"] if isinstance(f["type"], list) else [f["type"]]:
                if isinstance(t, dict) and t.get("type") == "record":
                    yield from fields(t)
                if isinstance(t, dict) and t.get("type") == "array" \
                        and isinstance(t["items"], dict):
                    yield from fields(t["items"])
    for name, schema in schemas.items():
        for f in fields(schema):
            assert f.get("doc"), f"{name}.{f['name']} has no doc"


scalar = st.one_of(
    st.text(max_size=20), st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False))


@given(props=st.dictionaries(st.text(max_size=10), scalar, max_size=8),
       event_id=st.text(min_size=1, max_size=128))
def test_property_values_keep_their_type(props, event_id):
    serde = default_serde()
    back = serde.decode(TOUCHPOINT, serde.encode(
        TOUCHPOINT, touchpoint(properties=props, event_id=event_id)))
    assert back["event_id"] == event_id
    assert back["properties"] == props
    assert [type(v) for v in back["properties"].values()] == [type(v) for v in props.values()]


@pytest.mark.parametrize("data, reason", [
    (b"", "undecodable"),
    (b"not avro at all", "undecodable"),
    (b"\xc3\x01" + b"\x00" * 8 + b"\x02", "unknown_schema"),
])
def test_bytes_it_cannot_read_give_a_reason(data, reason):
    with pytest.raises(DecodeError) as err:
        default_serde().decode(TOUCHPOINT, data)
    assert err.value.reason == reason


def test_truncated_and_padded_data_are_refused():
    serde = default_serde()
    good = serde.encode(TOUCHPOINT, touchpoint())
    with pytest.raises(DecodeError, match="undecodable"):
        serde.decode(TOUCHPOINT, good[:-5])
    with pytest.raises(DecodeError, match="trailing bytes"):
        serde.decode(TOUCHPOINT, good + b"\x00")


def _evolved(schema, extra_field):
    evolved = json.loads(json.dumps(schema))
    evolved["fields"].append(extra_field)
    return evolved


V1 = {"type": "record", "name": "Thing", "namespace": "t",
      "fields": [{"name": "id", "type": "string"}]}
V2 = _evolved(V1, {"name": "tier", "type": "string", "default": "unknown"})


def test_new_data_with_a_defaulted_field_is_read_by_an_old_reader():
    new_writer = AvroSerde({"thing": V2})
    old_reader = AvroSerde({"thing": V1}, history=[V2])
    data = new_writer.encode("thing", {"id": "x", "tier": "gold"})
    assert old_reader.decode("thing", data) == {"id": "x"}


def test_old_data_is_read_by_a_new_reader_with_the_default():
    old_writer = AvroSerde({"thing": V1})
    new_reader = AvroSerde({"thing": V2}, history=[V1])
    data = old_writer.encode("thing", {"id": "x"})
    assert new_reader.decode("thing", data) == {"id": "x", "tier": "unknown"}


def test_a_reader_without_the_writer_schema_says_so():
    data = AvroSerde({"thing": V2}).encode("thing", {"id": "x", "tier": "gold"})
    with pytest.raises(DecodeError) as err:
        AvroSerde({"thing": V1}).decode("thing", data)
    assert err.value.reason == "unknown_schema"


class FakeRegistry(Registry):
    """A registry in memory: ids in registration order, counting what it is asked."""

    def __init__(self) -> None:
        self.schemas: list[dict] = []
        self.asked: list[int] = []
        self.down = False

    def add(self, schema: dict) -> int:
        self.schemas.append(schema)
        return len(self.schemas)

    def schema_id(self, name, schema):
        if schema not in self.schemas:
            self.add(schema)
        return self.schemas.index(schema) + 1

    def schema(self, schema_id):
        if self.down:
            raise RegistryError("unreachable")
        self.asked.append(schema_id)
        return self.schemas[schema_id - 1] if 0 < schema_id <= len(self.schemas) else None


def test_with_a_registry_values_carry_confluents_wire_format():
    registry = FakeRegistry()
    registry.add(V1)
    serde = AvroSerde({"thing": V2}, registry=registry)
    data = serde.encode("thing", {"id": "x", "tier": "gold"})
    assert data[0] == 0 and int.from_bytes(data[1:5], "big") == 2  # V2, registered second
    assert serde.decode("thing", data) == {"id": "x", "tier": "gold"}
    assert registry.asked == []  # its own id is known from encoding
    # a stock Avro reader of the datum after the 5-byte header
    assert fastavro.schemaless_reader(io.BytesIO(data[5:]), parse_schema(V2), None) == \
        {"id": "x", "tier": "gold"}


def test_a_registry_reader_takes_old_ids_and_single_object_encoding():
    registry = FakeRegistry()
    old_id = registry.add(V1)
    reader = AvroSerde({"thing": V2}, registry=registry)
    old = b"\x00" + old_id.to_bytes(4, "big") + AvroSerde({"thing": V1}).datum("thing", {"id": "o"})
    assert reader.decode("thing", old) == {"id": "o", "tier": "unknown"}
    assert reader.decode("thing", old) == {"id": "o", "tier": "unknown"}
    assert registry.asked == [old_id]  # once per id
    single = AvroSerde({"thing": V2}).encode("thing", {"id": "s", "tier": "t"})
    assert single[:2] == MAGIC and reader.decode("thing", single) == {"id": "s", "tier": "t"}


def test_an_unknown_id_is_a_dead_letter_reason_and_an_unreachable_registry_is_not():
    registry = FakeRegistry()
    reader = AvroSerde({"thing": V1}, registry=registry)
    unknown = b"\x00\x00\x00\x00\x63" + b"\x02x"
    for _ in range(2):
        with pytest.raises(DecodeError) as err:
            reader.decode("thing", unknown)
        assert err.value.reason == "unknown_schema" and "99" in err.value.detail
    assert registry.asked == [99]  # a missing id is asked once
    registry.down = True
    with pytest.raises(RegistryError):  # retried by the caller, not dead-lettered
        reader.decode("thing", b"\x00\x00\x00\x00\x07" + b"\x02x")
    with pytest.raises(DecodeError, match="no schema registry"):
        AvroSerde({"thing": V1}).decode("thing", unknown)


def test_epoch_ms_reads_timestamps_as_the_milliseconds_on_the_wire():
    serde = default_serde()
    ms = int(T0.timestamp() * 1000)
    one = serde.decode(TOUCHPOINT, serde.encode(TOUCHPOINT, touchpoint()), epoch_ms=True)
    assert one == {**touchpoint(), "occurred_at": ms, "received_at": ms, "event_time": ms}
    batch = serde.encode(TOUCHPOINT_BATCH, {"touchpoints": [touchpoint(), touchpoint(
        event_id="e-2", sent_at=T0 + dt.timedelta(seconds=1))]})
    read = serde.decode(TOUCHPOINT_BATCH, batch, epoch_ms=True)["touchpoints"]
    assert [r["sent_at"] for r in read] == [None, ms + 1000]
    assert serde.decode(TOUCHPOINT_BATCH, batch)["touchpoints"][1]["sent_at"] == \
        T0 + dt.timedelta(seconds=1)  # datetimes without it
    assert serde.decode(TOUCHPOINT, serde.encode(TOUCHPOINT, one)) == touchpoint()  # ints write


def test_epoch_ms_resolves_an_older_writer_schema_too():
    stamped = _evolved(V1, {"name": "at", "type": {"type": "long",
                                                   "logicalType": "timestamp-millis"}})
    newer = _evolved(stamped, {"name": "tier", "type": "string", "default": "unknown"})
    data = AvroSerde({"thing": stamped}).encode("thing", {"id": "x", "at": T0})
    reader = AvroSerde({"thing": newer}, history=[stamped])
    assert reader.decode("thing", data, epoch_ms=True) == {
        "id": "x", "at": int(T0.timestamp() * 1000), "tier": "unknown"}
