"""The local schema registry: Apicurio Registry from Maven Central, Confluent-compatible API.

`io.apicurio:apicurio-registry-app:<version>:tar.gz:all` holds one runner jar (Java 17) and its
libraries. Its storage is H2: in a file under KIZUNA_HOME, so that ids survive `kizuna down`
and `up` (the values on the topics carry them). Nothing here is used in production, where the
stages talk to the registry of `KIZUNA_SCHEMA_REGISTRY_URL`.
"""

from __future__ import annotations

import tarfile
import urllib.request
from pathlib import Path

from services.common.settings import Settings
from services.localstack.kafka import java_command, maven_fetch

VERSION = "2.6.13.Final"  # 3.x needs Java 21
ARTIFACT = f"io.apicurio:apicurio-registry-app:{VERSION}:tar.gz:all"
CCOMPAT_PATH = "/apis/ccompat/v7"


def install_dir(settings: Settings) -> Path:
    return settings.cache_dir / f"apicurio-registry-{VERSION}"


def ensure_installed(settings: Settings) -> Path:
    """Fetch and unpack the registry once with Maven; later calls reuse the cache."""
    return maven_fetch(
        install_dir(settings), ["dependency:copy", f"-Dartifact={ARTIFACT}"],
        f"Apicurio Registry {VERSION}",
        "the schema registry once: install it (`apt-get install maven`), or set "
        "KIZUNA_SCHEMA_REGISTRY_URL to a registry (`none`: no registry)", _unpack)


def _unpack(staging: Path) -> None:
    archive = next(staging.glob("*.tar.gz"))
    with tarfile.open(archive) as tar:
        tar.extractall(staging, filter="data")
    archive.unlink()


def url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.schema_registry_port}{CCOMPAT_PATH}"


def prepare(settings: Settings) -> list[str]:
    """The registry's command line (installing it on first use)."""
    java = java_command()
    home = ensure_installed(settings)
    runner = next(home.glob("*-runner.jar"))
    data = settings.home / "schema-registry"
    data.mkdir(parents=True, exist_ok=True)
    return [java, f"-Xmx{settings.schema_registry_heap}", "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
            f"-Dquarkus.http.port={settings.schema_registry_port}",
            "-Dquarkus.http.host=127.0.0.1",
            f"-DREGISTRY_DATASOURCE_URL=jdbc:h2:file:{data / 'registry'}",
            "-Dquarkus.log.level=WARN", "-Dquarkus.banner.enabled=false",
            "-jar", str(runner)]


def ready(settings: Settings) -> bool:
    try:
        with urllib.request.urlopen(f"{url(settings)}/subjects", timeout=2) as resp:
            return resp.status == 200
    except (OSError, ValueError):
        return False
