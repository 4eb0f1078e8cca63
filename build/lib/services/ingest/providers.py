"""Email providers' own webhooks: each verified as its provider documents it, mapped to email
touchpoints (pure).

`POST /v1/webhooks/email/{provider}` with the provider's name, its secret in
KIZUNA_WEBHOOK_SECRETS (`provider=secret;...`):

- `sendgrid`: the Event Webhook's JSON array, signed (ECDSA P-256 over SHA-256 of the
  timestamp header and the raw body, `X-Twilio-Email-Event-Webhook-Signature` / `-Timestamp`);
  the secret is the verification key SendGrid shows (base64 of the public key).
- `mailgun`: one event, `{"signature": {timestamp, token, signature}, "event-data": {...}}`,
  the signature a hex HMAC-SHA256 with the webhook signing key over timestamp + token; a token
  seen before is a replay.
- `postmark`: one event (`RecordType`); Postmark signs nothing, so the URL carries Basic
  credentials (`https://user:password@.../v1/webhooks/email/postmark`), the secret being
  `user:password`.

The customer is the custom argument (SendGrid), user variable (Mailgun) or metadata
(Postmark) `kizuna_customer_id` the sender set; the recipient's address otherwise, as a salted
hash in `anonymous_id` (`email:<hash>`) that an identify carrying it links.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from collections.abc import Mapping
from datetime import datetime

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from services.ingest.keys import basic_credentials, stale_timestamp
from services.ingest.validation import pii_hash

PROVIDERS = ("sendgrid", "mailgun", "postmark")
CUSTOMER_ARG = "kizuna_customer_id"
SENDGRID_SIGNATURE = "X-Twilio-Email-Event-Webhook-Signature"
SENDGRID_TIMESTAMP = "X-Twilio-Email-Event-Webhook-Timestamp"

SENDGRID_TYPES = {"delivered": "email_send", "open": "email_open", "click": "email_click",
                  "unsubscribe": "email_unsubscribe", "group_unsubscribe": "email_unsubscribe",
                  "bounce": "email_bounce", "dropped": "email_bounce",
                  "spamreport": "email_spam_report", "processed": "email_processed",
                  "deferred": "email_deferred", "group_resubscribe": "opt_in"}
MAILGUN_TYPES = {"delivered": "email_send", "opened": "email_open", "clicked": "email_click",
                 "unsubscribed": "email_unsubscribe", "complained": "email_spam_report",
                 "failed": "email_bounce", "accepted": "email_accepted"}
POSTMARK_TYPES = {"Delivery": "email_send", "Open": "email_open", "Click": "email_click",
                  "Bounce": "email_bounce", "SpamComplaint": "email_spam_report"}


def sendgrid_problem(public_key: str, headers: Mapping[str, str], body: bytes, now: float,
                     tolerance: float) -> str | None:
    """Why a SendGrid request is not authentic (None: it is)."""
    signature, timestamp = headers.get(SENDGRID_SIGNATURE), headers.get(SENDGRID_TIMESTAMP)
    if not signature or not timestamp:
        return f"missing {SENDGRID_SIGNATURE} or {SENDGRID_TIMESTAMP}"
    stale = stale_timestamp(timestamp, now, tolerance)
    if stale:
        return stale
    try:
        key = _public_key(public_key)
        key.verify(base64.b64decode(signature), timestamp.encode() + body,
                   ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error, TypeError):
        return "signature does not verify with the configured SendGrid verification key"
    return None


def _public_key(text: str) -> ec.EllipticCurvePublicKey:
    text = text.strip()
    key = load_pem_public_key(text.encode()) if text.startswith("-----") \
        else load_der_public_key(base64.b64decode(text))
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ValueError("not an elliptic-curve key")
    return key


class TokenCache:
    """Mailgun tokens seen within the tolerance: a second request with one is a replay."""

    def __init__(self, limit: int = 100_000) -> None:
        self.limit = limit
        self.seen: dict[str, float] = {}

    def first_use(self, token: str, now: float, tolerance: float) -> bool:
        if len(self.seen) >= self.limit:
            self.seen = {t: at for t, at in self.seen.items() if at > now - tolerance}
        if token in self.seen:
            return False
        if len(self.seen) < self.limit:
            self.seen[token] = now
        return True


def mailgun_problem(signing_key: str, payload: object, now: float, tolerance: float,
                    tokens: TokenCache) -> str | None:
    signature = payload.get("signature") if isinstance(payload, dict) else None
    if not isinstance(signature, dict):
        return 'missing "signature": {timestamp, token, signature}'
    timestamp, token, digest = (str(signature.get(k, "")) for k in
                                ("timestamp", "token", "signature"))
    stale = stale_timestamp(timestamp, now, tolerance)
    if stale:
        return stale
    expected = hmac.new(signing_key.encode(), (timestamp + token).encode(),
                        hashlib.sha256).hexdigest()
    if not token or not hmac.compare_digest(expected, digest):
        return "signature does not match the Mailgun signing key"
    if not tokens.first_use(token, now, tolerance):
        return "token already used (a replayed request)"
    return None


def postmark_problem(credentials: str, authorization: str | None) -> str | None:
    if not hmac.compare_digest(basic_credentials(authorization).encode(), credentials.encode()):
        return "missing or wrong Basic credentials (set them in the webhook's URL)"
    return None


def _recipient(email: object, salt: str) -> str | None:
    return f"email:{pii_hash(email, salt)[:32]}" if isinstance(email, str) and email else None


def _touch(event_id: str, event_type: str, at: object, customer: object, email: object,
           salt: str, properties: dict, campaign: object = None) -> dict:
    touch = {
        "event_id": event_id[:128], "event_type": event_type, "channel": "email",
        "occurred_at": at,
        "customer_id": customer if isinstance(customer, str) and customer else None,
        "anonymous_id": _recipient(email, salt),
        "properties": {k: v for k, v in properties.items() if isinstance(v, str) and v},
    }
    if isinstance(campaign, str) and campaign:
        touch["context"] = {"campaign": campaign[:256]}
    return touch


def _ms(seconds: object) -> object:
    if isinstance(seconds, int | float) and not isinstance(seconds, bool):
        return int(seconds * 1000)
    return seconds  # validation says what is wrong


def sendgrid_events(payload: object, salt: str) -> list[object]:
    items = payload if isinstance(payload, list) else [payload]
    out: list[object] = []
    for item in items:
        if not isinstance(item, dict) or item.get("event") not in SENDGRID_TYPES:
            out.append(item)
            continue
        category = item.get("category")
        campaign = category[0] if isinstance(category, list) and category else category
        out.append(_touch(
            f"sendgrid:{item.get('sg_event_id') or item.get('sg_message_id')}",
            SENDGRID_TYPES[item["event"]], _ms(item.get("timestamp")),
            item.get(CUSTOMER_ARG), item.get("email"), salt,
            {"message_id": item.get("sg_message_id"), "url": item.get("url"),
             "reason": item.get("reason"), "provider_event": item["event"]}, campaign))
    return out


def mailgun_events(payload: object, salt: str) -> list[object]:
    data = payload.get("event-data") if isinstance(payload, dict) else None
    if not isinstance(data, dict) or data.get("event") not in MAILGUN_TYPES:
        return [data if data is not None else payload]
    variables = data.get("user-variables") if isinstance(data.get("user-variables"), dict) \
        else {}
    headers = (data.get("message") or {}).get("headers") or {}
    tags = data.get("tags") if isinstance(data.get("tags"), list) else []
    return [_touch(
        f"mailgun:{data.get('id')}", MAILGUN_TYPES[data["event"]], _ms(data.get("timestamp")),
        variables.get(CUSTOMER_ARG), data.get("recipient"), salt,
        {"message_id": headers.get("message-id"), "url": data.get("url"),
         "severity": data.get("severity"), "provider_event": data["event"]},
        tags[0] if tags else None)]


def postmark_events(payload: object, salt: str) -> list[object]:
    if not isinstance(payload, dict):
        return [payload]
    kind = payload.get("RecordType")
    if kind == "SubscriptionChange":
        event_type = "email_unsubscribe" if payload.get("SuppressSending") else "opt_in"
        at = payload.get("ChangedAt")
    elif kind in POSTMARK_TYPES:
        event_type = POSTMARK_TYPES[kind]
        at = (payload.get("DeliveredAt") or payload.get("ReceivedAt")
              or payload.get("BouncedAt"))
    else:
        return [payload]
    metadata = payload.get("Metadata") if isinstance(payload.get("Metadata"), dict) else {}
    at = _rfc3339(at)
    # Postmark has no event id: the message, the event and its time make one
    return [_touch(
        f"postmark:{payload.get('MessageID')}:{kind}:{at}", event_type, at,
        metadata.get(CUSTOMER_ARG), payload.get("Recipient") or payload.get("Email"), salt,
        {"message_id": payload.get("MessageID"), "url": payload.get("OriginalLink"),
         "provider_event": kind}, payload.get("Tag"))]


def _rfc3339(value: object) -> object:
    """Postmark's times have 7 fractional digits (`2019-11-05T16:33:54.9070259Z`); RFC 3339
    allows any number, Python's parser 6."""
    if isinstance(value, str) and "." in value:
        head, _, tail = value.partition(".")
        digits = "".join(c for c in tail if c.isdigit())
        zone = tail[len(digits):]
        try:
            datetime.fromisoformat(f"{head}.{digits[:6]}{zone}".replace("Z", "+00:00"))
            return f"{head}.{digits[:6]}{zone}"
        except ValueError:
            return value
    return value


# -- Amazon SES through SNS ---------------------------------------------------------------------

SES_TYPES = {"Send": "email_send_request", "Delivery": "email_send", "Open": "email_open",
             "Click": "email_click", "Bounce": "email_bounce",
             "Complaint": "email_spam_report", "Subscription": "email_unsubscribe",
             "Reject": "email_rejected", "DeliveryDelay": "email_deferred"}
SNS_SIGNED = {
    "Notification": ("Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"),
    "SubscriptionConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                 "TopicArn", "Type"),
    "UnsubscribeConfirmation": ("Message", "MessageId", "SubscribeURL", "Timestamp", "Token",
                                "TopicArn", "Type"),
}


def sns_problem(certificate_pem: bytes, envelope: object, now: float,
                tolerance: float) -> str | None:
    """Why an SNS message is not authentic: its signature (version 1: SHA1withRSA, 2:
    SHA256withRSA) over the fields SNS signs, checked against the configured SNS signing
    certificate (never one fetched from the message's own URL)."""
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import padding, rsa

    if not isinstance(envelope, dict) or envelope.get("Type") not in SNS_SIGNED:
        return "not an SNS message (Type Notification, SubscriptionConfirmation...)"
    version = str(envelope.get("SignatureVersion"))
    if version not in ("1", "2"):
        return f"SignatureVersion {version!r} is not 1 or 2"
    try:
        at = datetime.fromisoformat(str(envelope.get("Timestamp")).replace("Z", "+00:00"))
    except ValueError:
        return "Timestamp is not RFC 3339"
    if abs(now - at.timestamp()) > tolerance:
        return f"Timestamp {envelope.get('Timestamp')} is more than {tolerance:.0f} s off"
    text = "".join(f"{name}\n{envelope[name]}\n" for name in SNS_SIGNED[envelope["Type"]]
                   if envelope.get(name) is not None)
    try:
        key = x509.load_pem_x509_certificate(certificate_pem).public_key()
        if not isinstance(key, rsa.RSAPublicKey):
            return "the configured SNS certificate has no RSA key"
        key.verify(base64.b64decode(str(envelope.get("Signature"))), text.encode(),
                   padding.PKCS1v15(), hashes.SHA1() if version == "1" else hashes.SHA256())
    except (InvalidSignature, ValueError, binascii.Error):
        return "signature does not verify with the configured SNS certificate"
    return None


def ses_events(envelope: dict, salt: str) -> list[object]:
    """An SNS notification's SES event (`eventType`, or `notificationType` of the older
    notifications) as one touchpoint per recipient it concerns."""
    try:
        message = json.loads(envelope.get("Message") or "")
    except (TypeError, json.JSONDecodeError, RecursionError):
        return [envelope]
    if not isinstance(message, dict):
        return [envelope]
    kind = message.get("eventType") or message.get("notificationType")
    mail = message.get("mail") if isinstance(message.get("mail"), dict) else {}
    if kind not in SES_TYPES:
        return [message]
    detail = message.get(kind[0].lower() + kind[1:])
    detail = detail if isinstance(detail, dict) else {}
    tags = mail.get("tags") if isinstance(mail.get("tags"), dict) else {}
    customers = tags.get(CUSTOMER_ARG) or [None]
    recipients = [r.get("emailAddress") for r in detail.get("bouncedRecipients", [])
                  + detail.get("complainedRecipients", []) if isinstance(r, dict)] \
        or detail.get("recipients") or mail.get("destination") or [None]
    campaign = (tags.get("campaign") or [None])[0]
    at = detail.get("timestamp") or mail.get("timestamp")
    return [_touch(f"ses:{envelope.get('MessageId')}:{i}", SES_TYPES[kind], at,
                   customers[0], recipient, salt,
                   {"message_id": mail.get("messageId"), "url": detail.get("link"),
                    "provider_event": kind, "bounce_type": detail.get("bounceType")},
                   campaign)
            for i, recipient in enumerate(recipients)]
