"""The scorer's faust adapter: attributed touches in, one profile update per customer per batch.

It reads the sessionizer's `attributed` topic (one message per sessionizer partition and
batch, a map of customer -> touches; co-partitioned, so a customer's state lives on the
partition its touches arrive on), applies the pure `profile` functions, writes each changed
customer's state once, and produces each changed customer's profile once to
`kizuna.engagement.scores`, flushed before the batch is acknowledged.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import faust
from prometheus_client import Counter

from services.common import faults, faust_stage, logs, stage_metrics
from services.common.errors import KizunaError
from services.common.kafka import ensure_topics
from services.common.serde import ENGAGEMENT_PROFILE
from services.common.settings import EngagementScorerSettings, load
from services.common.topics import ATTRIBUTED, ENGAGEMENT_SCORES
from services.common.weights_file import load_weights
from services.domain import attributed
from services.domain.weights import Weights
from services.engagement_scorer.batch import EngagementScorer

log = logging.getLogger("kizuna.engagement_scorer")
STAGE = "engagement_scorer"

TOUCHES = Counter("kizuna_engagement_scorer_touches", "Touches by outcome", ["outcome"])
PROFILES = Counter("kizuna_engagement_scorer_profiles", "Profile updates emitted")


def create_app(settings: EngagementScorerSettings, weights: Weights) -> faust.App:
    common = settings.common
    prefix = common.topic_prefix
    ensure_topics(common, (ATTRIBUTED,))
    parts = faust_stage.stage(STAGE, common, sources=(ATTRIBUTED.name(prefix),),
                              table="customers", port=settings.port, store=settings.store,
                              batch_size=settings.batch_size)
    scores_name = ENGAGEMENT_SCORES.name(prefix)
    serde = parts.serde
    serde.prepare((ENGAGEMENT_PROFILE,))

    fault = faults.markers(common.fault_injection, STAGE)
    scorer = EngagementScorer(parts.store, weights, common.history_retention_ms)

    def handle(partition: int, batches: list) -> None:
        faults.check(fault, attributed.event_ids(batches))
        scored = scorer.process(partition, batches)
        for customer in scored.erased:  # a tombstone: the compacted topic forgets the customer
            parts.outbox.produce(scores_name, None, customer.encode())
        for profile in scored.profiles:
            parts.outbox.produce(scores_name, serde.encode(ENGAGEMENT_PROFILE, profile),
                                 profile["customer_id"].encode())
        for corrupt in scored.corrupt:
            parts.corrupt_state(corrupt)
        stage_metrics.observe_latency(STAGE, max(b["t"] for b in batches))
        TOUCHES.labels("applied").inc(scored.applied)
        TOUCHES.labels("duplicates").inc(scored.duplicates)
        PROFILES.inc(len(scored.profiles))

    parts.agent(handle, faust_stage.attributed_units, faust_stage.attributed_payload)
    return parts.app


def main() -> None:
    settings = load(EngagementScorerSettings)
    logs.configure(settings.common.log_level, settings.common.log_format)
    try:
        weights = load_weights(Path(settings.weights_file) if settings.weights_file else None)
    except KizunaError as exc:
        print(f"engagement_scorer: error: {exc}", file=sys.stderr)
        sys.exit(2)
    faust_stage.run_worker(create_app(settings, weights), settings.common)
