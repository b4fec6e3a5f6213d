"""A real single-node Apache Kafka broker (KRaft), launched from Apache's own jars on Maven Central.

Our machines have Java and Maven but no Docker engine and no way to download Apache's tarballs, so the broker's
classpath is resolved by Maven into a cache outside the work tree (once), a KRaft store is formatted, and
`kafka.Kafka` is started as a child process. See docs/operations.md for why and how.
"""

from __future__ import annotations

import base64
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import IO, Any

from kafka_local.container import format_command
from pipeline_core.errors import BrokerUnavailableError, DependencyMissingError

logger = logging.getLogger(__name__)

KAFKA_VERSION = "4.3.1"
DEFAULT_CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "kafka-image-classifier"


def _require(program: str, what: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise DependencyMissingError(
            f"`{program}` was not found on PATH: install {what} (e.g. `apt-get install {what}`) to run the "
            "local Kafka broker, or set KAFKA_BOOTSTRAP_SERVERS to use an existing cluster."
        )
    return path


def ensure_jars(cache_dir: Path = DEFAULT_CACHE) -> Path:
    """The folder of the broker's jars, resolved by Maven on first use and reused afterwards."""
    lib = cache_dir / f"kafka-{KAFKA_VERSION}" / "lib"
    marker = lib / ".complete"
    if marker.exists():
        return lib
    _require("java", "openjdk-17-jre-headless")
    mvn = _require("mvn", "maven")
    pom = resources.files("kafka_local") / "pom.xml"
    tmp = lib.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    logger.info("resolving Apache Kafka %s jars with Maven into %s (once)", KAFKA_VERSION, lib)
    with resources.as_file(pom) as pom_path:
        result = subprocess.run(
            [
                mvn,
                "-B",
                "-q",
                "-f",
                str(pom_path),
                "dependency:copy-dependencies",
                "-DincludeScope=runtime",
                f"-Dkafka.version={KAFKA_VERSION}",
                f"-DoutputDirectory={tmp}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
    if result.returncode != 0:
        raise DependencyMissingError(
            f"Maven could not resolve the Kafka {KAFKA_VERSION} jars (exit {result.returncode}):\n"
            f"{result.stdout[-2000:]}{result.stderr[-2000:]}"
        )
    shutil.rmtree(lib, ignore_errors=True)
    tmp.rename(lib)
    marker.touch()
    return lib


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _server_properties(data_dir: Path, port: int, controller_port: int) -> dict[str, str]:
    return {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.bootstrap.servers": f"127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        "log.dirs": str(data_dir / "log"),
        "num.partitions": "6",
        "offsets.topic.replication.factor": "1",
        # Few partitions for the internal topics: a single-node broker starts and rebalances faster.
        "offsets.topic.num.partitions": "2",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        # Members that start together join one generation: kafka-python 3.0.12 was seen to lose a JoinGroup
        # sent while the first generation formed, leaving that member idle (Kafka's own default is 3000).
        "group.initial.rebalance.delay.ms": "1000",
        "group.min.session.timeout.ms": "1000",
        # The cleaner wants a 128 MiB buffer on a small heap and compacts nothing we write.
        "log.cleaner.enable": "false",
        "auto.create.topics.enable": "false",
    }


def render_properties(properties: dict[str, str]) -> str:
    """A `server.properties` file's text."""
    return "".join(f"{k}={v}\n" for k, v in properties.items())


def new_cluster_id() -> str:
    """A KRaft cluster id (Kafka's own ids never start with "-": the format tool would read one as an option)."""
    return "k" + base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")[1:]


@dataclass
class LocalBroker:
    """One KRaft broker+controller process on 127.0.0.1, with its data in `data_dir`.

    Alone by default (a single-node cluster); `LocalCluster` makes several of them one cluster by giving each
    its `properties`, the shared `cluster_id`, its `format_args` and the `admin_config` its readiness check
    connects with.
    """

    data_dir: Path
    port: int = 9092
    controller_port: int = 9093
    heap: str = "512m"
    cache_dir: Path = DEFAULT_CACHE
    log_file: Path | None = None
    properties: dict[str, str] | None = None
    cluster_id: str | None = None
    format_args: tuple[str, ...] = ("--standalone",)
    admin_config: dict[str, Any] = field(default_factory=dict)
    _process: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)
    _started_at: float = field(default=0.0, init=False, repr=False)

    @property
    def bootstrap_servers(self) -> str:
        """The host:port clients connect to."""
        return f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 60.0, *, wait: bool = True) -> LocalBroker:
        """Format the store if new, start the broker, and return once it answers requests (at once when
        `wait` is false: the nodes of a cluster serve only once a majority of them runs)."""
        java = _require("java", "openjdk-17-jre-headless")
        lib = ensure_jars(self.cache_dir)
        for port in (self.port, self.controller_port):
            if _port_open(port):
                raise BrokerUnavailableError(
                    f"port {port} on 127.0.0.1 is already in use: another broker (or program) holds it; "
                    "stop it, or set KAFKA_BOOTSTRAP_SERVERS to use it"
                )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        props = self.data_dir / "server.properties"
        properties = self.properties or _server_properties(self.data_dir, self.port, self.controller_port)
        props.write_text(render_properties(properties))
        classpath = f"{lib}/*"
        if not (self.data_dir / "log" / "meta.properties").exists():
            self._format(java, classpath, props)
        log4j = resources.files("kafka_local") / "log4j2.yaml"
        command = [
            java,
            f"-Xmx{self.heap}",
            f"-Xms{self.heap}",
            "-server",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-XX:+ExplicitGCInvokesConcurrent",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={log4j}",
            f"-Dkafka.logs.dir={self.data_dir / 'logs'}",
            "-cp",
            classpath,
            "kafka.Kafka",
            str(props),
        ]
        self._log = self.log_path.open("ab")
        self._started_at = time.monotonic()
        # A new session: Ctrl-C in a terminal reaches our supervisor, which stops the broker last, in order.
        self._process = subprocess.Popen(
            command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )
        if wait:
            self.wait_until_serving(timeout_s)
        return self

    @property
    def log_path(self) -> Path:
        """Where the broker's output goes."""
        return self.log_file or self.data_dir / "broker.log"

    def wait_until_serving(self, timeout_s: float = 60.0) -> None:
        """Return once the broker answers a metadata request; `BrokerUnavailableError` if it exits or times out."""
        self._wait_until_serving(timeout_s, self.log_path)
        logger.info(
            "Kafka %s broker serving at %s after %.1f s (data %s, log %s)",
            KAFKA_VERSION,
            self.bootstrap_servers,
            time.monotonic() - self._started_at,
            self.data_dir,
            self.log_path,
        )

    def _format(self, java: str, classpath: str, props: Path) -> None:
        cluster_id = self.cluster_id or new_cluster_id()
        result = subprocess.run(
            format_command(java, classpath, props, cluster_id, self.format_args),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise BrokerUnavailableError(
                f"formatting the KRaft store failed:\n{result.stdout}{result.stderr}"
            )

    def _wait_until_serving(self, timeout_s: float, log_path: Path) -> None:
        from kafka import KafkaAdminClient
        from kafka.errors import KafkaError

        deadline = time.monotonic() + timeout_s
        assert self._process is not None
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise BrokerUnavailableError(
                    f"the Kafka broker exited with {self._process.returncode}:\n{tail}"
                )
            if _port_open(self.port):
                try:
                    # A metadata round trip, not just an open port: the broker answers only once it is ready.
                    admin = KafkaAdminClient(
                        bootstrap_servers=self.bootstrap_servers, request_timeout_ms=5000, **self.admin_config
                    )
                    admin.list_topics()
                    admin.close()
                    return
                except KafkaError:
                    pass
            time.sleep(0.2)
        self.stop()
        raise BrokerUnavailableError(
            f"the Kafka broker did not serve within {timeout_s:.0f} s; see {log_path}"
        )

    def signal_stop(self) -> None:
        """Ask the broker to stop (SIGTERM) without waiting: the nodes of a cluster stop together, or the last
        ones wait for a quorum that is gone."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the broker with SIGTERM (a controlled shutdown), SIGKILL if it does not exit in time."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                logger.warning("the Kafka broker did not stop within %.0f s; killing it", timeout_s)
                process.kill()
                process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def kill(self) -> None:
        """Kill the broker at once (SIGKILL), as a crash would; `start()` brings it back on the same data."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self.stop()

    def __enter__(self) -> LocalBroker:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0
