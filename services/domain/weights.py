"""The engagement weights: what each touch adds to a score, and the tiers; built from the
weights file's document (`parse_weights`; services/common/weights_file.py reads the file)
with errors that say where."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from services.domain.eventtime import DAY_MS

SHIPPED = Path(__file__).with_name("weights.yaml")
NPS_BANDS = ("detractor", "passive", "promoter")
NEGATIVE_TIER = "negative"


class WeightsError(ValueError):
    """The weights document is not valid: the message says where and why."""


@dataclass(frozen=True)
class Weights:
    half_life_ms: float
    default_weight: float
    tiers: tuple[tuple[str, float], ...]  # (name, minimum), highest minimum first
    by_type: dict[str, float | dict[str, float]]

    def weight(self, event_type: str, channel: str, nps_score: float | None = None) -> float:
        w = self.by_type.get(event_type)
        if w is None:
            return self.default_weight
        if isinstance(w, float):
            return w
        if event_type == "nps_response":
            if nps_score is None:
                return 0.0
            return w["detractor" if nps_score <= 6 else "passive" if nps_score <= 8
                     else "promoter"]
        return w.get(channel, w.get("*", self.default_weight))

    def tier(self, score: float) -> str:
        for name, minimum in self.tiers:
            if score >= minimum:
                return name
        return NEGATIVE_TIER


def parse_weights(doc: object, where: str) -> Weights:
    """The weights a parsed weights file (`doc`) gives; `where` names it in errors."""
    if not isinstance(doc, dict):
        raise WeightsError(f"{where}: expected a map with half_life_days, default_weight, "
                          "tiers and weights")
    unknown = set(doc) - {"half_life_days", "default_weight", "tiers", "weights"}
    if unknown:
        raise WeightsError(f"{where}: unknown key {sorted(unknown)[0]!r}")
    half_life = _number(doc.get("half_life_days", 14), f"{where}: half_life_days")
    if half_life <= 0:
        raise WeightsError(f"{where}: half_life_days must be > 0, got {half_life:g}")
    default = _number(doc.get("default_weight", 0.5), f"{where}: default_weight")
    tiers = doc.get("tiers") or {}
    if not isinstance(tiers, dict) or not tiers:
        raise WeightsError(f"{where}: tiers must be a map of tier name -> minimum score")
    tier_list = sorted(((str(name), _number(v, f"{where}: tiers.{name}"))
                        for name, v in tiers.items()), key=lambda x: -x[1])
    raw = doc.get("weights")
    if not isinstance(raw, dict) or not raw:
        raise WeightsError(f"{where}: weights must be a map of event_type -> weight")
    by_type: dict[str, float | dict[str, float]] = {}
    for event_type, w in raw.items():
        name = f"{where}: weights.{event_type}"
        if isinstance(w, dict):
            allowed = set(NPS_BANDS) if event_type == "nps_response" else None
            by_channel = {}
            for key, value in w.items():
                if allowed is not None and key not in allowed:
                    raise WeightsError(f"{name}: expected {', '.join(NPS_BANDS)}, got {key!r}")
                by_channel[str(key)] = _number(value, f"{name}.{key}")
            if allowed is not None and set(by_channel) != allowed:
                raise WeightsError(f"{name}: needs all of {', '.join(NPS_BANDS)}")
            by_type[str(event_type)] = by_channel
        else:
            by_type[str(event_type)] = _number(w, name)
    return Weights(half_life * DAY_MS, default, tuple(tier_list), by_type)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise WeightsError(f"{name}: expected a number, got {value!r}")
    return float(value)
