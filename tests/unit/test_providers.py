"""Email providers' webhooks: their documented payloads, verified and mapped (pure)."""

import base64
import hashlib
import hmac

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from services.ingest import providers
from services.ingest.validation import Enrichment, validate
from tests.conftest import MAILGUN_KEY, POSTMARK_LOGIN, SENDGRID_KEY, SENDGRID_PUBLIC

NOW = 1_710_000_000.0
RECEIVED = int(NOW * 1000)


def records(events):
    return [validate(e, Enrichment("webhook", RECEIVED, pii_properties=frozenset({"email"}),
                                   pii_salt="s")) for e in events]


def sendgrid_headers(body: bytes, at: float = NOW, key=SENDGRID_KEY) -> dict:
    timestamp = str(int(at))
    signature = key.sign(timestamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {providers.SENDGRID_SIGNATURE: base64.b64encode(signature).decode(),
            providers.SENDGRID_TIMESTAMP: timestamp}


def test_sendgrid_signatures_verify_and_forgeries_do_not():
    body = b'[{"email":"a@b.example","event":"open"}]'
    check = providers.sendgrid_problem
    assert check(SENDGRID_PUBLIC, sendgrid_headers(body), body, NOW, 300) is None
    assert "does not verify" in check(SENDGRID_PUBLIC, sendgrid_headers(body), body + b" ",
                                      NOW, 300)
    other = ec.generate_private_key(ec.SECP256R1())
    assert "does not verify" in check(SENDGRID_PUBLIC, sendgrid_headers(body, key=other),
                                      body, NOW, 300)
    assert "stale" in check(SENDGRID_PUBLIC, sendgrid_headers(body, NOW - 900), body, NOW, 300)
    assert "missing" in check(SENDGRID_PUBLIC, {}, body, NOW, 300)


def test_sendgrids_events_map_to_the_email_vocabulary():
    # as SendGrid's Event Webhook reference shows them, with a custom argument
    events = providers.sendgrid_events([
        {"email": "Example@Test.com", "timestamp": 1709999990, "smtp-id": "<14c5d75ce93.dfd>",
         "event": "click", "category": ["spring"], "sg_event_id": "sg_event_id_1",
         "sg_message_id": "sg_message_id.filter0001", "url": "https://shop.example/p/1",
         "kizuna_customer_id": "C7"},
        {"email": "example@test.com", "timestamp": 1709999995, "event": "unsubscribe",
         "sg_event_id": "sg_event_id_2", "sg_message_id": "m2"},
        {"email": "x@test.com", "timestamp": 1709999996, "event": "not-a-thing"}], "s")
    click, unsubscribe, unknown = records(events)
    assert (click["event_type"], click["customer_id"], click["event_id"]) == \
        ("email_click", "C7", "sendgrid:sg_event_id_1")
    assert click["properties"]["url"] == "https://shop.example/p/1"
    assert click["context"]["campaign"] == "spring" and click["channel"] == "email"
    assert unsubscribe["event_type"] == "email_unsubscribe"
    # no customer argument: the address, hashed, the same for any spelling of it
    assert unsubscribe["anonymous_id"] == click["anonymous_id"] == \
        "email:" + providers.pii_hash("example@test.com", "s")[:32]
    assert unknown.reason == "unknown_field"


def mailgun(event_data: dict, token: str = "a8ce0edb2dd8301dee6c2405235584e45aa91d1e9f979f3de0",
            at: float = NOW, key: str = MAILGUN_KEY) -> dict:
    timestamp = str(int(at))
    digest = hmac.new(key.encode(), (timestamp + token).encode(), hashlib.sha256).hexdigest()
    return {"signature": {"timestamp": timestamp, "token": token, "signature": digest},
            "event-data": event_data}


def test_mailgun_signatures_tokens_and_events():
    opened = {"event": "opened", "timestamp": 1709999990.908181, "id": "DACSsAdVSeGpLid7TN03WA",
              "recipient": "alice@example.com", "tags": ["spring"],
              "message": {"headers": {"message-id": "20130503182626.18666.16540@mg.example"}},
              "user-variables": {"kizuna_customer_id": "C8"}}
    tokens = providers.TokenCache()
    assert providers.mailgun_problem(MAILGUN_KEY, mailgun(opened), NOW, 300, tokens) is None
    assert "replayed" in providers.mailgun_problem(MAILGUN_KEY, mailgun(opened), NOW, 300,
                                                   tokens)
    assert "does not match" in providers.mailgun_problem(
        MAILGUN_KEY, mailgun(opened, "t2", key="wrong"), NOW, 300, tokens)
    assert "stale" in providers.mailgun_problem(MAILGUN_KEY, mailgun(opened, "t3", NOW - 900),
                                                NOW, 300, tokens)
    (record,) = records(providers.mailgun_events(mailgun(opened), "s"))
    assert (record["event_type"], record["customer_id"], record["event_time"]) == \
        ("email_open", "C8", 1709999990908)
    assert record["context"] == {"campaign": "spring"}


def test_postmark_basic_credentials_and_record_types():
    good = "Basic " + base64.b64encode(POSTMARK_LOGIN.encode()).decode()
    assert providers.postmark_problem(POSTMARK_LOGIN, good) is None
    assert providers.postmark_problem(POSTMARK_LOGIN, "Basic " + base64.b64encode(
        b"postmark:guess").decode()) is not None
    assert providers.postmark_problem(POSTMARK_LOGIN, None) is not None
    # as Postmark's webhook documentation shows them
    delivery = {"RecordType": "Delivery", "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483",
                "Recipient": "john@example.com", "DeliveredAt": "2024-03-09T15:59:50Z",
                "Tag": "welcome", "Metadata": {"kizuna_customer_id": "C9"}}
    click = {"RecordType": "Click", "MessageID": "m1", "Recipient": "john@example.com",
             "ReceivedAt": "2024-03-09T15:59:54.9070259Z",
             "OriginalLink": "https://example.com"}
    unsubscribe = {"RecordType": "SubscriptionChange", "MessageID": "m1",
                   "Recipient": "john@example.com", "ChangedAt": "2024-03-09T15:59:55Z",
                   "SuppressSending": True, "SuppressionReason": "ManualSuppression"}
    bounce = {"RecordType": "Bounce", "MessageID": "m2", "Email": "john@example.com",
              "BouncedAt": "2024-03-09T15:59:56Z", "Type": "HardBounce"}
    out = records([e for p in (delivery, click, unsubscribe, bounce)
                   for e in providers.postmark_events(p, "s")])
    assert [r["event_type"] for r in out] == ["email_send", "email_click", "email_unsubscribe",
                                              "email_bounce"]
    assert out[0]["customer_id"] == "C9" and out[0]["context"] == {"campaign": "welcome"}
    assert out[1]["event_time"] == 1709999994907 and out[1]["properties"]["url"] == \
        "https://example.com"
    assert len({r["anonymous_id"] for r in out}) == 1  # the same recipient
