"""Email providers' webhooks against the running collector: each provider's documented
payload, signed with test keys, lands as email touchpoints of the right customer; forged,
stale and replayed copies are refused with 401 and produce nothing."""

from __future__ import annotations

import base64
import json
import time
import uuid

from tests.conftest import POSTMARK_LOGIN, kizuna
from tests.integration.test_collector import post
from tests.integration.test_sessionizer import Clock
from tests.unit.test_providers import SES_CLICK, mailgun, sendgrid_headers, sns

PATH = "/v1/webhooks/email/"


def test_each_providers_webhook_lands_and_forgeries_do_not(stack) -> None:
    tag = uuid.uuid4().hex[:10]
    now = time.time()  # the signatures' time; the events' own, this test's week
    customer = f"C-{tag}"
    at = int(Clock.start().timestamp())
    sendgrid = json.dumps([
        {"email": f"{tag}@example.com", "timestamp": at, "event": "delivered",
         "sg_event_id": f"{tag}-sg1", "sg_message_id": f"{tag}.filter1",
         "kizuna_customer_id": customer},
        {"email": f"{tag}@example.com", "timestamp": at + 60, "event": "open",
         "sg_event_id": f"{tag}-sg2", "sg_message_id": f"{tag}.filter1",
         "kizuna_customer_id": customer}]).encode()
    status, answer, _ = post(stack, PATH + "sendgrid", sendgrid, key=None,
                             headers=sendgrid_headers(sendgrid, now))
    assert (status, answer["accepted"]) == (202, 2), answer
    forged = sendgrid.replace(b"delivered", b"bounce")
    assert post(stack, PATH + "sendgrid", forged, key=None,
                headers=sendgrid_headers(sendgrid, now))[0] == 401
    assert post(stack, PATH + "sendgrid", sendgrid, key=None,
                headers=sendgrid_headers(sendgrid, now - 3600))[0] == 401  # stale

    clicked = {"event": "clicked", "timestamp": at + 120, "id": f"{tag}-mg1",
               "recipient": f"{tag}@example.com", "url": "https://shop.example/p/1",
               "user-variables": {"kizuna_customer_id": customer}}
    signed = mailgun(clicked, token=f"{tag}-token", at=now)
    status, answer, _ = post(stack, PATH + "mailgun", signed, key=None)
    assert (status, answer["accepted"]) == (202, 1), answer
    status, answer, _ = post(stack, PATH + "mailgun", signed, key=None)  # replayed
    assert status == 401 and "replayed" in answer["detail"]
    tampered = dict(signed, **{"event-data": dict(clicked, id=f"{tag}-mg2")})
    tampered["signature"] = dict(signed["signature"], token=f"{tag}-token2")
    assert post(stack, PATH + "mailgun", tampered, key=None)[0] == 401

    unsubscribe = {"RecordType": "SubscriptionChange", "MessageID": f"{tag}-pm",
                   "Recipient": f"{tag}@example.com", "SuppressSending": True,
                   "ChangedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at + 180)),
                   "Metadata": {"kizuna_customer_id": customer}}
    login = {"Authorization": "Basic " + base64.b64encode(POSTMARK_LOGIN.encode()).decode()}
    status, answer, _ = post(stack, PATH + "postmark", unsubscribe, key=None, headers=login)
    assert (status, answer["accepted"]) == (202, 1), answer
    guess = {"Authorization": "Basic " + base64.b64encode(b"postmark:guess").decode()}
    assert post(stack, PATH + "postmark", dict(unsubscribe, MessageID=f"{tag}-forged"),
                key=None, headers=guess)[0] == 401

    kizuna(stack, "wait", "--timeout", "120")
    out = kizuna(stack, "query", "--format", "json",
                 "SELECT event_id, event_type, channel, customer_id, anonymous_id "
                 f"FROM kizuna.touchpoints WHERE position(event_id, '{tag}') > 0").stdout
    rows = sorted((r["event_id"], r["event_type"], r["channel"], r["customer_id"])
                  for r in map(json.loads, out.splitlines()))
    assert rows == sorted([
        (f"sendgrid:{tag}-sg1", "email_send", "email", customer),
        (f"sendgrid:{tag}-sg2", "email_open", "email", customer),
        (f"mailgun:{tag}-mg1", "email_click", "email", customer),
        (f"postmark:{tag}-pm:SubscriptionChange:"
         f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(at + 180))}",
         "email_unsubscribe", "email", customer)])
    assert f"{tag}@example.com" not in out  # addresses never land in clear


def test_ses_through_sns_confirms_its_subscription_and_lands(stack) -> None:
    import http.server
    import threading

    tag = uuid.uuid4().hex[:10]
    visited: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            visited.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"<ConfirmSubscriptionResponse/>")

        def log_message(self, *args) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        now = time.time()
        confirm = sns("You have chosen to subscribe", "SubscriptionConfirmation", at=now,
                      SubscribeURL=f"http://127.0.0.1:{server.server_port}/?Token={tag}",
                      Token=tag)
        status, answer, _ = post(stack, PATH + "ses", confirm, key=None)
        assert status == 200 and visited == [f"/?Token={tag}"]
        forged = dict(confirm, SubscribeURL="http://127.0.0.1:9/elsewhere")
        assert post(stack, PATH + "ses", forged, key=None)[0] == 401 and len(visited) == 1
    finally:
        server.shutdown()
    click = dict(SES_CLICK, mail=dict(SES_CLICK["mail"], tags={"kizuna_customer_id": [
        f"C-{tag}"]}))
    notification = sns(click, at=now, MessageId=f"{tag}-ses")
    status, answer, _ = post(stack, PATH + "ses", notification, key=None)
    assert (status, answer["accepted"]) == (202, 1), answer
    kizuna(stack, "wait", "--timeout", "120")
    out = kizuna(stack, "query", "--format", "json", "SELECT event_type, customer_id FROM "
                 f"kizuna.touchpoints WHERE event_id = 'ses:{tag}-ses:0'").stdout
    assert json.loads(out) == {"event_type": "email_click", "customer_id": f"C-{tag}"}
