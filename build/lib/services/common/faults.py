"""Chaos testing only: make a stage's logic raise on chosen records (`KIZUNA_FAULT_INJECTION`),
so that `make chaos` can check that a record a stage cannot take is dead-lettered and
nothing else changes. Empty (the default) in every real deployment."""

from __future__ import annotations

from collections.abc import Iterable


class InjectedFault(RuntimeError):
    """Raised on purpose (KIZUNA_FAULT_INJECTION)."""


def markers(setting: str, stage: str) -> tuple[str, ...]:
    """The event-id markers `stage` raises on: `stage:marker[,stage:marker...]`."""
    out = []
    for part in setting.split(","):
        name, _, marker = part.strip().partition(":")
        if name == stage and marker:
            out.append(marker)
    return tuple(out)


def check(found: tuple[str, ...], event_ids: Iterable[str]) -> None:
    if not found:
        return
    for event_id in event_ids:
        if any(marker in event_id for marker in found):
            raise InjectedFault(f"fault injected on {event_id!r} (KIZUNA_FAULT_INJECTION)")
