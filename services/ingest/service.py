"""The collector process: `python -m services.ingest`."""

from __future__ import annotations

import logging
import sys

from aiohttp import web

from services.common import logs
from services.common.errors import ConfigError, KizunaError
from services.common.settings import IngestSettings, load
from services.ingest.app import Collector, build_app
from services.ingest.keys import WriteKeys, write_keys_spec
from services.ingest.producer import BatchProducer
from services.ingest.sources import SourceRelay

log = logging.getLogger("kizuna.ingest")


def main() -> None:
    settings = load(IngestSettings)
    logs.configure(settings.common.log_level, settings.common.log_format)
    keys = WriteKeys(write_keys_spec(settings))
    if not keys:
        raise ConfigError("no write keys: set KIZUNA_WRITE_KEYS (key=source:channel|...)")
    producer = BatchProducer(settings)
    try:
        collector = Collector(settings, keys, producer)
        sources = collector.sources = SourceRelay(settings).start() \
            if settings.common.source_topics else None
    except KizunaError as exc:
        producer.close()
        print(f"ingest: error: {exc}", file=sys.stderr)
        sys.exit(2)
    app = build_app(collector)

    async def close_producer(_app: web.Application) -> None:
        if sources is not None:
            sources.stop()
        left = producer.close()
        if left:
            log.error("%d message(s) not delivered at shutdown", left)

    app.on_cleanup.append(close_producer)
    log.info("collector on %s:%d, %d write key(s)", settings.common.bind_host, settings.port,
             len(keys))
    web.run_app(app, host=settings.common.bind_host, port=settings.port, print=None,
                access_log=None, handle_signals=True)
