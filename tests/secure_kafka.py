"""A secured Kafka broker, configured the way a user configures their own (not by Kizuna): a
private CA and certificates made with `openssl`, SCRAM users added at format time, and a
`server.properties` written by hand from Kafka's documentation. For the tests that run
Kizuna against it from a client properties file, as a managed cluster hands one out.

One KRaft node, from the same Maven Central jars as the local stack, with these client
listeners on 127.0.0.1 (the inter-broker and controller ones are plaintext loopback):

- `SASL_SSL`: SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN over TLS (bound to every loopback
  address, advertised as 127.0.0.1, so a client that bootstraps at 127.0.0.2 meets a
  certificate that is not for that address);
- `MTLS`: TLS with `ssl.client.auth=required` (mutual TLS);
- `BROKER`: plaintext, for what the test itself needs outside Kizuna.
"""

from __future__ import annotations

import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from services.common.settings import Settings
from services.localstack import kafka

SCRAM_USER, SCRAM_PASSWORD = "kizuna", "scram-secret-1"
PLAIN_USER, PLAIN_PASSWORD = "kizuna-plain", "plain-secret-1"
KEYSTORE_PASSWORD = "keystore-secret"
CLIENT_KEY_PASSWORD = "client-key-secret"


@dataclass(frozen=True)
class Pki:
    ca: Path
    other_ca: Path  # a CA the broker's certificate is not signed by
    client_certificate: Path
    client_key: Path  # encrypted with CLIENT_KEY_PASSWORD
    keystore: Path  # the broker's PKCS12 keystore


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(where: Path) -> Pki:
    """A CA, the broker's certificate for localhost and 127.0.0.1 (in a PKCS12 keystore), a
    client certificate with an encrypted key, and an unrelated CA."""
    where.mkdir(parents=True, exist_ok=True)
    for name, subject in (("ca", "Kizuna Test CA"), ("other-ca", "Somebody Else's CA")):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key",
                "-out", f"{name}.pem", "-days", "30", "-subj", f"/CN={subject}", cwd=where)
    (where / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out",
            "server.csr", "-subj", "/CN=localhost", cwd=where)
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "30", "-extfile", "san.ext",
            cwd=where)
    openssl("pkcs12", "-export", "-in", "server.pem", "-inkey", "server.key", "-certfile",
            "ca.pem", "-out", "server.p12", "-name", "kafka", "-passout",
            f"pass:{KEYSTORE_PASSWORD}", cwd=where)
    openssl("req", "-newkey", "rsa:2048", "-keyout", "client.key", "-passout",
            f"pass:{CLIENT_KEY_PASSWORD}", "-out", "client.csr", "-subj", "/CN=kizuna-client",
            cwd=where)
    openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "client.pem", "-days", "30", cwd=where)
    return Pki(where / "ca.pem", where / "other-ca.pem", where / "client.pem",
               where / "client.key", where / "server.p12")


@dataclass
class SecureBroker:
    sasl_ssl: int
    mtls: int
    plaintext: int
    pki: Pki
    process: subprocess.Popen
    log: Path

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def server_properties(where: Path, pki: Pki, ports: dict[str, int]) -> str:
    jaas = "org.apache.kafka.common.security"
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{ports['controller']}",
        "listeners": f"SASL_SSL://0.0.0.0:{ports['sasl_ssl']},MTLS://127.0.0.1:{ports['mtls']},"
                     f"BROKER://127.0.0.1:{ports['plaintext']},"
                     f"CONTROLLER://127.0.0.1:{ports['controller']}",
        "advertised.listeners": f"SASL_SSL://127.0.0.1:{ports['sasl_ssl']},"
                                f"MTLS://127.0.0.1:{ports['mtls']},"
                                f"BROKER://127.0.0.1:{ports['plaintext']}",
        "listener.security.protocol.map": "SASL_SSL:SASL_SSL,MTLS:SSL,BROKER:PLAINTEXT,"
                                          "CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "BROKER",
        "controller.listener.names": "CONTROLLER",
        "sasl.enabled.mechanisms": "SCRAM-SHA-512,SCRAM-SHA-256,PLAIN",
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config":
            f"{jaas}.scram.ScramLoginModule required;",
        "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config":
            f"{jaas}.scram.ScramLoginModule required;",
        "listener.name.sasl_ssl.plain.sasl.jaas.config":
            f'{jaas}.plain.PlainLoginModule required user_{PLAIN_USER}="{PLAIN_PASSWORD}";',
        "ssl.keystore.type": "PKCS12",
        "ssl.keystore.location": str(pki.keystore),
        "ssl.keystore.password": KEYSTORE_PASSWORD,
        "ssl.key.password": KEYSTORE_PASSWORD,
        "listener.name.mtls.ssl.client.auth": "required",
        "listener.name.mtls.ssl.truststore.type": "PEM",
        "listener.name.mtls.ssl.truststore.location": str(pki.ca),
        "log.dirs": str(where / "data"),
        "num.partitions": "4",
        "auto.create.topics.enable": "false",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    return "".join(f"{k}={v}\n" for k, v in props.items())


def start(where: Path, settings: Settings, ports: dict[str, int]) -> SecureBroker:
    """Start the secured broker (ports: sasl_ssl, mtls, plaintext, controller) and wait for
    its plaintext listener."""
    pki = make_pki(where / "pki")
    java = kafka.java_command(settings.kafka_version)
    libs = kafka.ensure_jars(settings)
    logging = kafka.LOGGING[settings.kafka_version[0]]
    props = where / "server.properties"
    props.write_text(server_properties(where, pki, ports))
    subprocess.run(
        [java, "-cp", f"{libs}/*", logging, "kafka.tools.StorageTool", "format", "-t",
         kafka.new_cluster_id(), "-c", str(props),
         "--add-scram", f"SCRAM-SHA-512=[name={SCRAM_USER},password={SCRAM_PASSWORD}]",
         "--add-scram", f"SCRAM-SHA-256=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"],
        check=True, capture_output=True)
    log = where / "broker.log"
    process = subprocess.Popen(
        [java, "-Xmx256m", "-Xms64m", logging, "-cp", f"{libs}/*", "kafka.Kafka", str(props)],
        stdout=log.open("w"), stderr=subprocess.STDOUT)
    broker = SecureBroker(ports["sasl_ssl"], ports["mtls"], ports["plaintext"], pki, process,
                          log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the secured broker exited: {log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", ports["plaintext"]), timeout=1):
                time.sleep(2)  # listening; give the controller a moment
                return broker
        except OSError:
            time.sleep(0.5)
    broker.stop()
    raise RuntimeError(f"the secured broker did not start: {log.read_text()[-2000:]}")


def client_properties(path: Path, broker: SecureBroker, mode: str, **overrides: str) -> Path:
    """A client properties file as a managed service would hand it out: `scram` (SASL_SSL,
    SCRAM-SHA-512, librdkafka keys), `plain` (SASL_SSL, PLAIN in a Java `sasl.jaas.config`
    line), `mtls` (SSL with a client certificate and an encrypted key)."""
    if mode == "scram":
        props = {"bootstrap.servers": f"localhost:{broker.sasl_ssl}",
                 "security.protocol": "SASL_SSL", "sasl.mechanisms": "SCRAM-SHA-512",
                 "sasl.username": SCRAM_USER, "sasl.password": SCRAM_PASSWORD,
                 "ssl.ca.location": str(broker.pki.ca)}
    elif mode == "plain":
        props = {"bootstrap.servers": f"localhost:{broker.sasl_ssl}",
                 "security.protocol": "SASL_SSL", "sasl.mechanism": "PLAIN",
                 "sasl.jaas.config": "org.apache.kafka.common.security.plain.PlainLoginModule "
                                     f'required username="{PLAIN_USER}" '
                                     f'password="{PLAIN_PASSWORD}";',
                 "ssl.ca.location": str(broker.pki.ca), "client.dns.lookup": "use_all_dns_ips",
                 "session.timeout.ms": "45000", "acks": "all"}
    else:
        props = {"bootstrap.servers": f"localhost:{broker.mtls}", "security.protocol": "SSL",
                 "ssl.ca.location": str(broker.pki.ca),
                 "ssl.certificate.location": str(broker.pki.client_certificate),
                 "ssl.key.location": str(broker.pki.client_key),
                 "ssl.key.password": CLIENT_KEY_PASSWORD}
    props.update(overrides)
    path.write_text("# as handed out by the cluster's operator\n"
                    + "".join(f"{k}={v}\n" for k, v in props.items()))
    return path
