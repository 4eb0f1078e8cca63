"""Write keys (`Authorization: Bearer KEY`) and webhook secrets."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from services.common.errors import ConfigError
from services.common.settings import IngestSettings, generate_local_secret
from services.ingest.validation import CHANNELS


@dataclass(frozen=True)
class Source:
    name: str
    channels: frozenset[str]


def parse_write_keys(spec: str, env: str = "KIZUNA_WRITE_KEYS") -> dict[str, Source]:
    """`key=source:channel|channel;...` -> {key: Source} (`env`: the setting, for errors)."""
    keys: dict[str, Source] = {}
    for n, item in enumerate(filter(None, (i.strip() for i in spec.split(";"))), 1):
        key, sep, rest = item.partition("=")
        name, sep2, channels = rest.partition(":")
        allowed = frozenset(c.strip() for c in channels.split("|") if c.strip())
        if not (sep and sep2 and key.strip() and name.strip() and allowed):
            raise ConfigError(
                f"{env}: entry {n} is not key=source:channel|channel")
        unknown = allowed - CHANNELS
        if unknown:
            raise ConfigError(
                f"{env}: entry {n} names unknown channel(s) {sorted(unknown)}")
        keys[key.strip()] = Source(name.strip(), allowed)
    return keys


def local_keys_file(settings: IngestSettings):
    return settings.common.home / "write_keys"


def ensure_local_key(settings: IngestSettings) -> None:
    """Local mode without KIZUNA_WRITE_KEYS: one generated key for every channel."""
    if not settings.write_keys:
        generate_local_secret(local_keys_file(settings),
                              f"{secrets.token_urlsafe(24)}=local:{'|'.join(sorted(CHANNELS))}\n")


def write_keys_spec(settings: IngestSettings) -> str:
    if settings.write_keys:
        return settings.write_keys
    path = local_keys_file(settings)
    return path.read_text().strip() if path.exists() else ""


class WriteKeys:
    def __init__(self, spec: str) -> None:
        self._keys = [(k.encode(), s) for k, s in parse_write_keys(spec).items()]

    def __len__(self) -> int:
        return len(self._keys)

    def lookup(self, key: str) -> Source | None:
        """Constant time in the key: every configured key is compared, whatever matches."""
        candidate, found = key.encode(), None
        for known, source in self._keys:
            if hmac.compare_digest(candidate, known):
                found = source
        return found


def parse_webhook_secrets(spec: str) -> dict[str, bytes]:
    out = {}
    for n, item in enumerate(filter(None, (i.strip() for i in spec.split(";"))), 1):
        provider, sep, secret = item.partition("=")
        if not (sep and provider.strip() and secret.strip()):
            raise ConfigError(f"KIZUNA_WEBHOOK_SECRETS: entry {n} is not provider=secret")
        out[provider.strip()] = secret.strip().encode()
    return out


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    """The webhook signature: `v1=` + hex HMAC-SHA256 over `timestamp.body`."""
    mac = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(secret: bytes, timestamp: str | None, signature: str | None, body: bytes,
           now: float, tolerance: int) -> str | None:
    """None when the signature is good and fresh, else why not."""
    if not timestamp or not signature:
        return "missing Kizuna-Timestamp or Kizuna-Signature header"
    stale = stale_timestamp(timestamp, now, tolerance)
    if stale:
        return stale
    if not hmac.compare_digest(sign(secret, timestamp, body), signature.strip()):
        return "signature does not match"
    return None


def stale_timestamp(timestamp: str, now: float, tolerance: float) -> str | None:
    """Why a signed request's unix-seconds timestamp is refused (None: it is fresh)."""
    try:
        at = float(timestamp)
    except ValueError:
        return f"timestamp {timestamp[:40]!r} is not unix seconds"
    if abs(now - at) > tolerance:
        return f"timestamp {timestamp} is more than {tolerance:.0f} s off (stale or replayed)"
    return None


def basic_credentials(authorization: str | None) -> str:
    """`user:password` of an HTTP Basic `Authorization` header, or "" when there is none."""
    scheme, _, encoded = (authorization or "").partition(" ")
    if scheme.lower() != "basic":
        return ""
    try:
        return base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
