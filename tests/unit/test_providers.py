"""Email providers' webhooks: their documented payloads, verified and mapped (pure)."""

import base64
import hashlib
import hmac
import json
import time

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


def sns(message: dict | str, kind: str = "Notification", version: str = "1",
        at: float = NOW, key=None, **extra) -> dict:
    """An SNS envelope as Amazon sends it, signed as SNS signs (the string-to-sign of its
    documentation)."""
    from cryptography.hazmat.primitives.asymmetric import padding

    from tests.conftest import SNS_KEY

    envelope = {"Type": kind, "MessageId": "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
                "TopicArn": "arn:aws:sns:us-east-1:123456789012:ses-events",
                "Message": message if isinstance(message, str) else json.dumps(message),
                "Timestamp": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(at)),
                "SignatureVersion": version,
                "SigningCertURL": "https://sns.us-east-1.amazonaws.com/cert.pem", **extra}
    text = "".join(f"{name}\n{envelope[name]}\n" for name in providers.SNS_SIGNED[kind]
                   if envelope.get(name) is not None)
    digest = hashes.SHA1() if version == "1" else hashes.SHA256()
    envelope["Signature"] = base64.b64encode((key or SNS_KEY).sign(
        text.encode(), padding.PKCS1v15(), digest)).decode()
    return envelope


SES_CLICK = {  # an SES event as its documentation shows it (event publishing, Click)
    "eventType": "Click",
    "mail": {"timestamp": "2024-03-09T15:59:00.000Z", "source": "shop@example.com",
             "messageId": "EXAMPLE7c191be45-e9aedb9a-02f9-4d12-a87d-dd0099a07f8a-000000",
             "destination": ["Recipient@Example.com"],
             "tags": {"kizuna_customer_id": ["C10"], "campaign": ["spring"]}},
    "click": {"timestamp": "2024-03-09T15:59:53.000Z", "link": "https://shop.example/p/1",
              "ipAddress": "192.0.2.1", "userAgent": "Mozilla/5.0"},
}


def test_sns_signatures_of_both_versions_and_what_is_refused():
    from cryptography.hazmat.primitives.asymmetric import rsa

    from tests.conftest import SNS_CERTIFICATE

    for version in ("1", "2"):
        assert providers.sns_problem(SNS_CERTIFICATE, sns(SES_CLICK, version=version), NOW,
                                     300) is None
    forged = dict(sns(SES_CLICK), Message=json.dumps(dict(SES_CLICK, eventType="Bounce")))
    assert "does not verify" in providers.sns_problem(SNS_CERTIFICATE, forged, NOW, 300)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert "does not verify" in providers.sns_problem(SNS_CERTIFICATE,
                                                      sns(SES_CLICK, key=stranger), NOW, 300)
    assert "off" in providers.sns_problem(SNS_CERTIFICATE, sns(SES_CLICK, at=NOW - 900), NOW,
                                          300)
    confirm = sns("You have chosen to subscribe", "SubscriptionConfirmation",
                  SubscribeURL="https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
                  Token="2336412f37")
    assert providers.sns_problem(SNS_CERTIFICATE, confirm, NOW, 300) is None


def test_ses_events_map_to_the_email_vocabulary():
    (click,) = records(providers.ses_events(sns(SES_CLICK), "s"))
    assert (click["event_type"], click["customer_id"], click["event_time"]) == \
        ("email_click", "C10", 1709999993000)
    assert click["properties"]["url"] == "https://shop.example/p/1"
    assert click["context"] == {"campaign": "spring"}
    bounce = {"notificationType": "Bounce",
              "bounce": {"bounceType": "Permanent", "timestamp": "2024-03-09T15:59:58.000Z",
                         "bouncedRecipients": [{"emailAddress": "a@example.com"},
                                               {"emailAddress": "b@example.com"}]},
              "mail": {"timestamp": "2024-03-09T15:59:00.000Z", "messageId": "m",
                       "destination": ["a@example.com", "b@example.com"]}}
    out = records(providers.ses_events(sns(bounce), "s"))
    assert [r["event_type"] for r in out] == ["email_bounce", "email_bounce"]
    assert len({r["anonymous_id"] for r in out}) == 2 and not any(r["customer_id"] for r in out)
