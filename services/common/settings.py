"""Settings from the environment: one typed, frozen object per service.

Every setting is declared once, with its environment variable, default and documentation, so
that parsing, `kizuna config` and docs/configuration.md (`markdown`) come from the same place.
Defaults may refer to settings declared before them (`"chdb://{home}/clickhouse"`).
"""

from __future__ import annotations

import dataclasses
import os
import re
import typing
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from services.common.errors import ConfigError
from services.common.kafka_config import KafkaSecurity, from_properties, read_properties


def setting(env: str, default: str, doc: str, *, secret: bool = False,
            formerly: str | None = None) -> typing.Any:
    """Declare a dataclass field read from the environment variable `env` (or, when that is
    not set, from `formerly`: the name it had before a rename, still read)."""
    return field(metadata={"env": env, "default": default, "doc": doc, "secret": secret,
                           "formerly": formerly})


def _parse(env: str, raw: str, kind: type) -> object:
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is Path:
            return Path(raw).expanduser().resolve()
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{env}: expected {kind.__name__.lower()}, got {raw!r}") from None


T = typing.TypeVar("T")


def _secret_file(env: str, path: str) -> str:
    """A secret from a file (`<NAME>_FILE`, as Kubernetes and Docker mount secrets), without
    the line end a file written by hand usually has."""
    try:
        return Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise ConfigError(f"{env}: cannot read {path}: {exc.strerror or exc}") from None


def generate_local_secret(path: Path, content: str) -> None:
    """Local mode with a secret left unset: `content` kept in `path` (owner-only), made
    once; later starts read the same."""
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    path.chmod(0o600)


def load(cls: type[T], environ: Mapping[str, str] | None = None) -> T:
    """Build settings object `cls` from `environ` (default: the process environment)."""
    environ = os.environ if environ is None else environ
    hints = typing.get_type_hints(cls)
    values: dict[str, object] = {}
    explicit: set[str] = set()
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        kind = hints[f.name]
        if dataclasses.is_dataclass(kind):
            values[f.name] = load(kind, environ)
            continue
        meta = f.metadata
        raw = environ.get(meta["env"])
        if (raw is None or raw == "") and meta["formerly"]:
            raw = environ.get(meta["formerly"])
        if (raw is None or raw == "") and meta["secret"] and environ.get(meta["env"] + "_FILE"):
            raw = _secret_file(meta["env"] + "_FILE", environ[meta["env"] + "_FILE"])
        if raw is not None and raw != "":
            explicit.add(meta["env"])
        else:
            raw = meta["default"].format(**{k: v for k, v in values.items()})
        values[f.name] = _parse(meta["env"], raw, kind)
    obj = cls(**values)
    object.__setattr__(obj, "explicit", frozenset(explicit))
    getattr(obj, "validate", lambda: None)()
    return obj


def describe(obj: object) -> Iterator[tuple[str, str, str, str]]:
    """(env var, shown value, origin, doc) for every setting of `obj`, secrets masked."""
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from describe(value)
            continue
        meta = f.metadata
        shown = "****" if meta["secret"] and value else mask_url(str(value))
        origin = "env" if meta["env"] in obj.explicit else "default"
        yield meta["env"], shown, origin, meta["doc"]


def reveal(obj: object) -> Iterator[tuple[str, str]]:
    """(env var, value) of every secret setting, unmasked: only for `--show-secrets`."""
    for f in dataclasses.fields(obj):
        if not f.init:
            continue
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from reveal(value)
        elif f.metadata["secret"]:
            yield f.metadata["env"], str(value)


def mask_url(value: str) -> str:
    """Hide the password of a URL's user info (`http://user:pw@host` -> `http://user:****@host`)."""
    if "://" not in value or "@" not in value:
        return value
    parts = urlsplit(value)
    if parts.password is None:
        return value
    netloc = f"{parts.username}:****@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _check_port(env: str, port: int) -> None:
    if not 0 < port < 65536:
        raise ConfigError(f"{env}: {port} is not a TCP port (1-65535)")


def _check_store(env: str, url: str) -> None:
    if url.split("://")[0] not in ("memory", "rocksdb"):
        raise ConfigError(f"{env}: expected memory:// or rocksdb://, got {url!r}")


@dataclass(frozen=True)
class Settings:
    """What every stage and the `kizuna` command share."""

    home: Path = setting(
        "KIZUNA_HOME", "./.kizuna",
        "All local state: broker data, embedded ClickHouse, logs, process ids.")
    kafka_port: int = setting(
        "KIZUNA_KAFKA_PORT", "9092", "Port of the local broker started by `kizuna up`.")
    kafka_controller_port: int = setting(
        "KIZUNA_KAFKA_CONTROLLER_PORT", "9192",
        "KRaft controller port of the local broker (of its first node: the others follow on "
        "the next ports).")
    kafka_brokers: int = setting(
        "KIZUNA_KAFKA_BROKERS", "1",
        "Nodes of the local cluster `kizuna up` starts (each a KRaft broker and controller; "
        "client ports from KIZUNA_KAFKA_PORT on, controller ports from "
        "KIZUNA_KAFKA_CONTROLLER_PORT on): 3 to try replication and failover on one machine.")
    kafka_version: str = setting(
        "KIZUNA_KAFKA_VERSION", "4.1.2",
        "Apache Kafka version of the local broker, fetched from Maven Central (4.x; 3.9.x "
        "for the previous line).")
    kafka_bootstrap: str = setting(
        "KIZUNA_KAFKA_BOOTSTRAP", "127.0.0.1:{kafka_port}",
        "Kafka bootstrap servers. When set, `kizuna up` uses that cluster and starts no broker.")
    kafka_config_file: str = setting(
        "KIZUNA_KAFKA_CONFIG_FILE", "",
        "A Kafka client properties file, as managed services hand them out (librdkafka's keys, "
        "or the Java client's `sasl.jaas.config`): bootstrap.servers (then `kizuna up` starts "
        "no broker), security.protocol, SASL and TLS. Every Kizuna client uses it; the "
        "KIZUNA_KAFKA_* variables below override it key by key.")
    kafka_security_protocol: str = setting(
        "KIZUNA_KAFKA_SECURITY_PROTOCOL", "",
        "PLAINTEXT (default), SSL, SASL_PLAINTEXT or SASL_SSL.")
    kafka_sasl_mechanism: str = setting(
        "KIZUNA_KAFKA_SASL_MECHANISM", "", "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512.")
    kafka_sasl_username: str = setting(
        "KIZUNA_KAFKA_SASL_USERNAME", "", "SASL user (an API key on Confluent Cloud).")
    kafka_sasl_password: str = setting(
        "KIZUNA_KAFKA_SASL_PASSWORD", "", "SASL password (an API secret).", secret=True)
    kafka_ssl_ca_location: str = setting(
        "KIZUNA_KAFKA_SSL_CA_LOCATION", "",
        "PEM file of the CA the brokers' certificates are checked against (empty: the "
        "system's CAs). Hostnames are verified unless the properties file sets "
        "ssl.endpoint.identification.algorithm=none.")
    kafka_ssl_certificate_location: str = setting(
        "KIZUNA_KAFKA_SSL_CERTIFICATE_LOCATION", "",
        "Mutual TLS: the client certificate (PEM).")
    kafka_ssl_key_location: str = setting(
        "KIZUNA_KAFKA_SSL_KEY_LOCATION", "", "Mutual TLS: the client's private key (PEM).")
    kafka_ssl_key_password: str = setting(
        "KIZUNA_KAFKA_SSL_KEY_PASSWORD", "", "Password of an encrypted client key.",
        secret=True)
    kafka_heap: str = setting(
        "KIZUNA_KAFKA_HEAP", "768m", "Maximum Java heap of the local broker.")
    schema_registry_port: int = setting(
        "KIZUNA_SCHEMA_REGISTRY_PORT", "8081",
        "Port of the local schema registry started by `kizuna up` (127.0.0.1).")
    schema_registry_url: str = setting(
        "KIZUNA_SCHEMA_REGISTRY_URL", "http://127.0.0.1:{schema_registry_port}/apis/ccompat/v7",
        "Confluent-compatible schema registry: topics carry Confluent's wire format (0x00, "
        "schema id) and `kizuna topics create` registers the schemas under `<topic>-value`. "
        "When set, `kizuna up` uses that registry and starts none. `none`: no registry, "
        "values carry Avro single-object encoding and readers need `schemas/`.")
    schema_registry_basic_auth: str = setting(
        "KIZUNA_SCHEMA_REGISTRY_BASIC_AUTH", "",
        "`user:password` for a registry behind basic auth (Confluent Cloud: API key:secret).",
        secret=True)
    schema_registry_ca_location: str = setting(
        "KIZUNA_SCHEMA_REGISTRY_CA_LOCATION", "",
        "PEM file of the CA a registry served over HTTPS is checked against (empty: the "
        "system's CAs).")
    schema_registry_heap: str = setting(
        "KIZUNA_SCHEMA_REGISTRY_HEAP", "256m", "Maximum Java heap of the local schema registry.")
    topic_prefix: str = setting(
        "KIZUNA_TOPIC_PREFIX", "kizuna.", "Prefix of every topic name (`kizuna.` + `sessions`).")
    partitions: int = setting(
        "KIZUNA_PARTITIONS", "4", "Partitions of the keyed topics when `kizuna` creates them.")
    replication_factor: int = setting(
        "KIZUNA_REPLICATION_FACTOR", "1",
        "Replication factor of every topic Kizuna and its stages' framework create (public, "
        "internal, changelogs); from 3 on they get min.insync.replicas=2. With a local "
        "cluster of several nodes (KIZUNA_KAFKA_BROKERS) it defaults to min(3, nodes).")
    clickhouse_url: str = setting(
        "KIZUNA_CLICKHOUSE_URL", "chdb://{home}/clickhouse",
        "`chdb:///abs/path` for the embedded engine, `http(s)://user:pw@host:8123` for a server.")
    clickhouse_user: str = setting(
        "KIZUNA_CLICKHOUSE_USER", "",
        "User the warehouse and the commands log in to a ClickHouse server as (empty: the "
        "URL's, else `default`).")
    clickhouse_password: str = setting(
        "KIZUNA_CLICKHOUSE_PASSWORD", "",
        "That user's password (or in the URL); `_FILE` reads it from a file.", secret=True)
    clickhouse_ca_location: str = setting(
        "KIZUNA_CLICKHOUSE_CA_LOCATION", "",
        "PEM file of the CA a ClickHouse server over HTTPS is checked against (empty: the "
        "system's CAs).")
    clickhouse_database: str = setting(
        "KIZUNA_CLICKHOUSE_DATABASE", "kizuna",
        "Analyst-facing database; storage tables live in `<database>_store`.")
    warehouse_port: int = setting(
        "KIZUNA_WAREHOUSE_PORT", "8089",
        "Warehouse HTTP port (127.0.0.1): health, metrics, the embedded engine's query gateway.")
    bind_host: str = setting(
        "KIZUNA_BIND_HOST", "127.0.0.1",
        "Interface services listen on; 0.0.0.0 in containers. The embedded engine's query "
        "gateway only ever listens on 127.0.0.1.")
    cache_dir: Path = setting(
        "KIZUNA_CACHE_DIR", "~/.cache/kizuna",
        "Downloaded Kafka jars and schema registry, shared by every stack.")
    start_timeout: float = setting(
        "KIZUNA_START_TIMEOUT", "120", "Seconds `kizuna up` waits for each component to be ready.")
    log_level: str = setting("KIZUNA_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR.")
    log_format: str = setting("KIZUNA_LOG_FORMAT", "text", "`text` or `json` (one object a line).")
    batch_wait_seconds: float = setting(
        "KIZUNA_BATCH_WAIT_SECONDS", "0.2",
        "Longest a stage waits to fill a batch before processing what it has: lower gives "
        "fresher outputs under live traffic (a backlog always fills whole batches).")
    standby_replicas: int = setting(
        "KIZUNA_STANDBY_REPLICAS", "1",
        "Standby copies each stateful stage keeps of every state partition on its other "
        "workers (faust's table_standby_replicas): a worker taking a partition over in a "
        "rebalance or a failover starts from its standby instead of the whole changelog.")
    stall_seconds: float = setting(
        "KIZUNA_STALL_SECONDS", "60",
        "A stage holding an input partition with messages waiting and no progress on it for "
        "this long says so: /readyz not ready (naming the partition), the gauge "
        "kizuna_stage_stalled_partitions and `kizuna status`.")
    worker_id: str = setting(
        "KIZUNA_WORKER_ID", "",
        "A name for this worker that stays the same across its restarts (a StatefulSet pod's "
        "name; `kizuna up` uses `local`). Set, each stage joins its consumer group as a static "
        "member (`group.instance.id`): killed and restarted under the same name, it takes its "
        "partitions back at once instead of after the session timeout. A worker stopped for "
        "good hands its partitions on after the session timeout. Empty: dynamic membership.")
    history_retention_days: float = setting(
        "KIZUNA_HISTORY_RETENTION_DAYS", "0",
        "0 (default): the sessionizer keeps every profile's closed sessions and the scorer "
        "a digest of every touch it applied, so a touch however late (a second export of the "
        "same months, a backfill behind a live pipeline) gives the results of the events in "
        "time. N: they forget what is N days behind a profile's latest touch, and a touch "
        "older than that is no longer exact (docs/late-data.md). Alerting keeps every touch "
        "either way: it decides again from them.")
    state_cache_mb: int = setting(
        "KIZUNA_STATE_CACHE_MB", "16",
        "`rocksdb://` stores only: the block cache of each partition's database, in MiB (a "
        "stage holds one database per partition it owns or stands by for). With the write "
        "buffers, what bounds a stage's state in memory, however many customers it holds.")
    state_write_buffer_mb: int = setting(
        "KIZUNA_STATE_WRITE_BUFFER_MB", "8",
        "`rocksdb://` stores only: the size of each partition database's write buffer "
        "(memtable), in MiB; two per database.")
    source_topics: str = setting(
        "KIZUNA_SOURCE_TOPICS", "",
        "Topics of your own that the ingest stage consumes as input, "
        "`topic=source:channel|channel;...`: each message one event in the `/v1/events` JSON "
        "format, or an array of them, in JSON or in Avro (Confluent's wire format, the schema "
        "from the registry), validated as the collector does (the source and channels as a "
        "write key's). A topic that does not exist yet is consumed once it does.")
    fault_injection: str = setting(
        "KIZUNA_FAULT_INJECTION", "",
        "Chaos testing only: `stage:marker,...` makes that stage's logic raise on every touch "
        "whose event_id contains the marker (stages: sessionizer, engagement_scorer, "
        "alerting), to check that poison records are dead-lettered. Empty in production.")
    explicit: frozenset[str] = field(default=frozenset(), init=False, compare=False)
    #: How the Kafka clients connect (the properties file and the variables, checked).
    kafka: KafkaSecurity = field(default=KafkaSecurity(), init=False, compare=False)

    @property
    def history_retention_ms(self) -> int | None:
        """KIZUNA_HISTORY_RETENTION_DAYS in ms; None: for ever."""
        return int(self.history_retention_days * 86_400_000) or None

    @property
    def source_topic_names(self) -> list[str]:
        """The topics KIZUNA_SOURCE_TOPICS names (its spec is checked by the ingest stage)."""
        return [item.partition("=")[0].strip() for item in self.source_topics.split(";")
                if item.strip()]

    def group_instance_id(self, stage: str) -> str | None:
        """This worker's static member name in `stage`'s consumer group (None: dynamic)."""
        return f"{self.topic_prefix}{stage}-{self.worker_id}" if self.worker_id else None

    def _kafka_client(self) -> None:
        """Merge the client properties file and the KIZUNA_KAFKA_* variables (a variable
        wins) into `kafka`; the file's bootstrap servers and registry, unless set."""
        fields: dict = {}
        other: dict = {}
        origin = "KIZUNA_KAFKA_* variables"
        if self.kafka_config_file:
            path = Path(self.kafka_config_file).expanduser()
            origin = f"KIZUNA_KAFKA_CONFIG_FILE {path}"
            fields, other = from_properties(read_properties(path), origin)
            origin += " and KIZUNA_KAFKA_* variables"
        for name in ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password",
                     "ssl_ca_location", "ssl_certificate_location", "ssl_key_location",
                     "ssl_key_password"):
            value = getattr(self, f"kafka_{name}")
            if value:
                fields["protocol" if name == "security_protocol" else name] = value
        set_ = object.__setattr__
        set_(self, "kafka", KafkaSecurity(**fields).validate(origin))
        explicit = set(self.explicit)
        if "KIZUNA_KAFKA_BOOTSTRAP" not in explicit and not other.get("bootstrap"):
            set_(self, "kafka_bootstrap", ",".join(f"127.0.0.1:{port}"
                                                   for port in self.local_kafka_ports))
            if "KIZUNA_REPLICATION_FACTOR" not in explicit:
                set_(self, "replication_factor", min(3, self.kafka_brokers))
        if other.get("bootstrap") and "KIZUNA_KAFKA_BOOTSTRAP" not in explicit:
            set_(self, "kafka_bootstrap", other["bootstrap"])
            explicit.add("KIZUNA_KAFKA_BOOTSTRAP")
        if other.get("registry_url") and "KIZUNA_SCHEMA_REGISTRY_URL" not in explicit:
            set_(self, "schema_registry_url", other["registry_url"])
            explicit.add("KIZUNA_SCHEMA_REGISTRY_URL")
        if other.get("registry_auth") and "KIZUNA_SCHEMA_REGISTRY_BASIC_AUTH" not in explicit:
            set_(self, "schema_registry_basic_auth", other["registry_auth"])
        set_(self, "explicit", frozenset(explicit))

    def validate(self) -> None:
        self._kafka_client()
        if self.standby_replicas < 0:
            raise ConfigError("KIZUNA_STANDBY_REPLICAS must be >= 0")
        if self.stall_seconds <= 0:
            raise ConfigError("KIZUNA_STALL_SECONDS must be > 0")
        if not 0 < self.batch_wait_seconds <= 10:
            raise ConfigError("KIZUNA_BATCH_WAIT_SECONDS must be > 0 and at most 10")
        _check_port("KIZUNA_KAFKA_PORT", self.kafka_port)
        _check_port("KIZUNA_KAFKA_CONTROLLER_PORT", self.kafka_controller_port)
        _check_port("KIZUNA_WAREHOUSE_PORT", self.warehouse_port)
        _check_port("KIZUNA_SCHEMA_REGISTRY_PORT", self.schema_registry_port)
        if self.schema_registry and urlsplit(self.schema_registry_url).scheme not in (
                "http", "https"):
            raise ConfigError(
                f"KIZUNA_SCHEMA_REGISTRY_URL: expected an http(s):// URL or `none`, got "
                f"{mask_url(self.schema_registry_url)!r}")
        if self.schema_registry_basic_auth and ":" not in self.schema_registry_basic_auth:
            raise ConfigError("KIZUNA_SCHEMA_REGISTRY_BASIC_AUTH: expected `user:password`")
        if not 1 <= self.kafka_brokers <= 9:
            raise ConfigError("KIZUNA_KAFKA_BROKERS must be between 1 and 9")
        if set(self.local_kafka_ports) & set(self.local_controller_ports):
            raise ConfigError(
                f"KIZUNA_KAFKA_PORT ({self.kafka_port}) and KIZUNA_KAFKA_CONTROLLER_PORT "
                f"({self.kafka_controller_port}) overlap for {self.kafka_brokers} node(s): "
                "each node takes the next port of both")
        if not re.fullmatch(r"[34]\.\d+\.\d+", self.kafka_version):
            raise ConfigError(f"KIZUNA_KAFKA_VERSION: expected a 4.x.y or 3.x.y release, got "
                              f"{self.kafka_version!r}")
        scheme = urlsplit(self.clickhouse_url).scheme
        if scheme not in ("chdb", "http", "https"):
            raise ConfigError(
                f"KIZUNA_CLICKHOUSE_URL: unsupported scheme {scheme or '(none)'!r} in "
                f"{mask_url(self.clickhouse_url)!r}; use chdb:///abs/path or http(s)://host:8123")
        if self.partitions < 1 or self.replication_factor < 1:
            raise ConfigError("KIZUNA_PARTITIONS and KIZUNA_REPLICATION_FACTOR must be >= 1")
        if self.history_retention_days < 0:
            raise ConfigError("KIZUNA_HISTORY_RETENTION_DAYS must be >= 0 (0: for ever)")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"KIZUNA_LOG_FORMAT: expected text or json, got {self.log_format!r}")

    @property
    def local_kafka(self) -> bool:
        """True when `kizuna up` runs its own broker (no KIZUNA_KAFKA_BOOTSTRAP given, nor a
        properties file naming a cluster)."""
        return "KIZUNA_KAFKA_BOOTSTRAP" not in self.explicit

    @property
    def local_kafka_ports(self) -> list[int]:
        """Client ports of the local cluster's nodes."""
        return [self.kafka_port + i for i in range(self.kafka_brokers)]

    @property
    def local_controller_ports(self) -> list[int]:
        return [self.kafka_controller_port + i for i in range(self.kafka_brokers)]

    @property
    def schema_registry(self) -> bool:
        """True when topics carry Confluent's wire format (a registry is configured)."""
        return self.schema_registry_url.strip().lower() != "none"

    @property
    def local_schema_registry(self) -> bool:
        """True when `kizuna up` runs its own registry (no KIZUNA_SCHEMA_REGISTRY_URL given)."""
        return self.schema_registry and "KIZUNA_SCHEMA_REGISTRY_URL" not in self.explicit

    @property
    def embedded_clickhouse(self) -> bool:
        return self.clickhouse_url.startswith("chdb:")

    @property
    def chdb_path(self) -> Path:
        return Path(urlsplit(self.clickhouse_url).path).resolve()

    @property
    def store_database(self) -> str:
        return f"{self.clickhouse_database}_store"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"


@dataclass(frozen=True)
class WarehouseSettings:
    """The warehouse stage: owner of the ClickHouse connection."""

    common: Settings
    query_timeout: float = setting(
        "KIZUNA_QUERY_TIMEOUT", "60", "Seconds an analyst query through `kizuna query` may run.")
    batch_seconds: float = setting(
        "KIZUNA_WAREHOUSE_BATCH_SECONDS", "0.25",
        "Longest the warehouse waits to fill a batch (up to 20,000 messages) before inserting "
        "it: lower gives fresher rows, higher fewer and larger inserts.")
    clickhouse_http_port: int = setting(
        "KIZUNA_CLICKHOUSE_HTTP_PORT", "8123",
        "Embedded mode: the port where the warehouse answers ClickHouse's HTTP interface for "
        "analysts' tools (clickhouse-connect, pandas, SQLAlchemy, BI tools, curl).")
    clickhouse_http_host: str = setting(
        "KIZUNA_CLICKHOUSE_HTTP_HOST", "127.0.0.1",
        "Interface the ClickHouse HTTP interface listens on: loopback unless set (0.0.0.0 to "
        "let other hosts connect).")
    analyst_user: str = setting(
        "KIZUNA_ANALYST_USER", "analyst",
        "The read-only user analysts connect as (HTTP interface; with a ClickHouse server, the "
        "warehouse creates it with SELECT on the Kizuna databases only).")
    analyst_password: str = setting(
        "KIZUNA_ANALYST_PASSWORD", "",
        "The analyst user's password. Empty in local mode: `kizuna up` generates one in "
        "$KIZUNA_HOME/analyst_password (`kizuna config --show-secrets` prints it).",
        secret=True)
    analyst_queries: int = setting(
        "KIZUNA_ANALYST_QUERIES", "4",
        "Analyst queries the embedded engine runs at once (each on its own read-only session, "
        "beside the loader); more wait their turn.")
    compact_after_seconds: int = setting(
        "KIZUNA_WAREHOUSE_COMPACT_AFTER_SECONDS", "600",
        "A table partition in several parts that has had no new part for this long (a past "
        "month of touchpoints; every table after an import) is merged into one, once, so the "
        "views read it with no merge; 0 leaves merging to ClickHouse alone.")
    fault_injection: bool = setting(
        "KIZUNA_WAREHOUSE_FAULT_INJECTION", "false",
        "Chaos testing only: accept `POST /v1/faults?inserts=N` on the local gateway, which "
        "makes the next N inserts fail half-way (half the rows written, then an error).")
    explicit: frozenset[str] = field(default=frozenset(), init=False, compare=False)

    def validate(self) -> None:
        if not 0 < self.batch_seconds <= 60:
            raise ConfigError("KIZUNA_WAREHOUSE_BATCH_SECONDS must be > 0 and at most 60")
        if self.compact_after_seconds < 0:
            raise ConfigError("KIZUNA_WAREHOUSE_COMPACT_AFTER_SECONDS must be 0 (off) or more")
        _check_port("KIZUNA_CLICKHOUSE_HTTP_PORT", self.clickhouse_http_port)
        if self.analyst_queries < 1:
            raise ConfigError("KIZUNA_ANALYST_QUERIES must be at least 1")


@dataclass(frozen=True)
class IngestSettings:
    """The collector (`POST /v1/events`, webhooks) and `kizuna import`."""

    common: Settings
    port: int = setting("KIZUNA_INGEST_PORT", "8088", "Collector HTTP port.")
    write_keys: str = setting(
        "KIZUNA_WRITE_KEYS", "",
        "`key=source:channel|channel;...`. Empty in local mode: `kizuna up` generates one in "
        "$KIZUNA_HOME/write_keys (`kizuna config --show-secrets` prints it).", secret=True)
    max_event_bytes: int = setting(
        "KIZUNA_INGEST_MAX_EVENT_BYTES", "32768", "Largest accepted event (JSON bytes).")
    max_request_bytes: int = setting(
        "KIZUNA_INGEST_MAX_REQUEST_BYTES", "1048576",
        "Largest request body, after gzip decompression.")
    max_batch_events: int = setting(
        "KIZUNA_INGEST_MAX_BATCH_EVENTS", "1000", "Most events in one request.")
    rate_per_source: float = setting(
        "KIZUNA_INGEST_RATE", "20000",
        "Events per second each source may send (token bucket, bursts of 2 s); then 429.")
    linger_ms: float = setting(
        "KIZUNA_INGEST_LINGER_MS", "0",
        "Milliseconds the collector gathers the touchpoints of concurrent requests bound for "
        "one partition into one message (a request is still answered only once Kafka has its "
        "events). 0 (default): each request's touchpoints go on their own. Measured at 600 "
        "single-event requests/s, 5 ms cut the raw topic's messages 5x but the stages' CPU "
        "only 4%, and added 11-15 ms to a request (docs/benchmarks.md).")
    produce_timeout_ms: int = setting(
        "KIZUNA_INGEST_PRODUCE_TIMEOUT_MS", "10000",
        "How long the collector waits for Kafka to acknowledge before answering 503.")
    pii_properties: str = setting(
        "KIZUNA_PII_PROPERTIES", "email,phone",
        "Comma-separated property names hashed (salted SHA-256) before anything reaches Kafka.")
    pii_salt: str = setting(
        "KIZUNA_PII_SALT", "", "Salt of the PII hash; set it in production.", secret=True)
    webhook_secrets: str = setting(
        "KIZUNA_WEBHOOK_SECRETS", "",
        "`provider=secret;...`: email webhooks' secrets: sendgrid= its verification key, "
        "mailgun= its signing key, postmark= user:password, any other name an HMAC-SHA256 "
        "secret for the generic webhook.", secret=True)
    webhook_tolerance: int = setting(
        "KIZUNA_WEBHOOK_TOLERANCE", "300", "Seconds a webhook signature's timestamp may be off.")
    import_sort_memory_mb: float = setting(
        "KIZUNA_IMPORT_SORT_MEMORY_MB", "256",
        "Memory `kizuna import` sorts events in before it spills a sorted run to disk "
        "(under $KIZUNA_HOME/import); bounds its memory whatever the files' size.")
    segment_events_file: str = setting(
        "KIZUNA_SEGMENT_EVENTS_FILE", "",
        "YAML (`events: {Track Name: event_type}`) merged over the shipped map of Segment track "
        "names (services/ingest/segment_events.yaml); names in neither become snake_case.")
    snowplow_apps: str = setting(
        "KIZUNA_SNOWPLOW_APPS", "",
        "`app_id=source:channel|channel;...`: the Snowplow trackers (by their app id) the "
        "collector takes events from, and as which source; Snowplow has no write key.")
    explicit: frozenset[str] = field(default=frozenset(), init=False, compare=False)

    def validate(self) -> None:
        # KIZUNA_SNOWPLOW_APPS and KIZUNA_SEGMENT_EVENTS_FILE are read, and checked, by the
        # collector at start (services.ingest.app.Collector).
        _check_port("KIZUNA_INGEST_PORT", self.port)
        if self.import_sort_memory_mb < 1:
            raise ConfigError("KIZUNA_IMPORT_SORT_MEMORY_MB must be at least 1")
        if not 0 <= self.linger_ms <= 1000:
            raise ConfigError("KIZUNA_INGEST_LINGER_MS must be between 0 and 1000")

    @property
    def pii_names(self) -> frozenset[str]:
        return frozenset(p.strip() for p in self.pii_properties.split(",") if p.strip())


@dataclass(frozen=True)
class SessionizerSettings:
    """The sessionizer: identity resolution and event-time sessions."""

    common: Settings
    port: int = setting(
        "KIZUNA_SESSIONIZER_PORT", "8090", "Sessionizer HTTP port: readyz and Prometheus metrics.")
    gap_minutes: float = setting(
        "KIZUNA_SESSION_GAP_MINUTES", "30", "Inactivity gap that ends a session.")
    max_length_hours: float = setting(
        "KIZUNA_SESSION_MAX_HOURS", "24", "Longest session; a longer run of activity is split.")
    lateness_minutes: float = setting(
        "KIZUNA_ALLOWED_LATENESS_MINUTES", "10",
        "How far behind its partition's event time a touchpoint may arrive and join the open "
        "sessions as any other; a later one corrects the closed sessions it belongs to.")
    batch_size: int = setting(
        "KIZUNA_SESSIONIZER_BATCH", "2000", "Most Kafka messages processed as one batch.")
    store: str = setting(
        "KIZUNA_SESSIONIZER_STORE", "memory://",
        "faust table store: `memory://` (rebuilt from the changelog topic at start) or "
        "`rocksdb://` (on disk under $KIZUNA_HOME).")
    tick_seconds: float = setting(
        "KIZUNA_WATERMARK_TICK_SECONDS", "0",
        "Live mode: every this many seconds, move event time on to the wall clock minus the "
        "allowed lateness on every raw partition, so idle sessions close (sessions close by "
        "the lowest event time of all partitions: one idle partition holds them all). 0 "
        "(default) is off: imports of past events move it with `kizuna import --until`.")
    explicit: frozenset[str] = field(default=frozenset(), init=False, compare=False)

    def validate(self) -> None:
        _check_port("KIZUNA_SESSIONIZER_PORT", self.port)
        if self.gap_minutes <= 0 or self.max_length_hours <= 0 or self.lateness_minutes < 0:
            raise ConfigError("KIZUNA_SESSION_GAP_MINUTES and KIZUNA_SESSION_MAX_HOURS must be "
                              "> 0, KIZUNA_ALLOWED_LATENESS_MINUTES >= 0")
        _check_store("KIZUNA_SESSIONIZER_STORE", self.store)


@dataclass(frozen=True)
class EngagementScorerSettings:
    """The engagement scorer: score, RFM and BTYD per customer. Its variables were
    KIZUNA_SCORER_* before 0.9; those names are still read."""

    common: Settings
    port: int = setting(
        "KIZUNA_ENGAGEMENT_SCORER_PORT", "8091",
        "Engagement scorer HTTP port: readyz and metrics.", formerly="KIZUNA_SCORER_PORT")
    weights_file: str = setting(
        "KIZUNA_WEIGHTS_FILE", "",
        "Engagement weights, half-life and tiers (YAML); empty: the shipped "
        "services/domain/weights.yaml. Validated at start.")
    batch_size: int = setting(
        "KIZUNA_ENGAGEMENT_SCORER_BATCH", "2000",
        "Most Kafka messages the scorer processes as one batch.", formerly="KIZUNA_SCORER_BATCH")
    store: str = setting(
        "KIZUNA_ENGAGEMENT_SCORER_STORE", "memory://",
        "faust table store of the scorer: `memory://` or `rocksdb://`.",
        formerly="KIZUNA_SCORER_STORE")
    explicit: frozenset[str] = field(default=frozenset(), init=False, compare=False)

    def validate(self) -> None:
        _check_port("KIZUNA_ENGAGEMENT_SCORER_PORT", self.port)
        _check_store("KIZUNA_ENGAGEMENT_SCORER_STORE", self.store)


@dataclass(frozen=True)
class AlertingSettings:
    """The alerting stage: cart abandonment and churn risk."""

    common: Settings
    port: int = setting("KIZUNA_ALERTING_PORT", "8092", "Alerting HTTP port: readyz, metrics.")
    abandonment_minutes: float = setting(
        "KIZUNA_CART_ABANDONMENT_MINUTES", "60",
        "A cart with no purchase this long after its last activity is abandoned.")
    cart_cap_hours: float = setting(
        "KIZUNA_CART_ALERT_CAP_HOURS", "24",
        "At most one cart alert per customer in this window; the others are counted.")
    churn_engagement_fraction: float = setting(
        "KIZUNA_CHURN_ENGAGEMENT_FRACTION", "0.25",
        "Churn risk when the engagement score decays below this fraction of the customer's "
        "90-day peak.")
    churn_min_peak: float = setting(
        "KIZUNA_CHURN_MIN_PEAK", "10",
        "Peaks below this score are too small for an engagement-drop alert.")
    churn_silence_factor: float = setting(
        "KIZUNA_CHURN_SILENCE_FACTOR", "3",
        "Churn risk when no purchase comes for this many times the customer's median "
        "interval between purchase days (customers with purchases on 2 days or more).")
    churn_silence_min_days: float = setting(
        "KIZUNA_CHURN_SILENCE_MIN_DAYS", "14", "The purchase silence is at least this long.")
    churn_dormancy_days: float = setting(
        "KIZUNA_CHURN_DORMANCY_DAYS", "21",
        "Churn risk after this many days without a touchpoint of the customer's own doing.")
    churn_cooldown_days: float = setting(
        "KIZUNA_CHURN_COOLDOWN_DAYS", "7",
        "After a churn alert, no other for this long unless the severity rises (counted).")
    correction_horizon_days: float = setting(
        "KIZUNA_CORRECTION_HORIZON_DAYS", "7",
        "An alert decision made further than this behind the pipeline's clock (late touches, "
        "a backfill of history) is recorded in ClickHouse with status `historical`, never "
        "sent.")
    alert_clock: str = setting(
        "KIZUNA_ALERT_CLOCK", "wall",
        "What the correction horizon is measured from: `wall` (default), the later of the "
        "partition's event time and the wall clock, so history imported into any pipeline "
        "is recorded, never sent; `event`, the partition's event time alone, for a "
        "simulation or replay of past traffic that should alert as if live (`kizuna demo`, "
        "the tests' simulated weeks).")
    batch_size: int = setting(
        "KIZUNA_ALERTING_BATCH", "2000", "Most Kafka messages alerting processes as one batch.")
    store: str = setting(
        "KIZUNA_ALERTING_STORE", "memory://",
        "faust table store of alerting: `memory://` or `rocksdb://`.")
    explicit: frozenset[str] = field(default=frozenset(), init=False, compare=False)

    def validate(self) -> None:
        _check_port("KIZUNA_ALERTING_PORT", self.port)
        if self.correction_horizon_days <= 0:
            raise ConfigError("KIZUNA_CORRECTION_HORIZON_DAYS must be > 0")
        if self.alert_clock not in ("wall", "event"):
            raise ConfigError(f"KIZUNA_ALERT_CLOCK: expected wall or event, got "
                              f"{self.alert_clock!r}")
        if self.abandonment_minutes <= 0 or self.cart_cap_hours < 0:
            raise ConfigError("KIZUNA_CART_ABANDONMENT_MINUTES must be > 0 and "
                              "KIZUNA_CART_ALERT_CAP_HOURS >= 0")
        if not 0 < self.churn_engagement_fraction < 1:
            raise ConfigError("KIZUNA_CHURN_ENGAGEMENT_FRACTION must be between 0 and 1")
        if min(self.churn_silence_factor, self.churn_silence_min_days,
               self.churn_dormancy_days) <= 0 or min(self.churn_cooldown_days,
                                                     self.churn_min_peak) < 0:
            raise ConfigError("KIZUNA_CHURN_SILENCE_FACTOR, KIZUNA_CHURN_SILENCE_MIN_DAYS and "
                              "KIZUNA_CHURN_DORMANCY_DAYS must be > 0, "
                              "KIZUNA_CHURN_COOLDOWN_DAYS and KIZUNA_CHURN_MIN_PEAK >= 0")
        _check_store("KIZUNA_ALERTING_STORE", self.store)


def markdown() -> str:
    """docs/configuration.md: every setting, its default and its meaning, from the
    declarations themselves (`kizuna config --markdown`; a test keeps the file equal)."""
    envs = {f.name: f.metadata["env"] for cls in ALL_SETTINGS for f in dataclasses.fields(cls)
            if f.init and "env" in f.metadata}
    out = [
        "# Configuration",
        "",
        "Every setting comes from the environment (`KIZUNA_*`); `kizuna config -v` prints the "
        "effective values with their meaning, secrets masked. Every secret also takes "
        "`<NAME>_FILE`, the path of a file holding it (Kubernetes and Docker secrets). All "
        "local state lives under `KIZUNA_HOME`, so two stacks with different homes and ports "
        "run side by side.",
        "",
        "This page is generated from the settings' declarations "
        "(`services/common/settings.py`): `kizuna config --markdown > docs/configuration.md`.",
    ]
    seen: set[str] = set()
    for cls in ALL_SETTINGS:
        rows = []
        for f in dataclasses.fields(cls):
            meta = f.metadata
            if not f.init or "env" not in meta or meta["env"] in seen:
                continue
            seen.add(meta["env"])
            default = re.sub(r"\{(\w+)\}", lambda m: f"${envs[m[1]]}", meta["default"])
            shown = f"`{default}`" if default else "empty"
            secret = " Secret: `_FILE` reads it from a file." if meta["secret"] else ""
            formerly = f" (Formerly `{meta['formerly']}`, still read.)" if meta["formerly"] else ""
            rows.append(f"| `{meta['env']}` | {shown} | {meta['doc']}{secret}{formerly} |")
        if rows:
            title = (cls.__doc__ or cls.__name__).strip().splitlines()[0].rstrip(".")
            out += ["", f"## {title}", "", "| variable | default | meaning |", "|---|---|---|",
                    *rows]
    return "\n".join(out) + "\n"


#: Every settings object, in the order `kizuna config` prints them.
ALL_SETTINGS: tuple[type, ...] = (Settings, IngestSettings, SessionizerSettings,
                                  EngagementScorerSettings, AlertingSettings, WarehouseSettings)
