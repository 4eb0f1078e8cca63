"""The collector's HTTP API (contract section 3) on aiohttp: a thin adapter over `collector`."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
import urllib.request
import zlib
from collections import Counter
from pathlib import Path

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from prometheus_client import Counter as MetricCounter

from services.common.errors import ConfigError
from services.common.schema_registry import serde_for
from services.common.serde import DEAD_LETTER, TOUCHPOINT, TOUCHPOINT_BATCH
from services.common.settings import IngestSettings
from services.common.topics import TOUCHPOINTS_RAW
from services.ingest import providers, segment, snowplow, webhooks
from services.ingest.collector import (
    Linger,
    MessageBuilder,
    Outcome,
    RequestError,
    TokenBucket,
    process_events,
    split_events,
)
from services.ingest.keys import (
    Source,
    WriteKeys,
    basic_credentials,
    parse_webhook_secrets,
    parse_write_keys,
    verify,
)
from services.ingest.openapi import OPENAPI
from services.ingest.producer import BatchProducer
from services.ingest.sources import SourceRelay
from services.ingest.validation import Enrichment, PiiRedactor

log = logging.getLogger("kizuna.ingest")

REQUESTS = MetricCounter(
    "kizuna_ingest_requests", "HTTP requests by endpoint and status", ["endpoint", "status"])
EVENTS = MetricCounter(
    "kizuna_ingest_events", "Events by outcome, reason and channel",
    ["outcome", "reason", "channel"])
PRODUCE_SECONDS = Histogram(
    "kizuna_ingest_produce_seconds", "Time from produce to Kafka acknowledgement of a request",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

RETRY_AFTER_SECONDS = 5


def _error(status: int, reason: str, detail: str, headers: dict | None = None) -> web.Response:
    return web.json_response({"error": reason, "detail": detail}, status=status, headers=headers)


class Collector:
    def __init__(self, settings: IngestSettings, write_keys: WriteKeys,
                 producer: BatchProducer) -> None:
        self.settings = settings
        self.keys = write_keys
        self.producer = producer
        serde = serde_for(settings.common)
        serde.prepare((TOUCHPOINT, TOUCHPOINT_BATCH, DEAD_LETTER))
        self.messages = MessageBuilder(serde, settings.common.topic_prefix,
                                       PiiRedactor(settings.pii_names, settings.pii_salt),
                                       producer.partitions(TOUCHPOINTS_RAW.name(
                                           settings.common.topic_prefix)))
        partitions = self.messages.partitions
        # concurrent requests' touchpoints, gathered per partition (KIZUNA_INGEST_LINGER_MS)
        self.linger = Linger(serde, self.messages.raw_topic, partitions, producer.send,
                             settings.linger_ms / 1000) \
            if settings.linger_ms and partitions else None
        self.webhook_secrets = parse_webhook_secrets(settings.webhook_secrets)
        self.segment_events = segment.event_map(settings.segment_events_file)
        self.snowplow_apps = parse_write_keys(settings.snowplow_apps, "KIZUNA_SNOWPLOW_APPS")
        self.mailgun_tokens = providers.TokenCache()
        self.ses_certificate = _certificate(self.webhook_secrets.get("ses"))
        self.pii = settings.pii_names
        self.buckets: dict[str, TokenBucket] = {}
        self.sources: SourceRelay | None = None  # KIZUNA_SOURCE_TOPICS' consumer, if any

    # -- helpers ------------------------------------------------------------------------------

    async def read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_request_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(413, "request_too_large", f"body over {limit} bytes")
        chunks, size = [], 0
        while size <= limit:
            chunk = await request.content.read(limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
        body = b"".join(chunks)
        if len(body) > limit:
            raise RequestError(413, "request_too_large", f"body over {limit} bytes")
        encoding = request.headers.get("Content-Encoding", "").lower()
        if encoding == "gzip":
            inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                body = inflater.decompress(body, limit + 1)  # bounded: no gzip bombs
            except zlib.error:
                raise RequestError(400, "invalid_gzip", "body is not valid gzip") from None
            if len(body) > limit or inflater.unconsumed_tail:
                raise RequestError(413, "request_too_large",
                                   f"decompressed body over {limit} bytes")
        elif encoding not in ("", "identity"):
            raise RequestError(400, "unsupported_encoding", f"Content-Encoding {encoding!r}")
        return body

    def rate_limited(self, source: str, events: int) -> float:
        bucket = self.buckets.get(source)
        if bucket is None:
            bucket = self.buckets[source] = TokenBucket(self.settings.rate_per_source)
        return bucket.take(events, time.monotonic())

    async def deliver(self, outcome: Outcome, source: str, received_at: int,
                      status: int = 202, answer: dict | None = None) -> web.Response:
        started = time.perf_counter()
        if self.linger is not None and outcome.records:
            dead = self.messages.of(Outcome(rejected=outcome.rejected), source, received_at)
            error = await self.linger.add(outcome.records)
            error = await self.producer.send(dead) or error  # none: answered at once
        else:
            error = await self.producer.send(self.messages.of(outcome, source, received_at))
        PRODUCE_SECONDS.observe(time.perf_counter() - started)
        if error:
            log.warning("Kafka did not take a request's %d event(s): %s",
                        len(outcome.records) + len(outcome.rejected), error)
            return _error(503, "kafka_unavailable", f"Kafka did not acknowledge: {error}",
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})
        # One metric update per label set and request, not per event.
        for channel, n in Counter(r["channel"] for r in outcome.records).items():
            EVENTS.labels("accepted", "", channel).inc(n)
        for reason, n in Counter(rej.reason for _, _, rej, _ in outcome.rejected).items():
            EVENTS.labels("rejected", reason, "").inc(n)
        return web.json_response({**(answer or {}), **outcome.response()}, status=status)

    async def parse(self, body: bytes, source: Source, received_at: int) -> object:
        try:
            return json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
            # Keep the evidence: an authenticated client sent it.
            await self.producer.send([self.messages.dead_letter(
                "invalid_json", str(exc)[:200], source.name, body, received_at)])
            raise RequestError(400, "invalid_json", f"body is not JSON: {exc}"[:300]) from None

    async def accept(self, payload: object, body: bytes, source: Source,
                     received_at: int) -> web.Response:
        """Rate-limit, validate and deliver the events of a parsed body."""
        events, batch = split_events(payload, self.settings.max_batch_events)
        return await self.accept_events(events, batch, body, source, received_at)

    async def accept_events(self, events: list[object], batch: bool, body: bytes,
                            source: Source, received_at: int, *,
                            originals: list[object] | None = None, status: int = 202,
                            answer: dict | None = None) -> web.Response:
        settings = self.settings
        # Before validation: a source over its rate costs no per-event work.
        wait = self.rate_limited(source.name, len(events))
        if wait:
            return _error(429, "rate_limited", f"source {source.name!r} is over its rate",
                          {"Retry-After": str(max(1, round(wait + 0.5)))})
        enrich = Enrichment(source.name, received_at, source.channels, self.pii,
                            settings.pii_salt)
        outcome = process_events(events, batch, body, enrich,
                                 max_event_bytes=settings.max_event_bytes, originals=originals)
        return await self.deliver(outcome, source.name, received_at, status, answer)

    # -- endpoints ----------------------------------------------------------------------------

    async def events(self, request: web.Request) -> web.Response:
        auth = request.headers.get("Authorization", "")
        scheme, _, key = auth.partition(" ")
        source = self.keys.lookup(key.strip()) if scheme.lower() == "bearer" else None
        if source is None:
            return _error(401, "unauthorized", "missing or unknown write key (Bearer KEY)")
        received_at = int(time.time() * 1000)
        try:
            body = await self.read_body(request)
            payload = await self.parse(body, source, received_at)
            return await self.accept(payload, body, source, received_at)
        except RequestError as exc:
            return _error(exc.status, exc.reason, exc.detail)

    async def segment(self, request: web.Request) -> web.Response:
        """Segment's HTTP Tracking API (`/v1/batch`, `/v1/track`...): the write key as Basic
        auth user or as `writeKey` in the body; 200 when Kafka has the events, as the SDKs
        expect; errors as `{"code", "message"}`, which the SDKs log."""
        kind = request.path.rsplit("/", 1)[-1]
        kind = kind if kind in segment.TYPES else None  # None: /v1/batch, /v1/import
        received_at = int(time.time() * 1000)
        source = self.keys.lookup(_basic_user(request.headers.get("Authorization", "")))
        try:
            body = await self.read_body(request)
            if source is None:  # the key may be in the body
                try:
                    payload = json.loads(body)
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                    payload = None
                key = payload.get("writeKey") if isinstance(payload, dict) else None
                source = self.keys.lookup(key) if isinstance(key, str) else None
                if source is None:
                    return _segment_style(_error(
                        401, "unauthorized",
                        "missing or unknown write key (Basic auth user, or writeKey)"))
            else:
                payload = await self.parse(body, source, received_at)
            messages, sent_at = segment.messages_of(payload, kind)
            if kind is None and not messages and not (
                    isinstance(payload, dict) and isinstance(payload.get("batch"), list)):
                raise RequestError(400, "invalid_batch", '/v1/batch takes {"batch": [...]}')
            if len(messages) > self.settings.max_batch_events:
                raise RequestError(413, "too_many_events", f"{len(messages)} messages; at most "
                                   f"{self.settings.max_batch_events} a request")
            pinned = next(iter(source.channels)) if len(source.channels) == 1 else None
            events = [segment.to_event(m, self.segment_events, pinned, sent_at)
                      for m in messages]
            return _segment_style(await self.accept_events(
                events, True, body, source, received_at, originals=messages, status=200,
                answer={"success": True}))
        except RequestError as exc:
            return _segment_style(_error(exc.status, exc.reason, exc.detail))

    async def snowplow_post(self, request: web.Request) -> web.Response:
        """Snowplow's tracker protocol: `{"schema": ".../payload_data/...", "data": [...]}`."""
        received_at = int(time.time() * 1000)
        try:
            body = await self.read_body(request)
            try:
                payload = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
                raise RequestError(400, "invalid_json", f"body is not JSON: {exc}"[:300]) \
                    from None
            events = snowplow.events_of(payload)
            if not events:
                raise RequestError(400, "invalid_batch", 'a tp2 body is {"schema": '
                                   f'"{snowplow.PAYLOAD_SCHEMA}...", "data": [events]}}')
            response = await self.snowplow_events(events, body, received_at)
        except RequestError as exc:
            response = _error(exc.status, exc.reason, exc.detail)
        return _cors(request, response)

    async def snowplow_get(self, request: web.Request) -> web.Response:
        """Snowplow's pixel: one event in the query string; a 1x1 GIF when Kafka has it."""
        received_at = int(time.time() * 1000)
        event = dict(request.query)
        try:
            response = await self.snowplow_events([event], request.query_string.encode(),
                                                  received_at)
        except RequestError as exc:
            return _error(exc.status, exc.reason, exc.detail)
        if response.status != 200:
            return response
        return web.Response(body=PIXEL, content_type="image/gif",
                            headers={"Cache-Control": "no-cache, no-store"})

    async def snowplow_events(self, events: list[object], body: bytes,
                              received_at: int) -> web.Response:
        """The events of known app ids, each as its app's source; any unknown app id refuses
        the request (Snowplow has no write key: the app id stands in for it)."""
        if len(events) > self.settings.max_batch_events:
            raise RequestError(413, "too_many_events", f"{len(events)} events; at most "
                               f"{self.settings.max_batch_events} a request")
        groups: dict[str, list[int]] = {}
        for index, event in enumerate(events):
            app = event.get("aid") if isinstance(event, dict) else None
            if not isinstance(app, str) or app not in self.snowplow_apps:
                raise RequestError(401, "unknown_app_id", f"app id {app!r} is not in "
                                   "KIZUNA_SNOWPLOW_APPS (the trackers this collector takes)")
            groups.setdefault(app, []).append(index)
        accepted, rejected = 0, []
        for app, indexes in groups.items():
            source = self.snowplow_apps[app]
            pinned = next(iter(source.channels)) if len(source.channels) == 1 else None
            originals = [events[i] for i in indexes]
            mapped = [snowplow.to_event(e, self.segment_events, pinned) for e in originals]
            response = await self.accept_events(mapped, True, body, source, received_at,
                                                originals=originals, status=200)
            if response.status != 200:
                return response  # what went before is in Kafka: a retry is deduplicated
            answer = json.loads(response.body)
            accepted += answer["accepted"]
            rejected += [{**r, "index": indexes[r["index"]]} for r in answer["rejected"]]
        return web.json_response({"success": True, "accepted": accepted,
                                  "rejected": sorted(rejected, key=lambda r: r["index"])})

    async def snowplow_preflight(self, request: web.Request) -> web.Response:
        return _cors(request, web.Response(status=204))

    async def webhook(self, request: web.Request) -> web.Response:
        provider = request.match_info["provider"]
        secret = self.webhook_secrets.get(provider)
        if secret is None:
            return _error(404, "unknown_provider", f"no webhook secret for {provider!r}")
        received_at = int(time.time() * 1000)
        try:
            body = await self.read_body(request)
        except RequestError as exc:
            return _error(exc.status, exc.reason, exc.detail)
        now, tolerance = time.time(), self.settings.webhook_tolerance
        salt = self.settings.pii_salt
        if provider == "sendgrid":
            problem = providers.sendgrid_problem(secret.decode(), request.headers, body, now,
                                                 tolerance)
        elif provider == "postmark":
            problem = providers.postmark_problem(secret.decode(),
                                                 request.headers.get("Authorization"))
        elif provider in ("mailgun", "ses"):
            problem = None  # signed inside the body: checked once it is parsed
        else:
            problem = verify(secret, request.headers.get("Kizuna-Timestamp"),
                             request.headers.get("Kizuna-Signature"), body, now, tolerance)
        if problem:
            return _error(401, "bad_signature", problem)
        source = Source(f"webhook:{provider}", frozenset({"email"}))
        try:
            if provider == "ses":
                return await self.ses(body, source, received_at, now, tolerance)
            if provider == "mailgun":
                try:
                    payload = json.loads(body)
                except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
                    payload = None
                problem = providers.mailgun_problem(secret.decode(), payload, now, tolerance,
                                                    self.mailgun_tokens)
                if problem:
                    return _error(401, "bad_signature", problem)
                events = providers.mailgun_events(payload, salt)
            else:
                payload = await self.parse(body, source, received_at)
                mapping = {"sendgrid": providers.sendgrid_events,
                           "postmark": providers.postmark_events}.get(provider)
                events = mapping(payload, salt) if mapping else \
                    webhooks.to_touchpoints(payload, provider, salt)
            if len(events) > self.settings.max_batch_events:
                raise RequestError(413, "too_many_events", f"{len(events)} events; at most "
                                   f"{self.settings.max_batch_events} a request")
            originals = payload if provider == "sendgrid" and isinstance(payload, list) \
                else None
            if originals is not None and len(originals) != len(events):
                originals = None
            return await self.accept_events(events, True, body, source, received_at,
                                            originals=originals)
        except RequestError as exc:
            return _error(exc.status, exc.reason, exc.detail)

    async def ses(self, body: bytes, source: Source, received_at: int, now: float,
                  tolerance: float) -> web.Response:
        """Amazon SES events through SNS: the SNS signature checked against the configured
        certificate; a subscription confirmed by visiting its SubscribeURL."""
        try:
            envelope = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
            envelope = None
        problem = providers.sns_problem(self.ses_certificate, envelope, now, tolerance)
        if problem:
            return _error(401, "bad_signature", problem)
        if envelope["Type"] != "Notification":
            if envelope["Type"] == "SubscriptionConfirmation":
                loop = asyncio.get_running_loop()
                await loop.run_in_executor(None, _visit, envelope.get("SubscribeURL"))
                log.info("confirmed the SNS subscription to %s", envelope.get("TopicArn"))
            return web.json_response({"confirmed": envelope["Type"]}, status=200)
        events = providers.ses_events(envelope, self.settings.pii_salt)
        return await self.accept_events(events, True, body, source, received_at)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"stage": "ingest", "status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        reachable = await loop.run_in_executor(None, self.producer.broker_reachable)
        if not reachable:
            return web.json_response({"stage": "ingest", "status": "kafka_unreachable"},
                                     status=503)
        problem = self.sources.problem() if self.sources is not None else None
        if problem:
            return web.json_response({"stage": "ingest", "status": "stalled",
                                      "reason": problem}, status=503)
        return web.json_response({"stage": "ingest", "status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)


def _certificate(path: bytes | None) -> bytes:
    """`ses=<path>` in KIZUNA_WEBHOOK_SECRETS: the SNS signing certificate (PEM)."""
    if path is None:
        return b""
    try:
        return Path(path.decode()).expanduser().read_bytes()
    except OSError as exc:
        raise ConfigError(f"KIZUNA_WEBHOOK_SECRETS: ses= names the SNS signing certificate "
                          f"(a PEM file): {exc}") from None


def _visit(url: object) -> None:
    """Confirm an SNS subscription (its URL comes from a message whose signature verified)."""
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise RequestError(400, "invalid_subscription", "SubscribeURL is not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            resp.read()
    except OSError as exc:
        raise RequestError(502, "subscription_not_confirmed",
                           f"visiting SubscribeURL failed: {exc}") from None


#: A transparent 1x1 GIF: the answer to Snowplow's pixel requests.
PIXEL = base64.b64decode("R0lGODlhAQABAIAAAAAAAP///yH5BAEAAAAALAAAAAABAAEAAAIBRAA7")


def _cors(request: web.Request, response: web.Response) -> web.Response:
    """Browser trackers post across origins, with credentials (Snowplow's JS tracker)."""
    origin = request.headers.get("Origin")
    if origin:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Allow-Credentials"] = "true"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type"
        response.headers["Access-Control-Allow-Methods"] = "POST, GET, OPTIONS"
        response.headers["Vary"] = "Origin"
    return response


def _basic_user(header: str) -> str:
    """The user of an HTTP Basic `Authorization` header (Segment's write key), or ""."""
    return basic_credentials(header).partition(":")[0]


def _segment_style(response: web.Response) -> web.Response:
    """An error answer also as Segment's `{"code", "message"}`, which its SDKs report."""
    if response.status < 400:
        return response
    data = json.loads(response.body)
    headers = {k: v for k, v in response.headers.items() if k == "Retry-After"}
    return web.json_response({"code": data["error"], "message": data["detail"], **data},
                             status=response.status, headers=headers)


@web.middleware
async def count_requests(request: web.Request, handler) -> web.StreamResponse:
    route = request.match_info.route.resource
    endpoint = route.canonical if route is not None else "unmatched"
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        REQUESTS.labels(endpoint, str(exc.status)).inc()
        if exc.status == 413:
            return _error(413, "request_too_large", exc.text or "request too large")
        raise
    except Exception:
        log.exception("unexpected error on %s", endpoint)
        REQUESTS.labels(endpoint, "500").inc()
        return _error(500, "internal_error", "unexpected error; nothing was acknowledged")
    REQUESTS.labels(endpoint, str(response.status)).inc()
    return response


def build_app(collector: Collector) -> web.Application:
    # aiohttp's own body limit is a backstop; read_body applies ours with a clear reason, and
    # decompresses gzip itself, bounded, so a small bomb cannot expand without limit.
    app = web.Application(middlewares=[count_requests],
                          client_max_size=collector.settings.max_request_bytes + 1024,
                          handler_args={"auto_decompress": False})
    app.router.add_post("/v1/events", collector.events)
    app.router.add_post("/v1/webhooks/email/{provider}", collector.webhook)
    app.router.add_post("/v1/batch", collector.segment)  # Segment's HTTP Tracking API
    app.router.add_post("/v1/import", collector.segment)  # its bulk alias
    for kind in segment.TYPES:
        app.router.add_post(f"/v1/{kind}", collector.segment)
    app.router.add_post("/com.snowplowanalytics.snowplow/tp2", collector.snowplow_post)
    app.router.add_route("OPTIONS", "/com.snowplowanalytics.snowplow/tp2",
                         collector.snowplow_preflight)
    app.router.add_get("/i", collector.snowplow_get)
    app.router.add_get("/healthz", collector.healthz)
    app.router.add_get("/readyz", collector.readyz)
    app.router.add_get("/metrics", collector.metrics)
    app.router.add_get("/openapi.json", collector.openapi)
    return app
