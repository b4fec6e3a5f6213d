"""A local Kafka cluster of several KRaft nodes, plaintext or secured (TLS + SASL/SCRAM + ACLs), from the jars.

`LOCAL_KAFKA_BROKERS=3` gives three combined broker+controller nodes on 127.0.0.1, with the internal topics
replicated three times and `min.insync.replicas=2`; `LOCAL_KAFKA_SECURITY=SASL_SSL` makes every listener TLS
with a CA of the cluster's own (kafka_local/tls.py), clients authenticate with SCRAM-SHA-512, and an
authorizer refuses whatever no ACL allows. The users are made when the storage is formatted: `admin` (the
super user the brokers and the launcher use) and one per service (`api`, `inference`, `sink`), with passwords
generated at first start and kept in the data folder (`credentials.json`, mode 600). The ACLs each service
needs are pipeline knowledge, granted by `pipeline_core.acls` for the topics and groups of a system.

Listeners of each node, all on 127.0.0.1:
- `CLIENT` (clients and the brokers among themselves): PLAINTEXT, or SASL_SSL with SCRAM-SHA-512;
- `CONTROLLER` (the KRaft quorum): PLAINTEXT, or SASL_SSL with PLAIN for `admin` only (KRaft controllers cannot
  use SCRAM: its credentials live in the metadata the quorum is there to agree on).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from kafka_local.broker import DEFAULT_CACHE, LocalBroker, _server_properties, free_port, new_cluster_id
from kafka_local.tls import TlsFiles, ensure_tls, write_private
from pipeline_core.errors import BrokerUnavailableError

logger = logging.getLogger(__name__)

Security = Literal["PLAINTEXT", "SASL_SSL"]
SCRAM = "SCRAM-SHA-512"
ADMIN = "admin"
SERVICE_USERS = ("api", "inference", "sink")


@dataclass(frozen=True, slots=True)
class Credentials:
    """SCRAM users and their passwords."""

    passwords: dict[str, str]

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        """Read `path`, or make new random passwords and keep them there (readable by this user only)."""
        if path.exists():
            data = json.loads(path.read_text())
            return cls(dict(data["passwords"]))
        made = cls({user: secrets.token_urlsafe(18) for user in (ADMIN, *SERVICE_USERS)})
        path.parent.mkdir(parents=True, exist_ok=True)
        write_private(path, json.dumps({"passwords": made.passwords}).encode())
        return made


@dataclass
class LocalCluster:
    """`brokers` KRaft nodes on 127.0.0.1; `start()` returns once every node serves."""

    data_dir: Path
    brokers: int = 3
    security: Security = "PLAINTEXT"
    heap: str = "384m"
    cache_dir: Path = DEFAULT_CACHE
    ports: list[int] = field(default_factory=list)
    nodes: list[LocalBroker] = field(default_factory=list, init=False)
    credentials: Credentials | None = field(default=None, init=False)
    tls: TlsFiles | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if self.brokers < 1:
            raise ValueError("a cluster needs at least one broker")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        layout = self.data_dir / "layout.json"
        if layout.exists():  # a restart on the same data keeps its ports and its cluster id
            saved = json.loads(layout.read_text())
            ports, controller_ports, cluster_id = (
                saved["ports"],
                saved["controller_ports"],
                saved["cluster_id"],
            )
        else:
            ports = self.ports or [free_port() for _ in range(self.brokers)]
            controller_ports = [free_port() for _ in range(self.brokers)]
            cluster_id = new_cluster_id()
            layout.write_text(
                json.dumps({"ports": ports, "controller_ports": controller_ports, "cluster_id": cluster_id})
            )
        if self.security == "SASL_SSL":
            self.credentials = Credentials.load_or_create(self.data_dir / "credentials.json")
            self.tls = ensure_tls(self.data_dir / "tls")
        voters = ",".join(f"{n + 1}@127.0.0.1:{controller_ports[n]}" for n in range(self.brokers))
        for n in range(self.brokers):
            node_dir = self.data_dir / f"node-{n + 1}"
            properties = _server_properties(node_dir, ports[n], controller_ports[n])
            # A static quorum (every node knows the voters) rather than the single node's bootstrap.
            properties.pop("controller.quorum.bootstrap.servers")
            properties |= self._node_properties(n + 1, ports[n], controller_ports[n], voters)
            self.nodes.append(
                LocalBroker(
                    node_dir,
                    ports[n],
                    controller_ports[n],
                    heap=self.heap,
                    cache_dir=self.cache_dir,
                    properties=properties,
                    cluster_id=cluster_id,
                    format_args=self._format_args(),
                    admin_config=self.client_config(ADMIN),
                )
            )

    @property
    def bootstrap_servers(self) -> str:
        """Every node's client listener."""
        return ",".join(node.bootstrap_servers for node in self.nodes)

    def client_config(self, user: str) -> dict[str, Any]:
        """kafka-python settings that connect as `user` (nothing for a plaintext cluster)."""
        if self.security == "PLAINTEXT":
            return {}
        assert self.credentials is not None and self.tls is not None
        return {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": SCRAM,
            "sasl_plain_username": user,
            "sasl_plain_password": self.credentials.passwords[user],
            "ssl_cafile": str(self.tls.ca),
        }

    def client_env(self, user: str) -> dict[str, str]:
        """The project's settings (environment variables) that connect a service as `user`."""
        env = {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "TOPIC_REPLICATION_FACTOR": str(min(3, self.brokers)),
            "TOPIC_MIN_INSYNC_REPLICAS": str(self._min_insync()),
        }
        if self.security == "SASL_SSL":
            assert self.credentials is not None and self.tls is not None
            env |= {
                "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
                "KAFKA_SASL_MECHANISM": SCRAM,
                "KAFKA_SASL_USERNAME": user,
                "KAFKA_SASL_PASSWORD": self.credentials.passwords[user],
                "KAFKA_SSL_CAFILE": str(self.tls.ca),
            }
        return env

    def _min_insync(self) -> int:
        return 2 if self.brokers >= 3 else 1

    def _node_properties(self, node_id: int, port: int, controller_port: int, voters: str) -> dict[str, str]:
        replicas = str(min(3, self.brokers))
        props = {
            "node.id": str(node_id),
            "controller.quorum.voters": voters,
            "listeners": f"CLIENT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"CLIENT://127.0.0.1:{port}",
            "inter.broker.listener.name": "CLIENT",
            "controller.listener.names": "CONTROLLER",
            "default.replication.factor": replicas,
            "min.insync.replicas": str(self._min_insync()),
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": str(self._min_insync()),
            "share.coordinator.state.topic.replication.factor": replicas,
            "share.coordinator.state.topic.min.isr": str(self._min_insync()),
            # A killed node's partitions move to the others within seconds, not the default 18 s.
            "broker.session.timeout.ms": "6000",
            "broker.heartbeat.interval.ms": "1000",
        }
        if self.security == "PLAINTEXT":
            return props | {"listener.security.protocol.map": "CLIENT:PLAINTEXT,CONTROLLER:PLAINTEXT"}
        assert self.credentials is not None and self.tls is not None
        admin_password = self.credentials.passwords[ADMIN]
        scram_login = (
            "org.apache.kafka.common.security.scram.ScramLoginModule required "
            f'username="{ADMIN}" password="{admin_password}";'
        )
        plain_login = (
            "org.apache.kafka.common.security.plain.PlainLoginModule required "
            f'username="{ADMIN}" password="{admin_password}" user_{ADMIN}="{admin_password}";'
        )
        return props | {
            "listener.security.protocol.map": "CLIENT:SASL_SSL,CONTROLLER:SASL_SSL",
            "sasl.enabled.mechanisms": SCRAM,
            "sasl.mechanism.inter.broker.protocol": SCRAM,
            "listener.name.client.sasl.enabled.mechanisms": SCRAM,
            "listener.name.client.scram-sha-512.sasl.jaas.config": scram_login,
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": plain_login,
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.tls.broker),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.tls.ca),
            "ssl.client.auth": "none",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _format_args(self) -> tuple[str, ...]:
        if self.credentials is None:
            return ()
        return tuple(
            argument
            for user, password in self.credentials.passwords.items()
            for argument in ("--add-scram", f"{SCRAM}=[name={user},password={password}]")
        )

    def start(self, timeout_s: float = 120.0) -> LocalCluster:
        """Start every node (formatting new stores), and return once all of them serve."""
        for node in self.nodes:
            node.start(wait=False)
        deadline = time.monotonic() + timeout_s
        try:
            for node in self.nodes:
                node.wait_until_serving(max(1.0, deadline - time.monotonic()))
        except BrokerUnavailableError:
            self.stop()
            raise
        logger.info(
            "Kafka cluster of %d nodes (%s) serving at %s",
            self.brokers,
            self.security,
            self.bootstrap_servers,
        )
        return self

    def stop(self) -> None:
        """Stop every node (controlled shutdowns, all asked at once)."""
        for node in self.nodes:
            node.signal_stop()
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()
