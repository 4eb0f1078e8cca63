"""How every Kafka client of Kizuna reaches the cluster: bootstrap servers and security.

Read the way managed services hand it out: a client properties file (`KIZUNA_KAFKA_CONFIG_FILE`,
librdkafka's keys or the Java client's `sasl.jaas.config`), and the same settings one by one
as `KIZUNA_KAFKA_*` variables, a variable overriding the file. One `KafkaSecurity` then
configures both client libraries Kizuna runs: librdkafka (confluent-kafka: the collector, the
importer, the warehouse, the stages' outputs, the admin client, every command) and aiokafka
(faust: the stages' consumers, changelogs and assignor).

A key Kizuna cannot honour (a Java keystore, OAUTHBEARER, GSSAPI) is refused with one line
saying what to use instead; so is a key it does not know.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from services.common.errors import ConfigError

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

#: Keys of a client properties file, and the `KafkaSecurity` field each sets.
FIELDS = {
    "security.protocol": "protocol",
    "sasl.mechanism": "sasl_mechanism",
    "sasl.mechanisms": "sasl_mechanism",  # librdkafka's spelling
    "sasl.username": "sasl_username",
    "sasl.password": "sasl_password",
    "ssl.ca.location": "ssl_ca_location",
    "ssl.certificate.location": "ssl_certificate_location",
    "ssl.key.location": "ssl_key_location",
    "ssl.key.password": "ssl_key_password",
}
#: Keys a managed service's file carries that Kizuna reads elsewhere or does already.
ACCEPTED = {
    "bootstrap.servers": "the cluster (KIZUNA_KAFKA_BOOTSTRAP)",
    "sasl.jaas.config": "its username and password",
    "ssl.endpoint.identification.algorithm": "hostname verification (https, or none)",
    "schema.registry.url": "KIZUNA_SCHEMA_REGISTRY_URL",
    "basic.auth.credentials.source": "USER_INFO, with basic.auth.user.info",
    "basic.auth.user.info": "KIZUNA_SCHEMA_REGISTRY_BASIC_AUTH",
    "client.dns.lookup": "every address of a name is tried (librdkafka always does)",
    "acks": "all: Kizuna's producers always wait for every in-sync replica",
    "session.timeout.ms": "Kizuna's consumers use their own",
    "client.id": "each client names itself",
}
#: Keys Kizuna cannot honour, and what to use instead.
REFUSED = {
    "ssl.truststore.location": "a Java truststore: export its CA as PEM (`keytool -exportcert "
                               "-rfc -keystore truststore.jks -alias CARoot > ca.pem`) and set "
                               "ssl.ca.location",
    "ssl.truststore.password": "a Java truststore: use ssl.ca.location with a PEM file",
    "ssl.truststore.type": "a Java truststore: use ssl.ca.location with a PEM file",
    "ssl.keystore.location": "a Java keystore: export the client certificate and key as PEM "
                             "(`openssl pkcs12 -in keystore.p12 -out ...`) and set "
                             "ssl.certificate.location and ssl.key.location",
    "ssl.keystore.password": "a Java keystore: use ssl.certificate.location and "
                             "ssl.key.location (PEM)",
    "ssl.keystore.type": "a Java keystore: use PEM files",
    "ssl.key.pem": "inline PEM: write it to a file and set ssl.key.location",
    "ssl.certificate.pem": "inline PEM: write it to a file and set ssl.certificate.location",
    "ssl.ca.pem": "inline PEM: write it to a file and set ssl.ca.location",
    "sasl.login.callback.handler.class": "OAUTHBEARER is not supported: use SCRAM or PLAIN "
                                         "credentials (an API key and secret)",
    "sasl.oauthbearer.method": "OAUTHBEARER is not supported: use SCRAM or PLAIN credentials",
    "sasl.kerberos.service.name": "GSSAPI (Kerberos) is not supported: use SCRAM, PLAIN or "
                                  "mutual TLS",
}
_JAAS = re.compile(r'(\w+)\s*=\s*"((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class KafkaSecurity:
    """The security part of a Kafka client's configuration, checked."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = None
    check_hostname: bool = True

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def validate(self, origin: str) -> KafkaSecurity:
        """Itself, or one clear ConfigError naming `origin` (where the settings came from)."""
        protocol = self.protocol.upper()
        if protocol not in PROTOCOLS:
            raise ConfigError(f"{origin}: security.protocol {self.protocol!r} is not one of "
                              f"{', '.join(PROTOCOLS)}")
        out = replace(self, protocol=protocol)
        if out.sasl:
            mechanism = (out.sasl_mechanism or "PLAIN").upper()
            if mechanism in ("OAUTHBEARER", "GSSAPI"):
                raise ConfigError(f"{origin}: SASL mechanism {mechanism} is not supported: use "
                                  "SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN credentials (an API "
                                  "key and secret), or mutual TLS")
            if mechanism not in MECHANISMS:
                raise ConfigError(f"{origin}: SASL mechanism {mechanism!r} is not one of "
                                  f"{', '.join(MECHANISMS)}")
            if not out.sasl_username or out.sasl_password is None:
                raise ConfigError(f"{origin}: {protocol} needs sasl.username and "
                                  "sasl.password (or sasl.jaas.config)")
            out = replace(out, sasl_mechanism=mechanism)
        elif out.sasl_mechanism or out.sasl_username:
            raise ConfigError(f"{origin}: SASL credentials are set but security.protocol is "
                              f"{protocol}: use SASL_SSL (or SASL_PLAINTEXT)")
        files = {"ssl.ca.location": out.ssl_ca_location,
                 "ssl.certificate.location": out.ssl_certificate_location,
                 "ssl.key.location": out.ssl_key_location}
        if not out.tls and any(files.values()):
            raise ConfigError(f"{origin}: TLS files are set but security.protocol is "
                              f"{protocol}: use SSL or SASL_SSL")
        if bool(out.ssl_certificate_location) != bool(out.ssl_key_location):
            raise ConfigError(f"{origin}: mutual TLS needs both ssl.certificate.location and "
                              "ssl.key.location")
        for key, path in files.items():
            if path and not Path(path).is_file():
                raise ConfigError(f"{origin}: {key} {path} is not a readable file")
        return out

    def librdkafka(self) -> dict[str, Any]:
        """The keys of a confluent-kafka client's configuration."""
        conf: dict[str, Any] = {"security.protocol": self.protocol}
        if self.sasl:
            conf.update({"sasl.mechanisms": self.sasl_mechanism,
                         "sasl.username": self.sasl_username,
                         "sasl.password": self.sasl_password})
        if self.tls:
            conf["ssl.endpoint.identification.algorithm"] = \
                "https" if self.check_hostname else "none"
            for key, value in (("ssl.ca.location", self.ssl_ca_location),
                               ("ssl.certificate.location", self.ssl_certificate_location),
                               ("ssl.key.location", self.ssl_key_location),
                               ("ssl.key.password", self.ssl_key_password)):
                if value:
                    conf[key] = value
        return conf

    def ssl_context(self) -> ssl.SSLContext | None:
        """TLS for aiokafka: the private CA (else the system's), the client certificate for
        mutual TLS, hostname verification on unless turned off."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=self.ssl_ca_location)
        context.check_hostname = self.check_hostname
        if self.ssl_certificate_location:
            context.load_cert_chain(self.ssl_certificate_location, self.ssl_key_location,
                                    password=self.ssl_key_password)
        return context

    def faust_credentials(self) -> Any:  # noqa: ANN401 - faust's Credentials, or None
        """faust's `broker_credentials` (it hands them to aiokafka)."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(username=self.sasl_username,
                                         password=self.sasl_password,
                                         ssl_context=self.ssl_context(),
                                         mechanism=self.sasl_mechanism)
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None

    def describe(self) -> str:
        """One line for logs and `kizuna config` (no secret)."""
        parts = [self.protocol]
        if self.sasl:
            parts.append(f"{self.sasl_mechanism} as {self.sasl_username!r}")
        if self.tls:
            parts.append(f"CA {self.ssl_ca_location or '(system)'}")
            if self.ssl_certificate_location:
                parts.append(f"client certificate {self.ssl_certificate_location}")
            if not self.check_hostname:
                parts.append("hostname not verified")
        return ", ".join(parts)


def read_properties(path: Path) -> dict[str, str]:
    """A Java properties file (`key=value` or `key: value`, `#`/`!` comments, `\\`
    continuations), as managed Kafka services hand out for clients."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"KIZUNA_KAFKA_CONFIG_FILE: cannot read {path}: "
                          f"{exc.strerror or exc}") from None
    props: dict[str, str] = {}
    logical = ""
    for raw in text.splitlines():
        line = raw.strip() if not logical else raw.lstrip()
        if not logical and (not line or line[0] in "#!"):
            continue
        if line.endswith("\\") and not line.endswith("\\\\"):
            logical += line[:-1]
            continue
        logical += line
        match = re.match(r"([^=:\s]+)\s*[=:\s]\s*(.*)$", logical)
        if match:
            props[match[1]] = match[2].strip()
        elif logical:
            props[logical] = ""
        logical = ""
    return props


def from_properties(props: Mapping[str, str], origin: str) -> tuple[dict[str, Any], dict]:
    """(KafkaSecurity fields, other settings: `bootstrap`, `registry_url`, `registry_auth`)
    of a properties file's keys; one ConfigError for a key it cannot honour or does not know."""
    fields: dict[str, Any] = {}
    other: dict[str, str] = {}
    for key, value in props.items():
        if key in REFUSED:
            raise ConfigError(f"{origin}: {key} is not supported: {REFUSED[key]}")
        if key in FIELDS:
            fields[FIELDS[key]] = value
        elif key == "bootstrap.servers":
            other["bootstrap"] = value
        elif key == "sasl.jaas.config":
            fields.update(_jaas(value, origin))
        elif key == "ssl.endpoint.identification.algorithm":
            if value.lower() not in ("https", "", "none"):
                raise ConfigError(f"{origin}: {key}={value!r}: expected https or none")
            fields["check_hostname"] = value.lower() == "https"
        elif key == "schema.registry.url":
            other["registry_url"] = value
        elif key == "basic.auth.user.info":
            other["registry_auth"] = value
        elif key not in ACCEPTED:
            known = sorted({*FIELDS, *ACCEPTED})
            raise ConfigError(f"{origin}: unknown key {key!r}; Kizuna reads {', '.join(known)}")
    return fields, other


def _jaas(value: str, origin: str) -> dict[str, str]:
    """Username and password of a Java `sasl.jaas.config` line (PlainLoginModule or
    ScramLoginModule)."""
    if "OAuthBearerLoginModule" in value:
        raise ConfigError(f"{origin}: sasl.jaas.config: OAUTHBEARER is not supported: use "
                          "SCRAM or PLAIN credentials (an API key and secret)")
    if "Krb5LoginModule" in value:
        raise ConfigError(f"{origin}: sasl.jaas.config: GSSAPI (Kerberos) is not supported: "
                          "use SCRAM, PLAIN or mutual TLS")
    if "PlainLoginModule" not in value and "ScramLoginModule" not in value:
        raise ConfigError(f"{origin}: sasl.jaas.config: expected PlainLoginModule or "
                          "ScramLoginModule with username and password")
    options = {k: v.replace('\\"', '"').replace("\\\\", "\\") for k, v in _JAAS.findall(value)}
    if "username" not in options or "password" not in options:
        raise ConfigError(f"{origin}: sasl.jaas.config: no username=\"...\" password=\"...\"")
    return {"sasl_username": options["username"], "sasl_password": options["password"]}
