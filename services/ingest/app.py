"""The collector's HTTP API (contract section 3) on aiohttp: a thin adapter over `collector`."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import zlib
from collections import Counter

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest
from prometheus_client import Counter as MetricCounter

from services.common.serde import default_serde
from services.common.settings import IngestSettings
from services.common.topics import TOUCHPOINTS_RAW
from services.ingest import webhooks
from services.ingest.collector import (
    MessageBuilder,
    Outcome,
    RequestError,
    TokenBucket,
    process_events,
    split_events,
)
from services.ingest.keys import Source, WriteKeys, parse_webhook_secrets, verify
from services.ingest.openapi import OPENAPI
from services.ingest.producer import BatchProducer
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
        self.messages = MessageBuilder(default_serde(), settings.common.topic_prefix,
                                       PiiRedactor(settings.pii_names, settings.pii_salt),
                                       producer.partitions(TOUCHPOINTS_RAW.name(
                                           settings.common.topic_prefix)))
        self.webhook_secrets = parse_webhook_secrets(settings.webhook_secrets)
        self.pii = settings.pii_names
        self.buckets: dict[str, TokenBucket] = {}

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

    async def deliver(self, outcome: Outcome, source: str, received_at: int) -> web.Response:
        messages = self.messages.of(outcome, source, received_at)
        started = time.perf_counter()
        error = await self.producer.send(messages)
        PRODUCE_SECONDS.observe(time.perf_counter() - started)
        if error:
            log.warning("Kafka did not take %d message(s): %s", len(messages), error)
            return _error(503, "kafka_unavailable", f"Kafka did not acknowledge: {error}",
                          {"Retry-After": str(RETRY_AFTER_SECONDS)})
        # One metric update per label set and request, not per event.
        for channel, n in Counter(r["channel"] for r in outcome.records).items():
            EVENTS.labels("accepted", "", channel).inc(n)
        for reason, n in Counter(rej.reason for _, _, rej, _ in outcome.rejected).items():
            EVENTS.labels("rejected", reason, "").inc(n)
        return web.json_response(outcome.response(), status=202)

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
        settings = self.settings
        events, batch = split_events(payload, settings.max_batch_events)
        # Before validation: a source over its rate costs no per-event work.
        wait = self.rate_limited(source.name, len(events))
        if wait:
            return _error(429, "rate_limited", f"source {source.name!r} is over its rate",
                          {"Retry-After": str(max(1, round(wait + 0.5)))})
        enrich = Enrichment(source.name, received_at, source.channels, self.pii,
                            settings.pii_salt)
        outcome = process_events(events, batch, body, enrich,
                                 max_event_bytes=settings.max_event_bytes)
        return await self.deliver(outcome, source.name, received_at)

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
        problem = verify(secret, request.headers.get("Kizuna-Timestamp"),
                         request.headers.get("Kizuna-Signature"), body, time.time(),
                         self.settings.webhook_tolerance)
        if problem:
            return _error(401, "bad_signature", problem)
        source = Source(f"webhook:{provider}", frozenset({"email"}))
        try:
            payload = await self.parse(body, source, received_at)
            events = webhooks.to_touchpoints(payload, provider, self.settings.pii_salt)
            return await self.accept({"events": events}, body, source, received_at)
        except RequestError as exc:
            return _error(exc.status, exc.reason, exc.detail)

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"stage": "ingest", "status": "ok"})

    async def readyz(self, request: web.Request) -> web.Response:
        loop = asyncio.get_running_loop()
        reachable = await loop.run_in_executor(None, self.producer.broker_reachable)
        if not reachable:
            return web.json_response({"stage": "ingest", "status": "kafka_unreachable"},
                                     status=503)
        return web.json_response({"stage": "ingest", "status": "ok"})

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=generate_latest(),
                            headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def openapi(self, request: web.Request) -> web.Response:
        return web.json_response(OPENAPI)


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
    app.router.add_get("/healthz", collector.healthz)
    app.router.add_get("/readyz", collector.readyz)
    app.router.add_get("/metrics", collector.metrics)
    app.router.add_get("/openapi.json", collector.openapi)
    return app
