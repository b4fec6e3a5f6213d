"""The whole system as real processes: the sink, N inference consumers and the API, around one broker.

`make run` uses it, and so do the end-to-end tests, the fault tests and the benchmark, so that what they
exercise is exactly what a user runs.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from kafka import KafkaAdminClient

from kafka_local import free_port
from launcher.processes import Service
from pipeline_core.acls import grant_service_acls
from pipeline_core.clients import create_admin, wait_for_admin
from pipeline_core.errors import PipelineError
from pipeline_core.settings import PipelineSettings
from pipeline_core.topics import ensure_topics, pipeline_topics

logger = logging.getLogger(__name__)


def isolated_env(name: str) -> dict[str, str]:
    """Settings that give a system its own topics and consumer groups, so that several share one broker."""
    return {
        "TOPIC_IMAGES": f"{name}-images",
        "TOPIC_PREDICTIONS": f"{name}-predictions",
        "TOPIC_DEAD_LETTER": f"{name}-dead-letter",
        "TOPIC_FEEDBACK": f"{name}-feedback",
        "TOPIC_PREDICTIONS_SHADOW": f"{name}-predictions.shadow",
        "TOPIC_DEAD_LETTER_SHADOW": f"{name}-dead-letter.shadow",
        "CONSUMER_GROUP_INFERENCE": f"{name}-inference",
        "CONSUMER_GROUP_SHADOW": f"{name}-inference-shadow",
        "CONSUMER_GROUP_SINK": f"{name}-sink",
    }


class ServiceDiedError(PipelineError):
    """A service of the system exited while it should be running."""


# The services that are members of the primary's consumer group: its own consumers and the canary's.
PRIMARY_GROUP_MEMBERS = ("inference-", "canary-")


@dataclass
class System:
    """The services of one running system; start with `start()`, stop with `stop()` (API first, sink last)."""

    bootstrap_servers: str
    data_dir: Path
    api_port: int = 8000
    sink_port: int = 8001
    consumers: int = 2
    env: Mapping[str, str] = field(default_factory=dict)
    out: IO[str] = field(default=sys.stdout)
    # Per role (`api`, `inference`, `sink`): what only that service gets, e.g. its own Kafka credentials.
    role_env: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # On a cluster with an authorizer: grant each service its ACLs (pipeline_core.acls) after the topics.
    grant_acls: bool = False
    stop_timeout_s: float = 20.0
    # The candidate model (docs/model.md, rollout). Its `shadow_consumers` run it as INFERENCE_ROLE=shadow, in a
    # group of their own; its `canary_consumers` run it as members of the primary's group, so that it answers
    # the clients of the partitions they hold.
    shadow_model: str | None = None
    shadow_consumers: int = 1
    canary_consumers: int = 0
    # After `promote()`: the model the primary's consumers run instead of the environment's MODEL_NAME.
    primary_model: str | None = None
    services: dict[str, Service] = field(default_factory=dict, init=False)
    consumer_metrics_ports: dict[str, int] = field(default_factory=dict, init=False)
    _env: dict[str, str] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.canary_consumers and not self.shadow_model:
            raise PipelineError("a canary runs the candidate model: name it with SHADOW_MODEL_NAME")
        self._env = self._build_env()

    @property
    def api_url(self) -> str:
        """Base URL of the upload API."""
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def sink_url(self) -> str:
        """Base URL of the results sink."""
        return f"http://127.0.0.1:{self.sink_port}"

    @property
    def metrics_urls(self) -> dict[str, str]:
        """Each service's Prometheus endpoint by name: `api`, `sink` and every consumer started so far."""
        urls = {"api": f"{self.api_url}/metrics", "sink": f"{self.sink_url}/metrics"}
        for name, port in self.consumer_metrics_ports.items():
            urls[name] = f"http://127.0.0.1:{port}/metrics"
        return urls

    def service_env(self) -> dict[str, str]:
        """The environment every service gets: the parent's, the overrides, and the system's wiring."""
        return dict(self._env)

    def _build_env(self) -> dict[str, str]:
        env = dict(os.environ) | dict(self.env)
        env.setdefault("JOB_ID_SECRET", secrets.token_urlsafe(32))  # the API and the sink must share it
        # The consumers share the cores: more model threads than cores only adds contention (measured in
        # docs/benchmarks/pipeline.md), so by default the cores are divided among the consumers.
        primaries = self.consumers + self.canary_consumers
        env.setdefault("MODEL_THREADS", str(max(1, (os.cpu_count() or 1) // max(1, primaries))))
        env.setdefault("RESULTS_STORE_URL", f"sqlite:///{self.data_dir.resolve()}/results.db")
        env.setdefault("RESULTS_PUBLIC_URL", f"http://localhost:{self.sink_port}")
        env.setdefault("RESULTS_INTERNAL_URL", self.sink_url)
        env.setdefault("CORS_ORIGINS", f"http://localhost:{self.api_port},http://127.0.0.1:{self.api_port}")
        return env | {
            "KAFKA_BOOTSTRAP_SERVERS": self.bootstrap_servers,
            "PYTHONUNBUFFERED": "1",
            "API_PORT": str(self.api_port),
            "SINK_PORT": str(self.sink_port),
        }

    def start(self, ready_timeout_s: float = 120) -> None:
        """Create the topics, start every service, and return once the API and the sink answer `/readyz`."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.create_topics()
        self.start_service("sink")
        for n in range(1, self.consumers + 1):
            self.start_service(f"inference-{n}")
        if self.shadow_model:
            for n in range(1, self.canary_consumers + 1):
                self.start_service(f"canary-{n}")
            for n in range(1, self.shadow_consumers + 1):
                self.start_service(f"shadow-{n}")
        self.start_service("api")
        self.wait_ready(ready_timeout_s)

    def settings(self) -> PipelineSettings:
        """The pipeline settings the services read from this system's environment."""
        names = PipelineSettings.model_fields
        # model_validate reads only these values: neither this process's environment nor a .env file.
        return PipelineSettings.model_validate(
            {k.lower(): v for k, v in self._env.items() if k.lower() in names}
        )

    def create_topics(self) -> None:
        """Create the topics once, before the services start, so that they do not race to create them
        (a consumer that joins before its topic's metadata exists is assigned nothing at first)."""
        admin = wait_for_admin(self.settings(), "launcher")
        try:
            ensure_topics(admin, pipeline_topics(self.settings()))
        finally:
            admin.close()
        if self.grant_acls:
            acl_admin = create_admin(self.settings(), "launcher")  # kafka-python's, which speaks ACLs
            try:
                count = grant_service_acls(acl_admin, self.settings())
                logger.info("granted the services their %d ACLs (pipeline_core/acls.py)", count)
            finally:
                acl_admin.close()

    def start_service(self, name: str) -> Service:
        """(Re)start one service by name: `api`, `sink`, `inference-N`, `canary-N` or `shadow-N`."""
        module = {"api": "producer_api", "sink": "results_sink"}.get(name, "inference_consumer")
        if name in ("api", "sink"):
            colour = {"api": 5, "sink": 0}[name]
        else:
            kind, _, n = name.rpartition("-")
            colour = {"shadow": 6, "canary": 4}.get(kind, int(n))
        env = self._env
        if module == "inference_consumer":
            # Each consumer serves /metrics on its own port, kept across restarts so a scraper keeps finding it.
            port = self.consumer_metrics_ports.setdefault(name, free_port())
            # A stable instance id makes a stable transactional id: the restarted consumer fences the one it
            # replaces, and aborts the transaction that one left open at once instead of after its timeout.
            env = env | {"METRICS_PORT": str(port), "CONSUMER_INSTANCE_ID": name}
            if name.startswith("shadow-") and self.shadow_model:
                env = env | {"INFERENCE_ROLE": "shadow", "MODEL_NAME": self.shadow_model}
            elif name.startswith("canary-") and (self.shadow_model or self.primary_model):
                # Before a promotion the candidate is the shadow's model, after it the primary's.
                env = env | {"MODEL_NAME": str(self.shadow_model or self.primary_model)}
            elif self.primary_model:
                env = env | {"MODEL_NAME": self.primary_model}
        role = {"producer_api": "api", "results_sink": "sink"}.get(module, "inference")
        env = env | dict(self.role_env.get(role, {}))
        service = Service(name, [sys.executable, "-m", module], env, colour=colour)
        service.start(self.out)
        self.services[name] = service
        return service

    def wait_ready(self, timeout_s: float = 120) -> None:
        """Block until the sink and the API are ready and every consumer holds partitions of a stable group."""
        deadline = time.monotonic() + timeout_s
        for url in (f"{self.sink_url}/readyz", f"{self.api_url}/readyz"):
            while not _answers_200(url):
                self._wait_a_little(deadline, f"{url} not ready within {timeout_s:.0f} s")
        self._wait_for_consumers(deadline, timeout_s)

    def _wait_for_consumers(self, deadline: float, timeout_s: float) -> None:
        """Until every running member of the primary's group (its consumers and the canary's) holds partitions of
        a stable group."""
        consumers = sum(
            1 for name, s in self.services.items() if name.startswith(PRIMARY_GROUP_MEMBERS) and s.running
        )
        if consumers:
            admin = create_admin(self.settings(), "launcher")  # the broker answered the sink and the API
            try:
                while (
                    _group_members_with_partitions(admin, self.settings().consumer_group_inference)
                    < consumers
                ):
                    self._wait_a_little(
                        deadline, f"the {consumers} consumers did not join within {timeout_s:.0f} s"
                    )
            finally:
                admin.close()

    def promote(self, timeout_s: float = 300) -> dict[int, int]:
        """Make the shadow model the primary, with no image lost or answered twice and the API serving all along.

        Each primary consumer in turn drains (finishes its batch, commits it with its offsets, leaves the group)
        and is replaced by one that runs the shadow's model in the primary's group, which continues from the
        offsets the old one committed; the next waits until the group is stable again, so that with two or more
        consumers some member always holds each partition. The canary's consumers already run the candidate and
        stay. Then the shadow's consumers drain and stop. Returns
        the primary group's committed offsets per images partition once the last old consumer had stopped.
        """
        candidate = self.shadow_model
        if not candidate:
            raise PipelineError("no shadow model runs: start one with SHADOW_MODEL_NAME to promote it")
        deadline = time.monotonic() + timeout_s
        settings = self.settings()
        self.primary_model = candidate
        offsets: dict[int, int] = {}
        for name in sorted(n for n in self.services if n.startswith("inference-")):
            old = self.services[name]
            old.terminate()
            code = old.wait(self.stop_timeout_s)
            offsets = self._committed(settings.consumer_group_inference, settings.topic_images)
            logger.info(
                "promotion: %s stopped (exit %s) with the group's committed offsets at %s; starting it with %s",
                name,
                code,
                offsets,
                candidate,
            )
            self.start_service(name)
            self._wait_for_consumers(deadline, timeout_s)
        for name in sorted(n for n in self.services if n.startswith("shadow-")):
            self.services[name].terminate()
            self.services.pop(name).wait(self.stop_timeout_s)
        self.shadow_model = None
        logger.info("promotion: %s is the primary model; the shadow consumers have stopped", candidate)
        return offsets

    def _committed(self, group_id: str, topic: str) -> dict[int, int]:
        admin = wait_for_admin(self.settings(), "launcher")
        try:
            return {
                p: committed for p, (committed, _end) in sorted(admin.group_offsets(group_id, topic).items())
            }
        finally:
            admin.close()

    def _wait_a_little(self, deadline: float, message: str) -> None:
        self.check_alive()
        if time.monotonic() > deadline:
            raise ServiceDiedError(message)
        time.sleep(0.2)

    def check_alive(self) -> None:
        """Raise `ServiceDiedError` naming the first service that has exited."""
        for service in self.services.values():
            if not service.running:
                code = service.process.returncode if service.process else None
                raise ServiceDiedError(f"{service.name} exited with {code}")

    def stop(self) -> dict[str, int | None]:
        """Stop in order: the API (no new uploads), then the consumers, then the sink. Returns exit codes."""
        codes: dict[str, int | None] = {}
        api = [s for n, s in self.services.items() if n == "api"]
        consumers = [s for n, s in self.services.items() if n.startswith((*PRIMARY_GROUP_MEMBERS, "shadow-"))]
        sink = [s for n, s in self.services.items() if n == "sink"]
        for group in (api, consumers, sink):
            for service in group:
                service.terminate()
            for service in group:
                codes[service.name] = service.wait(self.stop_timeout_s)
        return codes


def _group_members_with_partitions(admin: KafkaAdminClient, group_id: str) -> int:
    """Members of a stable consumer group that hold at least one partition (0 while it rebalances)."""
    group = admin.describe_groups([group_id]).get(group_id, {})
    if group.get("group_state") != "Stable":
        return 0
    return sum(
        1
        for member in group.get("members", [])
        if any(
            t["partitions"] for t in (member.get("member_assignment") or {}).get("assigned_partitions", [])
        )
    )


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:  # noqa: S310 - our own localhost URL
            return bool(response.status == 200)
    except OSError:
        return False
