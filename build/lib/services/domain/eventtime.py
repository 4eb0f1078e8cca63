"""Event-time units and windows every stage agrees on (epoch milliseconds, UTC)."""

from __future__ import annotations

MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
#: Before any event: the event time of a partition that has seen nothing yet.
NEVER = -(2**62)
#: How long the ids a sessionizer state kept per day before its archive existed (`s:` keys,
#: before 0.6) are still read: they expire the window after their day. Ids are kept for good
#: since (KIZUNA_HISTORY_RETENTION_DAYS bounds them).
DEDUP_MS = 60 * DAY_MS
#: A login claims its device's history back this far: the sessionizer hands the device's
#: sessions ending within it to the customer, and alerting keeps purchases this long for the
#: carts a login may still claim.
DEVICE_HISTORY_MS = 30 * DAY_MS
