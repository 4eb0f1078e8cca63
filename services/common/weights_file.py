"""The engagement weights file (KIZUNA_WEIGHTS_FILE, else the shipped one): read once at a
stage's start; what is wrong with it is a ConfigError naming the file and the key."""

from __future__ import annotations

from pathlib import Path

import yaml

from services.common.errors import ConfigError
from services.domain.weights import SHIPPED, Weights, WeightsError, parse_weights


def load_weights(path: Path | None = None) -> Weights:
    path = path or SHIPPED
    where = f"weights file {path}"
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read it ({exc.strerror}); check "
                          "KIZUNA_WEIGHTS_FILE") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{where}: not valid YAML: {str(exc).splitlines()[0]}") from None
    try:
        return parse_weights(doc, where)
    except WeightsError as exc:
        raise ConfigError(str(exc)) from None
