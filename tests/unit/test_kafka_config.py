"""Kafka client settings as managed services hand them out (services/common/kafka_config.py):
a client properties file, KIZUNA_KAFKA_* variables over it, *_FILE secrets, and what each
client library gets. The broker side is tests/integration/test_secure_kafka.py."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.common.kafka import client_config
from services.common.kafka_config import read_properties
from services.common.settings import Settings, load

CONFLUENT_CLOUD = """\
# Required connection configs for Kafka producer, consumer, and admin
bootstrap.servers=pkc-abc12.eu-west-1.aws.confluent.cloud:9092
security.protocol=SASL_SSL
sasl.mechanisms=PLAIN
sasl.username=ABCDEFGHIJKLMNOP
sasl.password=s3cr3t/with=equals\\
continued

# Best practice for higher availability in librdkafka clients prior to 1.7
session.timeout.ms=45000
client.dns.lookup=use_all_dns_ips
acks=all

# Required connection configs for Confluent Cloud Schema Registry
schema.registry.url=https://psrc-xyz.eu-central-1.aws.confluent.cloud
basic.auth.credentials.source=USER_INFO
basic.auth.user.info=SRKEY:SRSECRET
"""

MSK_JAVA = """\
security.protocol = SASL_SSL
sasl.mechanism : SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\
    username="alice" password="pa\\"ss";
"""


def settings_of(tmp: Path, text: str, **env: str) -> Settings:
    path = tmp / "client.properties"
    path.write_text(text)
    return load(Settings, {"KIZUNA_KAFKA_CONFIG_FILE": str(path), **env})


def test_a_confluent_cloud_file_sets_cluster_security_and_registry(tmp_path) -> None:
    s = settings_of(tmp_path, CONFLUENT_CLOUD)
    assert s.kafka_bootstrap == "pkc-abc12.eu-west-1.aws.confluent.cloud:9092"
    assert not s.local_kafka and not s.local_schema_registry  # kizuna up starts neither
    assert s.schema_registry_url == "https://psrc-xyz.eu-central-1.aws.confluent.cloud"
    assert s.schema_registry_basic_auth == "SRKEY:SRSECRET"
    conf = client_config(s)
    assert conf["security.protocol"] == "SASL_SSL" and conf["sasl.mechanisms"] == "PLAIN"
    assert conf["sasl.password"] == "s3cr3t/with=equalscontinued"
    assert conf["ssl.endpoint.identification.algorithm"] == "https"  # hostnames verified
    assert "ssl.ca.location" not in conf  # the system's CAs


def test_a_java_jaas_line_gives_the_scram_credentials(tmp_path) -> None:
    s = settings_of(tmp_path, MSK_JAVA, KIZUNA_KAFKA_BOOTSTRAP="b-1.msk:9096")
    assert (s.kafka.sasl_mechanism, s.kafka.sasl_username, s.kafka.sasl_password) == (
        "SCRAM-SHA-512", "alice", 'pa"ss')
    credentials = s.kafka.faust_credentials()  # aiokafka, through faust
    assert credentials.mechanism.value == "SCRAM-SHA-512" and credentials.username == "alice"
    assert isinstance(credentials.ssl_context, ssl.SSLContext)
    assert credentials.ssl_context.check_hostname


def test_a_variable_overrides_the_file_and_a_secret_comes_from_its_file(tmp_path) -> None:
    secret = tmp_path / "password"
    secret.write_text("from-a-mounted-secret\n")
    s = settings_of(tmp_path, MSK_JAVA, KIZUNA_KAFKA_BOOTSTRAP="b-1.msk:9096",
                    KIZUNA_KAFKA_SASL_USERNAME="bob", KIZUNA_KAFKA_SASL_PASSWORD_FILE=str(secret))
    assert (s.kafka.sasl_username, s.kafka.sasl_password) == ("bob", "from-a-mounted-secret")
    assert s.kafka_bootstrap == "b-1.msk:9096"


def test_mutual_tls_files_reach_both_libraries(tmp_path) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("-")
    s = load(Settings, {"KIZUNA_KAFKA_BOOTSTRAP": "kafka:9093",
                        "KIZUNA_KAFKA_SECURITY_PROTOCOL": "ssl",
                        "KIZUNA_KAFKA_SSL_CA_LOCATION": str(tmp_path / "ca.pem"),
                        "KIZUNA_KAFKA_SSL_CERTIFICATE_LOCATION": str(tmp_path / "client.pem"),
                        "KIZUNA_KAFKA_SSL_KEY_LOCATION": str(tmp_path / "client.key"),
                        "KIZUNA_KAFKA_SSL_KEY_PASSWORD": "kp"})
    conf = client_config(s)
    assert conf["security.protocol"] == "SSL"
    assert conf["ssl.certificate.location"].endswith("client.pem")
    assert conf["ssl.key.password"] == "kp" and "sasl.username" not in conf


@pytest.mark.parametrize("text, expected", [
    ("ssl.truststore.location=/etc/kafka/truststore.jks\n", "keytool -exportcert"),
    ("ssl.keystore.location=/etc/kafka/keystore.p12\n", "ssl.certificate.location"),
    ("security.protocol=SASL_SSL\nsasl.mechanism=OAUTHBEARER\n", "OAUTHBEARER is not supported"),
    ("security.protocol=SASL_SSL\nsasl.mechanism=GSSAPI\n", "GSSAPI is not supported"),
    ("sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule "
     "required;\n", "OAUTHBEARER is not supported"),
    ("linger.ms=5\n", "unknown key 'linger.ms'"),
    ("security.protocol=SASL_SSL\n", "needs sasl.username and sasl.password"),
    ("security.protocol=SSL\nsasl.username=x\nsasl.password=y\n", "use SASL_SSL"),
    ("security.protocol=PLAINTEXT\nssl.ca.location=/x.pem\n", "use SSL or SASL_SSL"),
    ("security.protocol=SSL\nssl.ca.location=/no/such/ca.pem\n", "is not a readable file"),
    ("security.protocol=SSL\nssl.key.location=/k.pem\n", "needs both"),
    ("security.protocol=TLS\n", "is not one of PLAINTEXT"),
])
def test_what_kizuna_cannot_honour_is_refused_in_one_line(tmp_path, text, expected) -> None:
    with pytest.raises(ConfigError) as refused:
        settings_of(tmp_path, text)
    assert expected in str(refused.value) and "\n" not in str(refused.value)
    assert "KIZUNA_KAFKA_CONFIG_FILE" in str(refused.value)


def test_secrets_are_masked_in_kizuna_config(tmp_path) -> None:
    from services.common.settings import describe

    s = settings_of(tmp_path, MSK_JAVA, KIZUNA_KAFKA_BOOTSTRAP="b-1.msk:9096",
                    KIZUNA_KAFKA_SASL_PASSWORD="hunter2")
    shown = {env: value for env, value, _, _ in describe(s)}
    assert shown["KIZUNA_KAFKA_SASL_PASSWORD"] == "****"
    assert "hunter2" not in repr(s.kafka.describe())


def test_properties_files_read_as_java_does(tmp_path) -> None:
    path = tmp_path / "p.properties"
    path.write_text("! comment\n  a = 1\nb:2\nc 3\nd=x\\\n   y\n#e=5\nempty=\n")
    assert read_properties(path) == {"a": "1", "b": "2", "c": "3", "d": "xy", "empty": ""}
