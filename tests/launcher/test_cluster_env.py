"""What `make run` hands each service on a local cluster: the launcher's own settings as `admin`, and each
service its own user, with the CA and the replication settings (no broker started: the cluster's files only)."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from kafka_local.cluster import LocalCluster
from launcher.__main__ import cluster_env
from pipeline_core.settings import PipelineSettings


def test_a_secured_cluster_gives_each_service_its_own_user_and_the_ca(tmp_path: Path) -> None:
    cluster = LocalCluster(tmp_path / "kafka", brokers=3, security="SASL_SSL")
    launcher, services = cluster_env(cluster)
    assert launcher["KAFKA_SASL_USERNAME"] == "admin"
    assert set(services) == {"api", "inference", "sink"}
    passwords = {env["KAFKA_SASL_PASSWORD"] for env in services.values()}
    assert len(passwords | {launcher["KAFKA_SASL_PASSWORD"]}) == 4, "every user has a password of its own"
    for user, env in services.items():
        settings = PipelineSettings.model_validate({k.lower(): v for k, v in env.items()})
        assert settings.kafka_sasl_username == user
        assert settings.kafka_security_protocol == "SASL_SSL"
        assert settings.topic_replication_factor == 3 and settings.topic_min_insync_replicas == 2
        assert settings.kafka_ssl_cafile and Path(settings.kafka_ssl_cafile).read_text().startswith(
            "-----BEGIN"
        )
        assert len(settings.kafka_bootstrap_servers.split(",")) == 3
    for secret in (tmp_path / "kafka" / "credentials.json", tmp_path / "kafka" / "tls" / "broker.pem"):
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600, secret
    # A second start on the same folder keeps the ports, the cluster id and the passwords.
    again = LocalCluster(tmp_path / "kafka", brokers=3, security="SASL_SSL")
    assert again.bootstrap_servers == cluster.bootstrap_servers
    assert cluster_env(again) == (launcher, services)
    assert json.loads((tmp_path / "kafka" / "layout.json").read_text())["cluster_id"]


def test_a_plaintext_cluster_gives_replication_settings_and_no_credentials(tmp_path: Path) -> None:
    launcher, services = cluster_env(LocalCluster(tmp_path / "kafka", brokers=3))
    assert services == {}
    assert launcher["TOPIC_REPLICATION_FACTOR"] == "3"
    assert "KAFKA_SASL_USERNAME" not in launcher
    assert cluster_env(None) == ({}, {})
