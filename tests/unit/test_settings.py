from pathlib import Path

import pytest

from services.common.errors import ConfigError
from services.common.settings import (
    ALL_SETTINGS,
    Settings,
    WarehouseSettings,
    describe,
    load,
    mask_url,
)


def test_defaults_are_derived_from_earlier_settings(tmp_path):
    s = load(Settings, {"KIZUNA_HOME": str(tmp_path), "KIZUNA_KAFKA_PORT": "19999"})
    assert s.home == tmp_path
    assert s.kafka_bootstrap == "127.0.0.1:19999"
    assert s.clickhouse_url == f"chdb://{tmp_path}/clickhouse"
    assert s.embedded_clickhouse and s.chdb_path == tmp_path / "clickhouse"
    assert s.local_kafka
    assert s.topic_prefix == "kizuna."
    assert s.store_database == "kizuna_store"


def test_home_defaults_to_dot_kizuna_resolved():
    assert load(Settings, {}).home == Path("./.kizuna").resolve()


def test_explicit_bootstrap_means_bring_your_own_cluster():
    s = load(Settings, {"KIZUNA_KAFKA_BOOTSTRAP": "kafka-1:9092,kafka-2:9092"})
    assert not s.local_kafka
    assert s.kafka_bootstrap == "kafka-1:9092,kafka-2:9092"


def test_nested_service_settings_share_the_common_ones(tmp_path):
    w = load(WarehouseSettings, {"KIZUNA_HOME": str(tmp_path), "KIZUNA_QUERY_TIMEOUT": "5"})
    assert w.common.home == tmp_path and w.query_timeout == 5.0
    assert "KIZUNA_QUERY_TIMEOUT" in w.explicit


@pytest.mark.parametrize("env, message", [
    ({"KIZUNA_KAFKA_PORT": "abc"}, "KIZUNA_KAFKA_PORT: expected int, got 'abc'"),
    ({"KIZUNA_KAFKA_PORT": "70000"}, "KIZUNA_KAFKA_PORT: 70000 is not a TCP port"),
    ({"KIZUNA_CLICKHOUSE_URL": "mysql://db"}, "unsupported scheme 'mysql'"),
    ({"KIZUNA_CLICKHOUSE_URL": "/var/lib/ch"}, "unsupported scheme '(none)'"),
    ({"KIZUNA_PARTITIONS": "0"}, "KIZUNA_PARTITIONS"),
    ({"KIZUNA_LOG_FORMAT": "xml"}, "KIZUNA_LOG_FORMAT"),
    ({"KIZUNA_KAFKA_CONTROLLER_PORT": "9092"}, "overlap"),
    ({"KIZUNA_KAFKA_BROKERS": "3", "KIZUNA_KAFKA_CONTROLLER_PORT": "9094"}, "overlap for 3 node"),
    ({"KIZUNA_KAFKA_VERSION": "latest"}, "KIZUNA_KAFKA_VERSION"),
    ({"KIZUNA_STALL_SECONDS": "0"}, "KIZUNA_STALL_SECONDS"),
])
def test_bad_values_name_the_variable(env, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load(Settings, env)


def test_passwords_in_urls_are_masked():
    assert mask_url("http://bob:s3cret@ch:8123/db") == "http://bob:****@ch:8123/db"
    assert mask_url("http://ch:8123") == "http://ch:8123"
    shown = dict((env, value) for env, value, _, _ in describe(
        load(Settings, {"KIZUNA_CLICKHOUSE_URL": "https://u:pw@ch.example:8443"})))
    assert shown["KIZUNA_CLICKHOUSE_URL"] == "https://u:****@ch.example:8443"
    assert "pw" not in str(shown)


def test_every_setting_is_documented_on_its_page():
    from services.common.settings import markdown

    page = (Path(__file__).resolve().parents[2] / "docs" / "configuration.md").read_text()
    assert page == markdown(), "regenerate: kizuna config --markdown > docs/configuration.md"
    for cls in ALL_SETTINGS:
        for env, _, _, doc in describe(load(cls, {})):
            assert doc and f"| `{env}` |" in page, env


def test_a_worker_id_makes_each_stage_a_static_group_member() -> None:
    from services.localstack.supervisor import child_environment

    assert load(Settings, {}).group_instance_id("sessionizer") is None  # dynamic by default
    named = load(Settings, {"KIZUNA_WORKER_ID": "pod-3", "KIZUNA_TOPIC_PREFIX": "acme."})
    assert named.group_instance_id("sessionizer") == "acme.sessionizer-pod-3"
    # `kizuna up` runs its stages as static members named `local`, unless told otherwise.
    assert child_environment(load(Settings, {}))["KIZUNA_WORKER_ID"] == "local"


def test_a_renamed_variable_is_still_read_under_its_former_name() -> None:
    from services.common.settings import EngagementScorerSettings

    old = load(EngagementScorerSettings, {"KIZUNA_SCORER_PORT": "9191",
                                          "KIZUNA_SCORER_BATCH": "10"})
    assert (old.port, old.batch_size) == (9191, 10)
    assert "KIZUNA_ENGAGEMENT_SCORER_PORT" in old.explicit
    new = load(EngagementScorerSettings, {"KIZUNA_SCORER_PORT": "9191",
                                          "KIZUNA_ENGAGEMENT_SCORER_PORT": "9292"})
    assert new.port == 9292  # the current name wins


def test_a_local_secret_is_made_once_owner_only_and_kept(tmp_path) -> None:
    from services.common.settings import generate_local_secret

    path = tmp_path / "home" / "write_keys"
    generate_local_secret(path, "first\n")
    generate_local_secret(path, "second\n")
    assert path.read_text() == "first\n"
    assert path.stat().st_mode & 0o777 == 0o600
