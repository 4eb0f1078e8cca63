"""Real tracking SDKs, unchanged, pointed at the collector: Segment's Python and Node SDKs and
RudderStack's Python SDK speak Segment's HTTP Tracking API; one customer across them and
Kizuna's own `/v1/events` is one profile in ClickHouse."""

from __future__ import annotations

import base64
import datetime as dt
import gzip
import json
import os
import shutil
import subprocess
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from services.common.serde import DEAD_LETTER
from services.common.topics import TOUCHPOINTS_DLQ
from tests.conftest import kizuna, services_stack, stack_serde
from tests.integration.test_collector import read_topic
from tests.integration.test_sessionizer import Clock

NODE_SDK = "@segment/analytics-node@3.1.0"
NODE_SCRIPT = Path(__file__).with_name("trackers") / "segment_node.cjs"
WEB = {"userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/133.0",
       "page": {"path": "/p/1", "url": "https://shop.example/p/1"}}
IOS = {"os": {"name": "iOS", "version": "18.1"}, "app": {"version": "4.2.0"}}


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """Segment's Node SDK, installed with npm once into the download cache."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is required for the Node SDK test (apt-get install npm)")
    prefix = Path(os.environ.get("KIZUNA_CACHE_DIR", "~/.cache/kizuna")).expanduser() / "npm"
    package = prefix / "node_modules" / "@segment" / "analytics-node" / "package.json"
    if not package.exists() or json.loads(package.read_text())["version"] != \
            NODE_SDK.rsplit("@", 1)[1]:
        prefix.mkdir(parents=True, exist_ok=True)
        subprocess.run([npm, "install", "--silent", "--no-audit", "--no-fund", "--prefix",
                        str(prefix), NODE_SDK], check=True, timeout=300)
    return prefix / "node_modules"


def collector(stack) -> str:
    return f"http://127.0.0.1:{stack['KIZUNA_INGEST_PORT']}"


def iso(t: dt.datetime) -> str:
    return t.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def test_segment_rudderstack_and_node_sdks_make_one_customer(stack, node_modules) -> None:
    tag = f"sdk{uuid.uuid4().hex[:8]}"
    customer, device = f"{tag}-C1", f"{tag}-dev"
    t0 = Clock.start()  # the session stack's event time: this test's own week
    at = [t0 + dt.timedelta(minutes=m) for m in range(10)]
    errors: list = []

    # Segment's Python SDK, as shipped: its own batching thread, gzip, Basic auth
    segment = SegmentClient("key-shop", host=collector(stack), gzip=True, max_retries=1,
                            on_error=lambda exc, batch: errors.append(repr(exc)))
    segment.page(anonymous_id=device, name="Product", properties={"path": "/p/1"},
                 context=WEB, timestamp=at[0], message_id=f"{tag}-page")
    segment.identify(user_id=customer, anonymous_id=device, context=WEB, timestamp=at[1],
                     traits={"email": "Ann.Sdk@Example.com", "plan": "gold",
                             "address": {"city": "Lyon"}}, message_id=f"{tag}-identify")
    segment.track(user_id=customer, event="Product Added", context=WEB, timestamp=at[2],
                  properties={"cart_id": f"{tag}-K", "product_id": "P1", "price": 19.9,
                              "quantity": 2, "currency": "EUR"}, message_id=f"{tag}-add")
    segment.alias(previous_id=f"{tag}-old", user_id=customer, timestamp=at[3],
                  message_id=f"{tag}-alias")
    segment.flush()
    segment.join()

    # RudderStack's Python SDK, one request a call: the order, from the app
    rudder = RudderClient("key-shop", host=collector(stack), sync_mode=True, max_retries=1,
                          on_error=lambda exc, batch: errors.append(repr(exc)))
    rudder.track(user_id=customer, event="Order Completed", context=IOS, timestamp=at[4],
                 properties={"order_id": f"{tag}-O", "revenue": 39.8, "currency": "EUR",
                             "products": [{"product_id": "P1", "price": 19.9, "quantity": 2}]},
                 message_id=f"{tag}-order")

    # Segment's Node SDK
    subprocess.run(["node", str(NODE_SCRIPT), collector(stack), "key-shop", tag, customer,
                    iso(at[5])], env={**os.environ, "NODE_PATH": str(node_modules)},
                   check=True, timeout=120, capture_output=True, text=True)

    # and Kizuna's own format
    own = {"event_id": f"{tag}-own", "event_type": "page_view", "channel": "web",
           "occurred_at": iso(at[6]), "customer_id": customer}
    request = urllib.request.Request(
        collector(stack) + "/v1/events", data=json.dumps(own).encode(), method="POST",
        headers={"Authorization": "Bearer key-shop", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as resp:
        assert resp.status == 202
    assert errors == []

    kizuna(stack, "wait", "--timeout", "180")
    rows = {r["event_id"]: r for r in map(json.loads, kizuna(
        stack, "query", "--format", "json",
        "SELECT event_id, event_type, channel, customer_id, anonymous_id, cart_id, order_id, "
        "product_id, quantity, unit_price, value, currency, properties, sent_at, "
        "toUnixTimestamp64Milli(event_time) AS t, session_id FROM kizuna.touchpoints "
        f"WHERE startsWith(event_id, '{tag}-')").stdout.splitlines())}
    expected = {  # event_id -> (event_type, channel, at)
        "page": ("page_view", "web", 0), "identify": ("identify", "web", 1),
        "add": ("cart_add", "web", 2), "alias": ("identify", "other", 3),
        "order": ("purchase", "app", 4), "node-view": ("product_view", "app", 5),
        "node-open": ("app_open", "app", 5), "own": ("page_view", "web", 6)}
    assert {k.removeprefix(f"{tag}-") for k in rows} == set(expected)
    for suffix, (event_type, channel, minute) in expected.items():
        row = rows[f"{tag}-{suffix}"]
        assert (row["event_type"], row["channel"]) == (event_type, channel), row
        # every touch is the customer's: the anonymous page view too, by the identify
        assert row["customer_id"] == customer, row
        # the SDK's timestamp, through the clock-skew correction with its sentAt
        assert abs(row["t"] - at[minute].timestamp() * 1000) < 10_000, row
        if suffix != "own":
            assert row["sent_at"] is not None, row
    add, order = rows[f"{tag}-add"], rows[f"{tag}-order"]
    assert (add["cart_id"], add["product_id"], add["quantity"], add["unit_price"],
            add["value"], add["currency"]) == (f"{tag}-K", "P1", 2, 19.9, 39.8, "EUR")
    assert (order["order_id"], order["value"], order["currency"]) == (f"{tag}-O", 39.8, "EUR")
    assert order["properties"]["product_ids"] == "P1"
    identify = rows[f"{tag}-identify"]
    assert identify["properties"]["plan"] == "gold"
    assert identify["properties"]["address.city"] == "Lyon"
    assert "ann.sdk@example.com" not in json.dumps(rows).lower()  # traits' PII hashed
    assert rows[f"{tag}-alias"]["anonymous_id"] == f"{tag}-old"
    assert len({r["session_id"] for r in rows.values() if r["channel"] != "other"}) == 1

    profile = json.loads(kizuna(
        stack, "query", "--format", "json",
        "SELECT purchase_count, total_revenue, mapKeys(channel_scores) AS channels "
        f"FROM kizuna.customer_profiles WHERE customer_id = '{customer}'").stdout)
    assert profile["purchase_count"] == 1 and profile["total_revenue"] == 39.8
    assert {"web", "app"} <= set(profile["channels"])


def post(stack, path: str, body: object, headers: dict | None = None,
         compress: bool = False) -> tuple[int, dict]:
    data = json.dumps(body).encode()
    headers = {"Content-Type": "application/json", **(headers or {})}
    if compress:
        data, headers["Content-Encoding"] = gzip.compress(data), "gzip"
    request = urllib.request.Request(collector(stack) + path, data=data, method="POST",
                                     headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err)


def basic(key: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def test_the_tracking_api_answers_as_segment_does(stack) -> None:
    tag = f"seg{uuid.uuid4().hex[:8]}"
    message = {"userId": f"{tag}-C", "event": "Coupon Applied", "messageId": f"{tag}-1",
               "timestamp": "2024-03-09T16:00:00Z", "properties": {"coupon": "X"}}
    # the key as Basic user, or in the body; one message per call, or a batch
    assert post(stack, "/v1/track", message, basic("key-shop")) == \
        (200, {"success": True, "accepted": 1, "rejected": []})
    assert post(stack, "/v1/track", {**message, "writeKey": "key-shop"})[0] == 200
    status, answer = post(stack, "/v1/batch", {"batch": [
        {**message, "type": "track", "messageId": f"{tag}-2"},
        {"type": "track", "event": "No Id", "userId": "x", "timestamp": "2024-03-09T16:00:00Z",
         "properties": {"email": "Leak@Example.com"}}]}, basic("key-shop"), compress=True)
    assert status == 200 and answer["accepted"] == 1
    assert [(r["index"], r["reason"], r["field"]) for r in answer["rejected"]] == \
        [(1, "missing_field", "event_id")]
    # errors in Segment's shape, which its SDKs log
    status, answer = post(stack, "/v1/track", message, basic("wrong-key"))
    assert status == 401 and answer["code"] == "unauthorized" and answer["message"]
    assert post(stack, "/v1/batch", {"events": []}, basic("key-shop"))[0] == 400
    # the refused message is a dead letter as it was sent, its PII hashed
    serde = stack_serde(stack)
    letters = read_topic(stack, TOUCHPOINTS_DLQ.name("kizuna."), lambda m: b"No Id" in (
        serde.decode(DEAD_LETTER, m.value())["payload"]), 1)
    letter = serde.decode(DEAD_LETTER, letters[0].value())
    payload = json.loads(letter["payload"])
    assert letter["reason"] == "missing_field" and payload["event"] == "No Id"
    assert "leak@example.com" not in letter["payload"].decode().lower()
    kizuna(stack, "wait", "--timeout", "120")
    out = kizuna(stack, "query", "--format", "json", "SELECT event_type, properties FROM "
                 f"kizuna.touchpoints WHERE startsWith(event_id, '{tag}-')").stdout
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["event_type"] for r in rows] == ["coupon_applied"] * 2  # a copy counted once
    assert rows[0]["properties"]["coupon"] == "X"


def test_snowplow_trackers_post_and_pixel_land_as_touchpoints(stack) -> None:
    # a stack of its own: the tracker's own clock (dtm, stm) puts a touch at today, which
    # would move the session stack's event time past the other tests' weeks
    with services_stack(stack, "sp") as env:
        snowplow_trackers(env)


def snowplow_trackers(stack: dict) -> None:
    from snowplow_tracker import Emitter, SelfDescribingJson, Subject, Tracker
    from snowplow_tracker.events import PageView, SelfDescribing, StructuredEvent

    tag = f"sp{uuid.uuid4().hex[:8]}"
    customer, device = f"{tag}-C1", f"{tag}-duid"
    t0 = Clock.start()
    ms = [int((t0 + dt.timedelta(minutes=m)).timestamp() * 1000) for m in range(5)]
    failures: list = []
    emitter = Emitter("127.0.0.1", protocol="http", port=int(stack["KIZUNA_INGEST_PORT"]),
                      method="post", batch_size=10,
                      on_failure=lambda sent, unsent: failures.append(unsent))
    anonymous = Subject().set_platform("web").set_domain_user_id(device)
    known = Subject().set_platform("mob").set_domain_user_id(device).set_user_id(customer)
    tracker = Tracker(namespace="kz", emitters=emitter, app_id="sp-shop")
    page = tracker.track(PageView(page_url="https://shop.example/p/1", page_title="P1",
                                  event_subject=anonymous, true_timestamp=ms[0]))
    cart = tracker.track(SelfDescribing(SelfDescribingJson(
        "iglu:com.snowplowanalytics.snowplow/add_to_cart/jsonschema/1-0-0",
        {"sku": "P1", "quantity": 2, "unitPrice": 19.9, "currency": "EUR"}),
        event_subject=known, true_timestamp=ms[1]))
    action = tracker.track(StructuredEvent("shop", "Checkout Started", event_subject=known,
                                           true_timestamp=ms[2]))
    live = tracker.track(PageView(page_url="https://shop.example/", event_subject=known))
    tracker.flush()
    assert failures == []
    # the pixel, as a browser without JavaScript (or an email open) sends it
    pixel = urllib.request.urlopen(
        collector(stack) + f"/i?e=pv&eid={tag}-pixel&aid=sp-stores&p=srv&uid={customer}"
        f"&ttm={ms[3]}&url=https%3A%2F%2Fshop.example%2Freceipt", timeout=30)
    assert pixel.status == 200 and pixel.headers["Content-Type"] == "image/gif"
    # a tracker nobody configured is refused whole
    status, answer = post(stack, "/com.snowplowanalytics.snowplow/tp2", {
        "schema": "iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4",
        "data": [{"e": "pv", "eid": f"{tag}-stranger", "aid": "someone-else", "p": "web",
                  "duid": "x", "dtm": str(ms[0])}]})
    assert status == 401 and answer["error"] == "unknown_app_id"

    kizuna(stack, "wait", "--timeout", "180")
    rows = {r["event_id"]: r for r in map(json.loads, kizuna(
        stack, "query", "--format", "json",
        "SELECT event_id, event_type, channel, customer_id, anonymous_id, source, product_id, "
        "quantity, value, currency, toUnixTimestamp64Milli(event_time) AS t, "
        "toUnixTimestamp64Milli(received_at) AS r, sent_at FROM kizuna.touchpoints WHERE "
        f"event_id IN ('{page}', '{cart}', '{action}', '{live}', '{tag}-pixel', "
        f"'{tag}-stranger')").stdout.splitlines())}
    assert set(rows) == {page, cart, action, live, f"{tag}-pixel"}
    summary = {eid: (r["event_type"], r["channel"], r["customer_id"], r["t"])
               for eid, r in rows.items() if eid != live}
    assert summary == {page: ("page_view", "web", customer, ms[0]),  # claimed at the login
                       cart: ("cart_add", "app", customer, ms[1]),
                       action: ("checkout_start", "app", customer, ms[2]),
                       f"{tag}-pixel": ("page_view", "pos", customer, ms[3])}
    assert (rows[cart]["product_id"], rows[cart]["quantity"], rows[cart]["value"],
            rows[cart]["currency"]) == ("P1", 2, 39.8, "EUR")
    assert rows[f"{tag}-pixel"]["source"] == "stores" and rows[page]["source"] == "shop"
    # no true timestamp: the device's dtm, corrected with its stm
    assert rows[live]["sent_at"] is not None and abs(rows[live]["t"] - rows[live]["r"]) < 5000
